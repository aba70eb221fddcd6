//! libFuzzer entry for the `webhook_verifier` check (see `zoomwire_fuzz::webhook_verifier`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zoomwire_fuzz::webhook_verifier(data));
