//! libFuzzer entry for the `config_loader` check (see `zoomwire_fuzz::config_loader`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zoomwire_fuzz::config_loader(data));
