//! Envoy's dynamic-module ABI (`source/extensions/dynamic_modules/abi/abi.h`, ABI `v0.2.0` of Envoy
//! 1.40): the callbacks this module calls, the hooks it exports, and safe handles over both. The
//! only module of the crate with `unsafe`; [`super::filter`] sees only the safe handles.
//!
//! Every callback declared here is exported by the Envoy 1.40.0 binary: the end-to-end suite
//! checks each symbol the built `.so` leaves undefined against `nm -D --defined-only` of the
//! Envoy it runs (`tests/e2e/test_native_module.py`). C enums are
//! `u32` constants, never Rust enums: a value Envoy adds later must not be undefined behaviour.
//! Buffers Envoy hands over are valid only during the hook that received them: the handles copy
//! what they return.
//!
//! No panic crosses the boundary: the crate builds with `panic = "abort"` in release, the lints
//! deny `unwrap`/`expect`/`panic!`/indexing, and every hook only converts pointers and calls safe
//! code.

#![allow(non_camel_case_types)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

use super::filter::{self, Config, Filter};

/// What `envoy_dynamic_module_on_program_init` returns: the ABI version this module was built for.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

type ConfigEnvoyPtr = *mut c_void;
type FilterEnvoyPtr = *mut c_void;
type SchedulerPtr = *mut c_void;

/// Bytes the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// `ptr == NULL`: `set_header` removes the header.
    fn null() -> Self {
        ModuleBuffer {
            ptr: core::ptr::null(),
            length: 0,
        }
    }
}

/// Bytes Envoy owns, valid until the current hook returns (or the object they belong to changes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

impl EnvoyBuffer {
    fn empty() -> Self {
        EnvoyBuffer {
            ptr: core::ptr::null(),
            length: 0,
        }
    }

    /// A copy of the bytes.
    ///
    /// # Safety
    /// `ptr`/`length` must describe memory Envoy keeps valid for the duration of this call.
    unsafe fn to_vec(self) -> Vec<u8> {
        if self.ptr.is_null() || self.length == 0 {
            return Vec::new();
        }
        // SAFETY: the caller guarantees the buffer is valid; Envoy's buffers are initialized
        // bytes of `length`.
        unsafe { core::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) }.to_vec()
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;

const LOG_TRACE: u32 = 0;
const LOG_DEBUG: u32 = 1;
const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;

const METADATA_DYNAMIC: u32 = 0;
const METADATA_ROUTE: u32 = 1;
const METADATA_CLUSTER: u32 = 2;

const ATTRIBUTE_XDS_CLUSTER_NAME: u32 = 57;

const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
const HEADERS_STOP_ALL_AND_BUFFER: u32 = 3;
const BODY_CONTINUE: u32 = 0;
const BODY_STOP_AND_BUFFER: u32 = 1;
const TRAILERS_CONTINUE: u32 = 0;

const BODY_RECEIVED_REQUEST: u32 = 0;
const BODY_BUFFERED_REQUEST: u32 = 1;

const CALLOUT_INIT_SUCCESS: u32 = 0;
const CALLOUT_INIT_CLUSTER_NOT_FOUND: u32 = 2;
const CALLOUT_SUCCESS: u32 = 0;
const CALLOUT_EXCEEDED_BUFFER: u32 = 2;

const METRICS_SUCCESS: u32 = 0;

const LIFE_SPAN_REQUEST: u32 = 1;
const STREAM_SHARING_NONE: u32 = 0;

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status: u32,
        headers: *mut ModuleHeader,
        headers_length: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_get_metadata_string(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_metadata_number(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        key: ModuleBuffer,
        result: *mut f64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_metadata_keys_count(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_metadata_keys(
        filter: FilterEnvoyPtr,
        source: u32,
        namespace: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// In 1.40 but not in the stored abi.h versions; the signature is read from the binary's
    /// code and pinned by `test_reentry.py` (the record must survive an internal redirect):
    /// (filter, key, value, life span, stream sharing) → stored.
    fn envoy_dynamic_module_callback_http_set_filter_state_value(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
        life_span: u32,
        stream_sharing: u32,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);

    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_length: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter: FilterEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);
}

// ---- Safe handles -------------------------------------------------------------------------------

/// Log levels, as Envoy's `dynamic_modules` logger has them.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn abi(self) -> u32 {
        match self {
            Level::Trace => LOG_TRACE,
            Level::Debug => LOG_DEBUG,
            Level::Info => LOG_INFO,
            Level::Warn => LOG_WARN,
            Level::Error => LOG_ERROR,
        }
    }
}

/// Whether Envoy's `dynamic_modules` logger prints `level` now.
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: takes a plain integer; callable from any thread.
    unsafe { envoy_dynamic_module_callback_log_enabled(level.abi()) }
}

