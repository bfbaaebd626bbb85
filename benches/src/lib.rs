//! Benchmarks live in `benches/`; this library is empty so that Cargo has a target to build.
