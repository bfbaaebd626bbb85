//! floe-loadgen: open- and closed-loop load generator with HdrHistogram latencies (issue 6; not built yet).
//!
//! This crate has a place in the workspace map so that the layout shows the architecture;
//! it exports nothing until its issue is done. See ARCHITECTURE.md.
