//! libFuzzer entry for the `frame_decoder` check (see `zoomwire_fuzz::frame_decoder`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zoomwire_fuzz::frame_decoder(data));
