//! BCS bodies (metadata, slivers, recovery symbols) through the node's decoders. Run:
//! `cargo +nightly fuzz run bcs fuzz/corpus/bcs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_server::fuzzing::bcs(data));
