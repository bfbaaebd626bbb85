//! Sliver and metadata store on NVMe: glommio DmaFile direct I/O, mapped sealed files, blake3 checksums (issue 3; not built yet).
//!
//! This crate has a place in the workspace map so that the layout shows the architecture;
//! it exports nothing until its issue is done. See ARCHITECTURE.md.
