//! Measuring a device through a data directory: a test file, and workloads run with io_uring
//! (the `io-uring` crate) and `O_DIRECT` at a fixed queue depth for a fixed time, with every
//! I/O's latency in an HdrHistogram.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};
use serde::Serialize;

use crate::interrupted;

/// Alignment of direct I/O buffers, offsets and sizes. Why 4096: every device floe targets has
/// a logical block size that divides it.
pub const ALIGN: usize = 4096;

/// Name of the test file in a data directory.
pub const TEST_FILE_NAME: &str = ".floe-tune.dat";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Sequential,
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Read,
    Write,
}

/// One measured point.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Workload {
    pub pattern: Pattern,
    pub direction: Direction,
    pub block_bytes: usize,
    pub depth: u32,
    #[serde(skip)]
    pub duration: Duration,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What a workload achieved.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    #[serde(flatten)]
    pub workload: Workload,
    pub ops: u64,
    pub seconds: f64,
    pub bytes_per_second: f64,
    pub iops: f64,
    pub latency: Latency,
}

/// A test file in a data directory, removed when dropped (also after an interruption: the
/// measuring loops stop at SIGINT/SIGTERM and unwind normally).
pub struct TestFile {
    path: PathBuf,
    file: File,
    bytes: u64,
}

/// A buffer aligned for direct I/O.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    /// A buffer of pseudo-random bytes from `seed`: devices and virtual disks that compress or
    /// deduplicate would flatter constant data.
    fn new(bytes: usize, seed: u64) -> Self {
        let layout = Layout::from_size_align(bytes, ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size (callers pass whole blocks).
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for an I/O buffer");
        // SAFETY: `ptr` points to `bytes` initialised bytes just allocated, owned here.
        let slice = unsafe { std::slice::from_raw_parts_mut(ptr, bytes) };
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for chunk in slice.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        Self { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

impl TestFile {
    /// Creates the test file of `bytes` (rounded down to whole MiB) in `dir` and writes it
    /// fully, so that reads hit allocated blocks (a sparse or unwritten file reads as zeros
    /// without touching the device).
    pub fn create(dir: &Path, bytes: u64) -> io::Result<Self> {
        let bytes = bytes / (1 << 20) * (1 << 20);
        if bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the test file must be at least 1 MiB",
            ));
        }
        let path = dir.join(TEST_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("creating {} with O_DIRECT: {e}", path.display()),
                )
            })?;
        let test = Self { path, file, bytes };
        let fill = Workload {
            pattern: Pattern::Sequential,
            direction: Direction::Write,
            block_bytes: 1 << 20,
            depth: 1,
            duration: Duration::MAX,
        };
        run_ops(&test, &fill, Some(bytes / (1 << 20)))?;
        test.file.sync_all()?;
        Ok(test)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs `workload` on the test file for its duration.
pub fn run(file: &TestFile, workload: &Workload) -> io::Result<Sample> {
    run_ops(file, workload, None)
}

/// Runs a workload until its duration is over, or `count` I/Os completed, or an interruption.
fn run_ops(file: &TestFile, workload: &Workload, count: Option<u64>) -> io::Result<Sample> {
    let block = workload.block_bytes;
    assert!(
        block >= ALIGN && block.is_multiple_of(ALIGN),
        "whole aligned blocks"
    );
    let blocks_in_file = file.bytes / block as u64;
    assert!(blocks_in_file > 0, "the test file holds at least one block");
    let depth = workload.depth.max(1);
    // Completions are reaped by this thread only, while it waits: no need for the kernel to
    // interrupt it for each one (fio sets the same flags where the kernel has them).
    let mut ring = IoUring::new(depth.next_power_of_two())?;
    let fd = types::Fd(file.file.as_raw_fd());
    let buffers: Vec<AlignedBuf> = (0..depth)
        .map(|i| AlignedBuf::new(block, u64::from(i) + 1))
        .collect();
    let mut started = vec![Instant::now(); depth as usize];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut next_block = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_offset = || -> u64 {
        let index = match workload.pattern {
            Pattern::Sequential => {
                let index = next_block % blocks_in_file;
                next_block += 1;
                index
            }
            Pattern::Random => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % blocks_in_file
            }
        };
        index * block as u64
    };
    let limit = count.unwrap_or(u64::MAX);
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut in_flight = 0u32;
    let begin = Instant::now();
    let submit =
        |ring: &mut IoUring, slot: u32, offset: u64, started: &mut [Instant]| -> io::Result<()> {
            let buf = &buffers[slot as usize];
            let entry = match workload.direction {
                Direction::Read => opcode::Read::new(fd, buf.ptr, block as u32)
                    .offset(offset)
                    .build(),
                Direction::Write => opcode::Write::new(fd, buf.ptr, block as u32)
                    .offset(offset)
                    .build(),
            }
            .user_data(u64::from(slot));
            started[slot as usize] = Instant::now();
            // SAFETY: the buffer lives until the ring is drained below (the function waits for
            // every submitted I/O before returning or dropping the buffers).
            unsafe { ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))
        };
    for slot in 0..depth {
        if submitted == limit {
            break;
        }
        submit(&mut ring, slot, next_offset(), &mut started)?;
        submitted += 1;
        in_flight += 1;
    }
    let mut failure = None;
    while in_flight > 0 {
        // Wait for one completion; what was queued since the last call goes out first.
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (slot, result) in done {
            in_flight -= 1;
            let elapsed = started[slot as usize].elapsed();
            if result < 0 {
                failure.get_or_insert(io::Error::from_raw_os_error(-result));
            } else if result as usize != block {
                failure.get_or_insert(io::Error::other(format!(
                    "short {:?}: {result} of {block} bytes",
                    workload.direction
                )));
            } else {
                completed += 1;
                histogram.saturating_record((elapsed.as_micros() as u64).max(1));
            }
            let more = failure.is_none()
                && submitted < limit
                && begin.elapsed() < workload.duration
                && !interrupted();
            if more {
                submit(&mut ring, slot as u32, next_offset(), &mut started)?;
                submitted += 1;
                in_flight += 1;
                // Out at once, as fio does, rather than after the rest of this batch.
                ring.submit()?;
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    if interrupted() {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    let seconds = begin.elapsed().as_secs_f64();
    Ok(Sample {
        workload: *workload,
        ops: completed,
        seconds,
        bytes_per_second: (completed * block as u64) as f64 / seconds,
        iops: completed as f64 / seconds,
        latency: Latency {
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        },
    })
}
