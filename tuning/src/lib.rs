//! floe tune: measures disks and system settings and writes io-properties.toml (issue 7; not built yet).
//!
//! This crate has a place in the workspace map so that the layout shows the architecture;
//! it exports nothing until its issue is done. See ARCHITECTURE.md.