/// Writes one line to Envoy's `dynamic_modules` logger.
pub fn log(level: Level, message: &str) {
    // SAFETY: the buffer points into `message`, alive for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level.abi(), ModuleBuffer::of(message.as_bytes())) }
}

/// Where a metadata read looks.
#[derive(Debug, Clone, Copy)]
pub enum MetadataSource {
    /// The request's dynamic metadata.
    Dynamic,
    Route,
    Cluster,
}

impl MetadataSource {
    fn abi(self) -> u32 {
        match self {
            MetadataSource::Dynamic => METADATA_DYNAMIC,
            MetadataSource::Route => METADATA_ROUTE,
            MetadataSource::Cluster => METADATA_CLUSTER,
        }
    }
}

/// A metadata value by namespace and top-level key (the ABI reads no deeper).
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    String(Vec<u8>),
    Number(f64),
    /// Present, but neither (a bool, a list or a Struct).
    Other,
}

/// How a callout ended, as the filter sees it.
#[derive(Debug)]
pub enum CalloutResult {
    /// An answer (Envoy also answers connect failures and timeouts itself, with 503/504).
    Answer { status: Option<u16>, body: Vec<u8> },
    /// The call was reset.
    Reset,
    /// The answer was larger than Envoy's async-client buffer limit.
    TooLarge,
}

/// Why a callout could not start.
#[derive(Debug)]
pub enum CalloutRefused {
    ClusterNotFound,
    Other(u32),
}

/// Envoy's side of one filter configuration, for the calls made while it is created.
pub struct ConfigHandle {
    ptr: ConfigEnvoyPtr,
}

impl ConfigHandle {
    /// Defines a counter (configuration time only); `None` when Envoy refuses.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: `ptr` is the config pointer Envoy passed to config_new, which runs now; the
        // name buffer lives for the call; no labels.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.ptr,
                ModuleBuffer::of(name.as_bytes()),
                core::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// The pointer, to increment counters outside a stream later.
    pub fn counters(&self) -> CounterSink {
        CounterSink { ptr: self.ptr }
    }
}

/// Increments counters of a configuration outside any stream (a config rejection).
#[derive(Clone, Copy)]
pub struct CounterSink {
    ptr: ConfigEnvoyPtr,
}

impl CounterSink {
    pub fn increment(&self, id: usize) {
        // SAFETY: the config pointer is valid while Envoy holds the filter config, which is
        // the case during config_new, the only place this runs.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.ptr,
                id,
                core::ptr::null_mut(),
                0,
                1,
            );
        }
    }
}

/// Header pairs lent to Envoy for one call (they borrow from `headers`).
fn module_headers(headers: &[(&str, &str)]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(k, v)| ModuleHeader {
            key_ptr: k.as_ptr().cast(),
            key_length: k.len(),
            value_ptr: v.as_ptr().cast(),
            value_length: v.len(),
        })
        .collect()
}

/// Envoy's side of one stream, valid for the duration of the hook it was made in.
pub struct Stream {
    ptr: FilterEnvoyPtr,
}

