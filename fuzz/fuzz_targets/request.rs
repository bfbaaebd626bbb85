//! HTTP request heads through the node's parsing and routing. Run:
//! `cargo +nightly fuzz run request fuzz/corpus/request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| floe_server::fuzzing::request(data));
