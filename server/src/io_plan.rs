//! How hard the node pushes each data directory: from `io-properties.toml` (written by
//! `floe tune`) when there is one, else from documented safe defaults. Reported in
//! `/v1/health` under `io`.

use std::path::{Path, PathBuf};

use floe_tuning::properties::{IoProperties, FILE_NAME};
use serde::Serialize;

use crate::config::NodeConfig;

/// Largest group commit without measurements. Why 64 MiB: bounds the commit buffer; at the
/// ~1 GB/s of a modest SSD one commit holds the queue for ~64 ms at most.
pub const COMMIT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest group commit cap derived from measurements.
pub const COMMIT_BYTES_MIN: u64 = 1 << 20;
/// With measurements, one group commit may take this long at the disk's write bandwidth. Why:
/// reads queued behind a commit on the owner core wait for it; 50 ms bounds that wait.
pub const COMMIT_SECONDS: f64 = 0.05;
/// With measurements, the scrubber takes at most this share of a disk's read bandwidth
/// (over all cores). Why: cold-data checking must not compete with serving.
pub const SCRUB_SHARE: f64 = 0.05;

/// The I/O plan of one data directory.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskPlan {
    pub dir: PathBuf,
    /// `io-properties.toml` or `defaults`.
    pub source: String,
    pub read_bandwidth_bytes_per_second: Option<u64>,
    pub write_bandwidth_bytes_per_second: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    /// The device's knee for random reads, shared by the cores (each core's owner issues its
    /// storage I/O one operation at a time, well within it).
    pub depth_per_core: u32,
    /// Per core.
    pub scrub_bytes_per_second: u64,
    /// Per core.
    pub commit_bytes_max: u64,
}

/// Loads the properties the configuration names, or the default file if it exists. A file
/// that is named but missing, or that does not parse, is an error (with the fix).
pub fn load(config: &NodeConfig) -> Result<Option<(PathBuf, IoProperties)>, String> {
    let (path, required) = match &config.io_properties {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(FILE_NAME), false),
    };
    if !path.exists() {
        return if required {
            Err(format!(
                "io_properties names {}, which does not exist. Fix: run `floe tune --config \
                 node.toml --out {}`, or remove the key to use the defaults",
                path.display(),
                path.display()
            ))
        } else {
            Ok(None)
        };
    }
    IoProperties::load(&path)
        .map(|p| Some((path.clone(), p)))
        .map_err(|e| {
            format!(
                "{e}. Fix: run `floe tune` again to rewrite {}",
                path.display()
            )
        })
}

/// The plan for each data directory.
pub fn plan(config: &NodeConfig, properties: Option<&(PathBuf, IoProperties)>) -> Vec<DiskPlan> {
    let cores = config.core_count() as u64;
    config
        .data_dirs
        .iter()
        .map(|dir| {
            let measured = properties.and_then(|(path, p)| Some((path, p.for_dir(dir)?)));
            match measured {
                Some((path, disk)) => DiskPlan {
                    dir: dir.clone(),
                    source: path.display().to_string(),
                    read_bandwidth_bytes_per_second: Some(disk.read_bandwidth_bytes_per_second),
                    write_bandwidth_bytes_per_second: Some(disk.write_bandwidth_bytes_per_second),
                    read_iops: Some(disk.read_iops),
                    write_iops: Some(disk.write_iops),
                    depth_per_core: (disk.read_depth / cores as u32).max(1),
                    scrub_bytes_per_second: config.scrub_bytes_per_second.min(
                        (disk.read_bandwidth_bytes_per_second as f64 * SCRUB_SHARE / cores as f64)
                            as u64,
                    ),
                    commit_bytes_max: ((disk.write_bandwidth_bytes_per_second as f64
                        * COMMIT_SECONDS) as u64)
                        .clamp(COMMIT_BYTES_MIN, COMMIT_BYTES_DEFAULT),
                },
                None => defaults(config, dir),
            }
        })
        .collect()
}

fn defaults(config: &NodeConfig, dir: &Path) -> DiskPlan {
    DiskPlan {
        dir: dir.to_path_buf(),
        source: "defaults".into(),
        read_bandwidth_bytes_per_second: None,
        write_bandwidth_bytes_per_second: None,
        read_iops: None,
        write_iops: None,
        depth_per_core: 1,
        scrub_bytes_per_second: config.scrub_bytes_per_second,
        commit_bytes_max: COMMIT_BYTES_DEFAULT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_tuning::properties::DiskProperties;

    #[test]
    fn measurements_size_scrubbing_and_commits() {
        let config = NodeConfig {
            data_dirs: vec!["/a".into(), "/b".into()],
            cores: 4,
            ..NodeConfig::default()
        };
        let properties = IoProperties {
            disks: vec![DiskProperties {
                dir: "/a".into(),
                read_bandwidth_bytes_per_second: 2_000_000_000,
                write_bandwidth_bytes_per_second: 200_000_000,
                read_iops: 400_000,
                write_iops: 100_000,
                block_bytes: 4096,
                read_depth: 64,
                write_depth: 16,
            }],
        };
        let plans = plan(&config, Some(&("io.toml".into(), properties)));
        assert_eq!(plans[0].source, "io.toml");
        assert_eq!(plans[0].depth_per_core, 16);
        // 5% of 2 GB/s over 4 cores is 25 MB/s, under the configured 32 MiB/s.
        assert_eq!(plans[0].scrub_bytes_per_second, 25_000_000);
        // 50 ms at 200 MB/s.
        assert_eq!(plans[0].commit_bytes_max, 10_000_000);
        assert_eq!(plans[1], defaults(&config, Path::new("/b")));
        assert_eq!(plans[1].commit_bytes_max, COMMIT_BYTES_DEFAULT);
    }
}
