//! See `floe_server::fuzzing::config`. Run: `cargo +nightly fuzz run config fuzz/corpus/config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_server::fuzzing::config(data));
