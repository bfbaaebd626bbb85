//! See `floe_server::fuzzing::records`. Run: `cargo +nightly fuzz run records fuzz/corpus/records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_server::fuzzing::records(data));
