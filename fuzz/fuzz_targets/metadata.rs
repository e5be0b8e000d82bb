#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_mcp_auth::fuzzing::metadata(data));