impl Stream {
    fn header(&self, kind: u32, name: &str, index: usize) -> (Option<Vec<u8>>, usize) {
        let mut value = EnvoyBuffer::empty();
        let mut count = 0usize;
        // SAFETY: `ptr` is the stream Envoy passed to the running hook; the key lives for the
        // call; `value` and `count` are valid out-pointers; the value is copied before return.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                kind,
                ModuleBuffer::of(name.as_bytes()),
                &mut value,
                index,
                &mut count,
            )
        };
        if !found || value.ptr.is_null() {
            return (None, count);
        }
        // SAFETY: Envoy's header value, valid until this hook returns or the map changes.
        (Some(unsafe { value.to_vec() }), count)
    }

    /// Every value of a request header, in order.
    pub fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        let (first, count) = self.header(REQUEST_HEADERS, name, 0);
        let mut values: Vec<Vec<u8>> = first.into_iter().collect();
        for index in 1..count.min(filter::MAX_HEADER_VALUES) {
            if let (Some(value), _) = self.header(REQUEST_HEADERS, name, index) {
                values.push(value);
            }
        }
        values
    }

    /// The first value of a response header.
    pub fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.header(RESPONSE_HEADERS, name, 0).0
    }

    /// Replaces every value of a request header; `None` removes it.
    pub fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        let value = value.map_or_else(ModuleBuffer::null, ModuleBuffer::of);
        // SAFETY: stream pointer of the running hook; both buffers live for the call and
        // Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                REQUEST_HEADERS,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Sends a local reply; the request goes no further.
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &str) {
        let mut list = module_headers(headers);
        // SAFETY: stream pointer of the running hook; the header list and body live for the
        // call, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                list.as_mut_ptr(),
                list.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(b"outgoing_auth"),
            );
        }
    }

    fn body_chunks(&self, kind: u32) -> Vec<u8> {
        // SAFETY: stream pointer of the running hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, kind) };
        if n == 0 {
            return Vec::new();
        }
        let mut chunks = vec![EnvoyBuffer::empty(); n];
        // SAFETY: `chunks` has room for the `n` entries Envoy writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(self.ptr, kind, chunks.as_mut_ptr())
        };
        if !ok {
            return Vec::new();
        }
        let mut out = Vec::new();
        for chunk in chunks {
            // SAFETY: body slices Envoy owns, valid until this hook returns.
            out.extend_from_slice(&unsafe { chunk.to_vec() });
        }
        out
    }

    /// The request body so far: what earlier body hooks buffered, then this hook's frame.
    pub fn request_body(&self) -> Vec<u8> {
        let mut body = self.body_chunks(BODY_BUFFERED_REQUEST);
        body.extend_from_slice(&self.body_chunks(BODY_RECEIVED_REQUEST));
        body
    }

    /// A metadata string by namespace and top-level key (one call; `None` for anything else).
    pub fn metadata_string(
        &self,
        source: MetadataSource,
        namespace: &str,
        key: &str,
    ) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::empty();
        // SAFETY: stream pointer of the running hook; buffers live for the call; `value` is a
        // valid out-pointer and is copied before return.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_metadata_string(
                self.ptr,
                source.abi(),
                ModuleBuffer::of(namespace.as_bytes()),
                ModuleBuffer::of(key.as_bytes()),
                &mut value,
            )
        };
        // SAFETY: Envoy's metadata string, valid until this hook returns.
        found.then(|| unsafe { value.to_vec() })
    }

    /// A metadata value by namespace and top-level key: a string in one call; telling a number
    /// or another value from an absent one takes more calls (only on the way to a refusal).
    pub fn metadata(
        &self,
        source: MetadataSource,
        namespace: &str,
        key: &str,
    ) -> Option<MetadataValue> {
        if let Some(value) = self.metadata_string(source, namespace, key) {
            return Some(MetadataValue::String(value));
        }
        let ns = ModuleBuffer::of(namespace.as_bytes());
        let k = ModuleBuffer::of(key.as_bytes());
        let mut number = 0f64;
        // SAFETY: as above; `number` is a valid out-pointer.
        if unsafe {
            envoy_dynamic_module_callback_http_get_metadata_number(
                self.ptr,
                source.abi(),
                ns,
                k,
                &mut number,
            )
        } {
            return Some(MetadataValue::Number(number));
        }
        let present = self
            .metadata_keys(source, namespace)
            .iter()
            .any(|name| name == key.as_bytes());
        present.then_some(MetadataValue::Other)
    }

    /// The top-level keys of a metadata namespace.
    pub fn metadata_keys(&self, source: MetadataSource, namespace: &str) -> Vec<Vec<u8>> {
        let ns = ModuleBuffer::of(namespace.as_bytes());
        // SAFETY: stream pointer of the running hook; the namespace lives for the call.
        let n = unsafe {
            envoy_dynamic_module_callback_http_get_metadata_keys_count(self.ptr, source.abi(), ns)
        };
        if n == 0 {
            return Vec::new();
        }
        let mut keys = vec![EnvoyBuffer::empty(); n.min(filter::MAX_METADATA_KEYS)];
        if keys.len() < n {
            return Vec::new(); // Envoy would write past the array.
        }
        // SAFETY: `keys` has room for the `n` entries Envoy writes.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_get_metadata_keys(
                self.ptr,
                source.abi(),
                ns,
                keys.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        // SAFETY: Envoy's key strings, valid until this hook returns.
        keys.into_iter().map(|k| unsafe { k.to_vec() }).collect()
    }

    /// A filter state value this module stored as bytes.
    pub fn filter_state(&self, key: &str) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::empty();
        // SAFETY: stream pointer of the running hook; `value` is a valid out-pointer, copied
        // before return.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_filter_state_bytes(
                self.ptr,
                ModuleBuffer::of(key.as_bytes()),
                &mut value,
            )
        };
        // SAFETY: Envoy's filter state bytes, valid until this hook returns.
        found.then(|| unsafe { value.to_vec() })
    }

    /// Stores bytes in filter state for the life of the client's request (it survives internal
    /// redirects and retry attempts), replacing an earlier value.
    pub fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        // SAFETY: stream pointer of the running hook; buffers live for the call, Envoy copies.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_value(
                self.ptr,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
                LIFE_SPAN_REQUEST,
                STREAM_SHARING_NONE,
            )
        }
    }

    /// The name of the cluster the request is routed to.
    pub fn cluster_name(&self) -> Option<Vec<u8>> {
        let mut value = EnvoyBuffer::empty();
        // SAFETY: stream pointer of the running hook; `value` is copied before return.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                ATTRIBUTE_XDS_CLUSTER_NAME,
                &mut value,
            )
        };
        // SAFETY: Envoy's attribute string, valid until this hook returns.
        found.then(|| unsafe { value.to_vec() })
    }

    /// Lets a paused request go on.
    pub fn continue_decoding(&self) {
        // SAFETY: stream pointer of the running hook (on the stream's worker).
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr) }
    }

    pub fn increment_counter(&self, id: usize) {
        // SAFETY: stream pointer of the running hook; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.ptr,
                id,
                core::ptr::null_mut(),
                0,
                1,
            );
        }
    }

    /// Starts an HTTP call to `cluster`; its answer comes to this stream's `callout_done`.
    pub fn callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, CalloutRefused> {
        let mut list = module_headers(headers);
        let mut id = 0u64;
        // SAFETY: stream pointer of the running hook; the cluster name, headers and body live
        // for the call and Envoy copies them; `id` is a valid out-pointer.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_http_callout(
                self.ptr,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                list.as_mut_ptr(),
                list.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        match result {
            CALLOUT_INIT_SUCCESS => Ok(id),
            CALLOUT_INIT_CLUSTER_NOT_FOUND => Err(CalloutRefused::ClusterNotFound),
            other => Err(CalloutRefused::Other(other)),
        }
    }

    /// A scheduler that runs `scheduled` on this stream's worker, from any thread.
    pub fn scheduler(&self) -> Option<Scheduler> {
        // SAFETY: stream pointer of the running hook, on the stream's worker.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.ptr) };
        (!ptr.is_null()).then(|| Scheduler {
            ptr: Mutex::new(Some(SchedulerPtrBox(ptr))),
        })
    }
}

