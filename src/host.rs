//! The host calls the request path makes, bound directly to the proxy-wasm ABI.
//!
//! The SDK's wrappers `panic!` on any status they do not expect, and a panic kills the VM (every
//! later request gets 503). These return every status as an error instead, take property paths
//! already serialized at configure time, and allocate nothing of their own.

use std::ptr::{null, null_mut};

use proxy_wasm::types::{MapType, MetricType, Status};

use crate::metadata;

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
    // SAFETY: the host writes a buffer it allocated through this module's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), which we now own.
    unsafe {
        match proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) {
            Status::Ok if data.is_null() => Ok(None),
            Status::Ok => Ok(Some(Vec::from_raw_parts(data, size, size))),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }
}

/// Sets a request header, replacing every value the client sent.
pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
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
