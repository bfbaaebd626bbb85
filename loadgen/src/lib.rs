//! floe-loadgen: the load generator operators use to prove a floe deployment.
//!
//! `prepare` stores a data set whose bytes are a keyed blake3 stream ([`content`]) and writes
//! a [`manifest`]; `run` drives one or more targets with a workload ([`spec`]) from one tokio
//! executor per thread ([`run`]), over lean kept-alive connections ([`http`]), checking what
//! it reads against the manifest, and reports throughput and HdrHistogram latencies
//! ([`report`], [`plot`]). See docs/loadgen.md.

pub mod cli;
pub mod content;
pub mod http;
pub mod manifest;
pub mod plot;
pub mod prepare;
pub mod report;
pub mod run;
pub mod s3;
pub mod spec;
pub mod target;