struct SchedulerPtrBox(SchedulerPtr);

// SAFETY: Envoy's scheduler may be committed to from any thread (abi.h); the pointer itself is
// only used under the `Scheduler`'s mutex, and deleted once.
unsafe impl Send for SchedulerPtrBox {}

/// A stream's scheduler, shareable with other workers. Committing after the stream is gone is a
/// no-op for Envoy; after `delete` it would be a use-after-free, so both go through one mutex.
pub struct Scheduler {
    ptr: Mutex<Option<SchedulerPtrBox>>,
}

impl Scheduler {
    /// Asks Envoy to run the stream's `scheduled` hook with `event` on its own worker.
    pub fn commit(&self, event: u64) {
        if let Ok(guard) = self.ptr.lock() {
            if let Some(p) = guard.as_ref() {
                // SAFETY: not yet deleted (checked under the lock that `delete` takes).
                unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(p.0, event) }
            }
        }
    }

    /// Frees Envoy's scheduler; later commits do nothing.
    pub fn delete(&self) {
        if let Ok(mut guard) = self.ptr.lock() {
            if let Some(p) = guard.take() {
                // SAFETY: taken out of the option, so deleted exactly once.
                unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(p.0) }
            }
        }
    }
}

// ---- Exported hooks -----------------------------------------------------------------------------

/// The per-stream object Envoy holds for us.
type FilterBox = Filter;

/// # Safety
/// Envoy passes what `config_new` returned (a leaked `Arc<Config>`), or null.
unsafe fn config_ref<'a>(ptr: *const c_void) -> Option<&'a Arc<Config>> {
    // SAFETY: non-null pointers come from `Box::into_raw(Box<Arc<Config>>)` in config_new and
    // stay valid until config_destroy.
    unsafe { ptr.cast::<Arc<Config>>().as_ref() }
}

