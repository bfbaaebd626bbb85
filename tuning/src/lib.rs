//! `floe tune`: measures what each data directory's device can do, checks the system settings
//! that decide whether floe reaches it, and writes `io-properties.toml` for `floe node`.
//!
//! - [`measure`]: a test file and io_uring + `O_DIRECT` workloads at a fixed depth, with
//!   HdrHistogram latencies.
//! - [`knee`]: the depth past which throughput stops growing.
//! - [`properties`]: the file the node reads.
//! - [`check`]: `floe tune --check`, the system report.
//!
//! Runs unprivileged (it needs write access to the data directories and io_uring), and never
//! changes the system: findings print the command that would.

pub mod check;
pub mod knee;
pub mod measure;
pub mod properties;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use knee::{knee, past_the_knee, Point};
use measure::{Direction, Pattern, Sample, TestFile, Workload};
use properties::DiskProperties;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Set once SIGINT or SIGTERM arrived (after [`stop_on_signals`]); measuring loops stop and the
/// test file is removed on the way out.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Turns SIGINT and SIGTERM into [`interrupted`] instead of killing the process, so that the
/// test file is cleaned up.
pub fn stop_on_signals() -> std::io::Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    std::thread::spawn(move || loop {
        if flag.load(Ordering::Relaxed) {
            INTERRUPTED.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    Ok(())
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Time per measured point.
    pub duration: Duration,
    /// Size of the test file in each directory.
    pub file_bytes: u64,
    /// Deepest queue tried (powers of two from 1).
    pub max_depth: u32,
    /// Block size of the sequential workloads.
    pub sequential_block_bytes: usize,
}

impl Default for TuneOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            file_bytes: 1 << 30,
            max_depth: 64,
            sequential_block_bytes: 1 << 20,
        }
    }
}

/// One workload swept over depths, and its knee.
#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub pattern: Pattern,
    pub direction: Direction,
    pub block_bytes: usize,
    pub samples: Vec<Sample>,
    pub knee_depth: u32,
}

impl Sweep {
    fn best(&self, value: impl Fn(&Sample) -> f64) -> f64 {
        self.samples.iter().map(value).fold(0.0, f64::max)
    }
}

/// Everything measured for one directory.
#[derive(Clone, Debug, Serialize)]
pub struct DirReport {
    pub dir: PathBuf,
    pub sweeps: Vec<Sweep>,
    pub properties: DiskProperties,
}

/// The device's minimum I/O size for direct I/O (at least [`measure::ALIGN`]).
pub fn min_io_bytes(dir: &Path) -> usize {
    let from_sysfs = check::block_device(dir).and_then(|(sys, _)| {
        let read = |name: &str| -> Option<usize> {
            std::fs::read_to_string(sys.join("queue").join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        read("minimum_io_size").max(read("logical_block_size"))
    });
    from_sysfs
        .unwrap_or(0)
        .max(measure::ALIGN)
        .next_multiple_of(measure::ALIGN)
}

/// Measures one directory: sequential reads and writes of large blocks and random reads and
/// writes of the minimum I/O size, each at rising depth until it is past the knee.
/// `progress` gets each sample as it is taken.
pub fn tune_dir(
    dir: &Path,
    options: &TuneOptions,
    mut progress: impl FnMut(&Sample),
) -> std::io::Result<DirReport> {
    let file = TestFile::create(dir, options.file_bytes)?;
    let small = min_io_bytes(dir);
    let mut sweeps = Vec::new();
    for (pattern, direction, block_bytes) in [
        (
            Pattern::Sequential,
            Direction::Read,
            options.sequential_block_bytes,
        ),
        (
            Pattern::Sequential,
            Direction::Write,
            options.sequential_block_bytes,
        ),
        (Pattern::Random, Direction::Read, small),
        (Pattern::Random, Direction::Write, small),
    ] {
        let mut samples = Vec::new();
        let mut points = Vec::new();
        let mut depth = 1;
        while depth <= options.max_depth {
            let sample = measure::run(
                &file,
                &Workload {
                    pattern,
                    direction,
                    block_bytes,
                    depth,
                    duration: options.duration,
                },
            )?;
            progress(&sample);
            points.push(Point {
                depth,
                throughput: sample.bytes_per_second,
                p99_us: sample.latency.p99_us,
            });
            samples.push(sample);
            if past_the_knee(&points) {
                break;
            }
            depth *= 2;
        }
        sweeps.push(Sweep {
            pattern,
            direction,
            block_bytes,
            knee_depth: knee(&points).unwrap_or(1),
            samples,
        });
    }
    drop(file);
    let properties = DiskProperties {
        dir: dir.to_path_buf(),
        read_bandwidth_bytes_per_second: sweeps[0].best(|s| s.bytes_per_second) as u64,
        write_bandwidth_bytes_per_second: sweeps[1].best(|s| s.bytes_per_second) as u64,
        read_iops: sweeps[2].best(|s| s.iops) as u64,
        write_iops: sweeps[3].best(|s| s.iops) as u64,
        block_bytes: small as u64,
        read_depth: sweeps[2].knee_depth,
        write_depth: sweeps[3].knee_depth,
    };
    Ok(DirReport {
        dir: dir.to_path_buf(),
        sweeps,
        properties,
    })
}
