//! See `floe_server::fuzzing::headers`. Run: `cargo +nightly fuzz run headers fuzz/corpus/headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_server::fuzzing::headers(data));
