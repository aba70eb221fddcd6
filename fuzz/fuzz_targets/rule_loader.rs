//! libFuzzer entry for the `rule_loader` check (see `zoomwire_fuzz::rule_loader`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zoomwire_fuzz::rule_loader(data));
