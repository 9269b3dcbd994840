//! The host calls the request path makes, bound directly to the proxy-wasm ABI.
//!
//! The SDK's wrappers `panic!` on any status they do not expect, and a panic kills the VM (every
//! later request gets 503). These return every status as an error instead, take property paths
//! already serialized at configure time, and allocate nothing of their own.

use std::ptr::{null, null_mut};

use proxy_wasm::types::{BufferType, MapType, MetricType, Status, StreamType};

use crate::core::metadata;

// Same signatures as the SDK's declarations of these imports.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_remove_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status;
    fn proxy_set_effective_context(context_id: u32) -> Status;
    fn proxy_continue_stream(stream_type: StreamType) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
    fn proxy_get_status(
        return_code: *mut u32,
        return_message_data: *mut *mut u8,
        return_message_size: *mut usize,
    ) -> Status;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> Status;
}

// WASI's randomness (the host's CSPRNG), as Rust's std binds it too.
#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> u16;
}

fn check(status: Status) -> Result<(), Status> {
    match status {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}

/// Reads a property by its serialized (NUL-joined) path. `Ok(None)` when it does not exist.
pub fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: see `owned`.
    unsafe {
        match proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) {
            Status::Ok => Ok(owned(data, size)),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }
}

/// Sets a request header, replacing every value the client sent.
pub fn set_request_header(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths come from live slices.
    check(unsafe {
        proxy_replace_header_map_value(
            MapType::HttpRequestHeaders,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_request_header(name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length come from a live slice.
    check(unsafe {
        proxy_remove_header_map_value(MapType::HttpRequestHeaders, name.as_ptr(), name.len())
    })
}

/// Answers the request locally; it never reaches the backend.
pub fn send_local_reply(status: u32, headers: &[(&str, &str)], body: &str) -> Result<(), Status> {
    let headers = metadata::encode_pairs(headers);
    // SAFETY: pointers and lengths come from live slices; -1 means "not gRPC".
    check(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: pointer and length come from a live slice; `id` outlives the call.
    check(unsafe { proxy_define_metric(MetricType::Counter, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment(metric_id: u32) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_increment_metric(metric_id, 1) })
}

/// Takes ownership of a buffer the host allocated through this module's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` must be null or a host-returned allocation of exactly `size` bytes.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    (!data.is_null()).then(|| Vec::from_raw_parts(data, size, size))
}

fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: see `owned`.
    unsafe {
        match proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) {
            Status::Ok => Ok(Some(owned(data, size).unwrap_or_default())),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }
}

/// A request header's raw value (the first, when the client sent several).
pub fn request_header(name: &str) -> Result<Option<Vec<u8>>, Status> {
    header_value(MapType::HttpRequestHeaders, name)
}

pub fn response_header(name: &str) -> Result<Option<Vec<u8>>, Status> {
    header_value(MapType::HttpResponseHeaders, name)
}

/// A header of the response to an HTTP call, inside `on_http_call_response` only.
pub fn call_response_header(name: &str) -> Result<Option<Vec<u8>>, Status> {
    header_value(MapType::HttpCallResponseHeaders, name)
}

/// The body of the response to an HTTP call, inside `on_http_call_response` only.
pub fn call_response_body(size: usize) -> Result<Vec<u8>, Status> {
    buffer(BufferType::HttpCallResponseBody, size)
}

/// The request body buffered so far, inside `on_http_request_body` only.
pub fn request_body(size: usize) -> Result<Vec<u8>, Status> {
    buffer(BufferType::HttpRequestBody, size)
}

fn buffer(kind: BufferType, size: usize) -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut len: usize = 0;
    // SAFETY: see `owned`.
    unsafe {
        match proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut len) {
            Status::Ok => Ok(owned(data, len).unwrap_or_default()),
            Status::NotFound => Ok(Vec::new()),
            other => Err(other),
        }
    }
}

/// A shared-data value (visible to every worker of this VM).
pub fn shared_data(key: &str) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: see `owned`.
    unsafe {
        match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            Status::Ok => Ok(owned(data, size)),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }
}

/// Writes a shared-data value unconditionally (last writer wins).
pub fn set_shared_data(key: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths come from live slices; cas 0 means "no check".
    check(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), 0) })
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> Result<u64, Status> {
    let mut nanos: u64 = 0;
    // SAFETY: `nanos` outlives the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos / 1_000_000)
}

/// Makes later host calls act on another context (e.g. to resume a request that waited).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: a plain value.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Lets a paused request go on.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: a plain value.
    check(unsafe { proxy_continue_stream(StreamType::HttpRequest) })
}

/// Sets the root context's tick period; 0 stops the ticks.
pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: a plain value.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Writes a property (in Envoy: filter state `wasm.<path>` of the current request).
pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths come from live slices.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// Every request header as the pairs encoding (duplicates kept).
pub fn request_header_pairs() -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: see `owned`.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok => Ok(owned(data, size).unwrap_or_default()),
            other => Err(other),
        }
    }
}

/// The message of the last failure the host reported (after a failed HTTP call: why it failed).
pub fn status_message() -> Result<Vec<u8>, Status> {
    let mut code: u32 = 0;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: see `owned`; `code` outlives the call.
    unsafe {
        match proxy_get_status(&mut code, &mut data, &mut size) {
            Status::Ok => Ok(owned(data, size).unwrap_or_default()),
            other => Err(other),
        }
    }
}

/// Calls a host-provided foreign function (e.g. Envoy's `declare_property`).
pub fn call_foreign_function(name: &str, args: &[u8]) -> Result<(), Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: see `owned`; the result, if any, is freed on return.
    unsafe {
        let status = proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            args.as_ptr(),
            args.len(),
            &mut data,
            &mut size,
        );
        drop(owned(data, size));
        check(status)
    }
}

/// Fills `buf` from the host's cryptographically secure random source; the WASI errno on failure.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), u16> {
    // SAFETY: the pointer and length come from a live, writable slice.
    match unsafe { random_get(buf.as_mut_ptr(), buf.len()) } {
        0 => Ok(()),
        errno => Err(errno),
    }
}
