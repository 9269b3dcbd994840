#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outgoing_auth_fuzz::typed_metadata(data));
