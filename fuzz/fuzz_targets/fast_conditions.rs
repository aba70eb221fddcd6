//! libFuzzer entry for the `fast_conditions` check (see `zoomwire_fuzz::fast_conditions`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zoomwire_fuzz::fast_conditions(data));