/// # Safety
/// Envoy passes what `filter_new` returned, until `filter_destroy`.
unsafe fn filter_mut<'a>(ptr: *const c_void) -> Option<&'a mut FilterBox> {
    // SAFETY: non-null pointers come from `Box::into_raw(Box<Filter>)` in filter_new; Envoy
    // calls a stream's hooks one at a time on its worker, so the borrow is exclusive.
    unsafe { ptr.cast_mut().cast::<FilterBox>().as_mut() }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION.as_ptr().cast()
}

/// # Safety
/// Called by Envoy with its config pointer and two buffers valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy's config bytes, valid for this call.
    let json = unsafe { config.to_vec() };
    let handle = ConfigHandle { ptr: config_envoy };
    match filter::new_config(&handle, &json) {
        Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
        None => core::ptr::null(),
    }
}

/// # Safety
/// Called once by Envoy with what config_new returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once.
        drop(unsafe { Box::from_raw(config.cast_mut().cast::<Arc<Config>>()) });
    }
}

/// # Safety
/// Called by Envoy on the stream's worker with our config and its stream pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *const c_void {
    // SAFETY: our config pointer (see config_ref).
    let Some(config) = (unsafe { config_ref(config) }) else {
        return core::ptr::null();
    };
    Box::into_raw(Box::new(Filter::new(Arc::clone(config))))
        .cast_const()
        .cast()
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: our per-stream object (see filter_mut).
    let Some(f) = (unsafe { filter_mut(filter) }) else {
        return HEADERS_STOP_ITERATION;
    };
    match f.on_request_headers(&Stream { ptr: filter_envoy }, end_of_stream) {
        filter::Headers::Continue => HEADERS_CONTINUE,
        filter::Headers::Stop => HEADERS_STOP_ITERATION,
        filter::Headers::StopAndBuffer => HEADERS_STOP_ALL_AND_BUFFER,
    }
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: our per-stream object (see filter_mut).
    let Some(f) = (unsafe { filter_mut(filter) }) else {
        return BODY_CONTINUE;
    };
    match f.on_request_body(&Stream { ptr: filter_envoy }, end_of_stream) {
        filter::Body::Continue => BODY_CONTINUE,
        filter::Body::StopAndBuffer => BODY_STOP_AND_BUFFER,
    }
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: our per-stream object (see filter_mut).
    if let Some(f) = unsafe { filter_mut(filter) } {
        f.on_response_headers(&Stream { ptr: filter_envoy });
    }
    HEADERS_CONTINUE
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    BODY_CONTINUE
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) -> u32 {
    TRAILERS_CONTINUE
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
) {
    // SAFETY: our per-stream object (see filter_mut).
    if let Some(f) = unsafe { filter_mut(filter) } {
        f.on_complete();
    }
}

/// # Safety
/// Called once by Envoy with what filter_new returned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    if !filter.is_null() {
        // SAFETY: made by Box::into_raw in filter_new; Envoy destroys it once.
        let f = unsafe { Box::from_raw(filter.cast_mut().cast::<FilterBox>()) };
        f.on_complete();
    }
}

/// # Safety
/// Envoy's stream, our per-stream object, and header/body arrays valid for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *mut EnvoyHeader,
    headers_length: usize,
    body: *mut EnvoyBuffer,
    body_length: usize,
) {
    // SAFETY: our per-stream object (see filter_mut).
    let Some(f) = (unsafe { filter_mut(filter) }) else {
        return;
    };
    let outcome = match result {
        CALLOUT_SUCCESS => {
            // SAFETY: Envoy's arrays of `headers_length` headers and `body_length` chunks,
            // valid for this call (null when empty).
            let (status, body) = unsafe { read_answer(headers, headers_length, body, body_length) };
            CalloutResult::Answer { status, body }
        }
        CALLOUT_EXCEEDED_BUFFER => CalloutResult::TooLarge,
        _ => CalloutResult::Reset,
    };
    f.on_callout_done(&Stream { ptr: filter_envoy }, callout_id, outcome);
}

