//! The floe storage node: thread-per-core glommio HTTP server for the node, user and operator APIs (issues 4 and 5; not built yet).
//!
//! This crate has a place in the workspace map so that the layout shows the architecture;
//! it exports nothing until its issue is done. See ARCHITECTURE.md.
