//! `io-properties.toml`: what `floe tune` measured per data directory, and what `floe node`
//! reads to size its I/O.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default file name, in the node's working directory.
pub const FILE_NAME: &str = "io-properties.toml";

/// One data directory's device.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskProperties {
    pub dir: PathBuf,
    /// Sequential reads of 1 MiB, best over the depths measured.
    pub read_bandwidth_bytes_per_second: u64,
    /// Sequential writes of 1 MiB.
    pub write_bandwidth_bytes_per_second: u64,
    /// Random reads of `block_bytes`.
    pub read_iops: u64,
    /// Random writes of `block_bytes`.
    pub write_iops: u64,
    /// Block size of the random workloads: the device's minimum I/O size (at least 4 KiB).
    pub block_bytes: u64,
    /// Queue depth at the knee of random reads: past it, latency climbs for little gain.
    pub read_depth: u32,
    /// Queue depth at the knee of random writes.
    pub write_depth: u32,
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IoProperties {
    #[serde(default)]
    pub disks: Vec<DiskProperties>,
}

impl IoProperties {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        format!(
            "# Written by `floe tune`: what each data directory's device did under io_uring with\n\
             # O_DIRECT. `floe node` reads it to size its I/O. Re-run after changing disks.\n{}",
            toml::to_string(self).expect("serialisable")
        )
    }

    /// The entry for `dir`, compared after canonicalising both paths where possible.
    pub fn for_dir(&self, dir: &Path) -> Option<&DiskProperties> {
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let wanted = canonical(dir);
        self.disks.iter().find(|d| canonical(&d.dir) == wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let properties = IoProperties {
            disks: vec![DiskProperties {
                dir: "/data/1".into(),
                read_bandwidth_bytes_per_second: 3_000_000_000,
                write_bandwidth_bytes_per_second: 2_000_000_000,
                read_iops: 500_000,
                write_iops: 200_000,
                block_bytes: 4096,
                read_depth: 32,
                write_depth: 8,
            }],
        };
        let text = properties.to_toml();
        assert!(text.starts_with("# Written by `floe tune`"));
        assert_eq!(toml::from_str::<IoProperties>(&text).unwrap(), properties);
        assert!(properties.for_dir(Path::new("/data/1")).is_some());
        assert!(toml::from_str::<IoProperties>("[[disks]]\ndir = \"x\"\n").is_err());
    }
}