/// The `:status` and the body of a callout's answer, copied.
///
/// # Safety
/// The arrays must hold `headers_length` headers and `body_length` chunks (or be null).
unsafe fn read_answer(
    headers: *mut EnvoyHeader,
    headers_length: usize,
    body: *mut EnvoyBuffer,
    body_length: usize,
) -> (Option<u16>, Vec<u8>) {
    let headers: &[EnvoyHeader] = if headers.is_null() {
        &[]
    } else {
        // SAFETY: per the function's contract.
        unsafe { core::slice::from_raw_parts(headers, headers_length) }
    };
    let status = headers.iter().find_map(|h| {
        let key = EnvoyBuffer {
            ptr: h.key_ptr,
            length: h.key_length,
        };
        // SAFETY: Envoy's header strings, valid for this call.
        if unsafe { key.to_vec() } != b":status" {
            return None;
        }
        let value = EnvoyBuffer {
            ptr: h.value_ptr,
            length: h.value_length,
        };
        // SAFETY: as above.
        let value = unsafe { value.to_vec() };
        std::str::from_utf8(&value).ok()?.parse().ok()
    });
    let chunks: &[EnvoyBuffer] = if body.is_null() {
        &[]
    } else {
        // SAFETY: per the function's contract.
        unsafe { core::slice::from_raw_parts(body, body_length) }
    };
    let mut out = Vec::new();
    for chunk in chunks {
        if out.len() > filter::MAX_CALLOUT_BODY {
            break; // parse_response refuses it as too large anyway.
        }
        // SAFETY: Envoy's body slices, valid for this call.
        out.extend_from_slice(&unsafe { chunk.to_vec() });
    }
    (status, out)
}

/// # Safety
/// Envoy's stream and our per-stream object, for this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    event: u64,
) {
    // SAFETY: our per-stream object (see filter_mut).
    if let Some(f) = unsafe { filter_mut(filter) } {
        f.on_scheduled(&Stream { ptr: filter_envoy }, event);
    }
}

// Hooks Envoy requires but this filter has no use for.

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _headers: *mut EnvoyHeader,
    _headers_length: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_length: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _trailers: *mut EnvoyHeader,
    _trailers_length: usize,
) {
}

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
) {
}

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}

/// # Safety
/// Unused; Envoy requires the symbol.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &'static str, value: &'static str) -> EnvoyHeader {
        EnvoyHeader {
            key_ptr: key.as_ptr().cast(),
            key_length: key.len(),
            value_ptr: value.as_ptr().cast(),
            value_length: value.len(),
        }
    }

    fn chunk(bytes: &'static [u8]) -> EnvoyBuffer {
        EnvoyBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    #[test]
    fn a_callout_answer_yields_its_status_and_the_chunks_in_order() {
        let mut headers = [
            header("content-type", "application/json"),
            header(":status", "200"),
        ];
        let mut body = [chunk(b"{\"access_"), chunk(b""), chunk(b"token\":1}")];
        // SAFETY: arrays of the stated lengths, alive for the call.
        let (status, bytes) = unsafe {
            read_answer(
                headers.as_mut_ptr(),
                headers.len(),
                body.as_mut_ptr(),
                body.len(),
            )
        };
        assert_eq!(status, Some(200));
        assert_eq!(bytes, b"{\"access_token\":1}");
    }

    #[test]
    fn an_answer_without_headers_or_body_has_no_status_and_no_bytes() {
        // SAFETY: null arrays are allowed and read as empty.
        let (status, bytes) =
            unsafe { read_answer(core::ptr::null_mut(), 3, core::ptr::null_mut(), 2) };
        assert_eq!(status, None);
        assert!(bytes.is_empty());
        let mut headers = [header(":status", "2OO"), header(":status", "99999")];
        // SAFETY: as above.
        let (status, _) = unsafe {
            read_answer(
                headers.as_mut_ptr(),
                headers.len(),
                core::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, None, "a status that is no u16 number is none");
    }

    #[test]
    fn an_oversized_answer_is_cut_short_of_being_copied_whole() {
        static BIG: [u8; 40_000] = [b'x'; 40_000];
        let mut body = [chunk(&BIG), chunk(&BIG), chunk(&BIG), chunk(&BIG)];
        // SAFETY: arrays of the stated lengths, alive for the call.
        let (_, bytes) =
            unsafe { read_answer(core::ptr::null_mut(), 0, body.as_mut_ptr(), body.len()) };
        assert!(
            bytes.len() > super::filter::MAX_CALLOUT_BODY,
            "still refused as too large"
        );
        assert!(bytes.len() < 4 * BIG.len(), "the rest is never copied");
    }

    #[test]
    fn buffers_lend_their_bytes_and_null_means_remove() {
        let b = ModuleBuffer::of(b"x-api-key");
        assert_eq!(b.length, 9);
        assert!(ModuleBuffer::null().ptr.is_null());
        // SAFETY: a null buffer reads as empty.
        assert!(unsafe { EnvoyBuffer::empty().to_vec() }.is_empty());
    }
}
