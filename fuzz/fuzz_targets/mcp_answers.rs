#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outgoing_auth_fuzz::mcp_answers(data));
