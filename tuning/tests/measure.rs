//! A short real measurement in a temporary directory: io_uring, O_DIRECT, a test file that is
//! removed afterwards.

use std::time::Duration;

use floe_tuning::measure::{run, Direction, Pattern, TestFile, Workload, TEST_FILE_NAME};
use floe_tuning::{tune_dir, TuneOptions};

#[test]
fn workloads_run_and_report_consistent_figures() {
    let dir = tempfile::tempdir().unwrap();
    let file = TestFile::create(dir.path(), 8 << 20).unwrap();
    assert_eq!(std::fs::metadata(file.path()).unwrap().len(), 8 << 20);
    for (pattern, direction, block_bytes) in [
        (Pattern::Sequential, Direction::Read, 1 << 20),
        (Pattern::Sequential, Direction::Write, 1 << 20),
        (Pattern::Random, Direction::Read, 4096),
        (Pattern::Random, Direction::Write, 4096),
    ] {
        for depth in [1, 4] {
            let sample = run(
                &file,
                &Workload {
                    pattern,
                    direction,
                    block_bytes,
                    depth,
                    duration: Duration::from_millis(100),
                },
            )
            .unwrap();
            assert!(sample.ops > 0, "{sample:?}");
            let l = sample.latency;
            assert!(
                l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us,
                "{l:?}"
            );
            let expected = sample.ops as f64 * block_bytes as f64 / sample.seconds;
            assert!((sample.bytes_per_second - expected).abs() < 1.0);
            assert!(sample.seconds >= 0.1 && sample.seconds < 5.0, "{sample:?}");
        }
    }
    drop(file);
    assert!(
        !dir.path().join(TEST_FILE_NAME).exists(),
        "the test file is removed"
    );
}

#[test]
fn a_directory_sweep_fills_in_every_property() {
    let dir = tempfile::tempdir().unwrap();
    let options = TuneOptions {
        duration: Duration::from_millis(50),
        file_bytes: 8 << 20,
        max_depth: 4,
        sequential_block_bytes: 1 << 20,
    };
    let mut samples = 0;
    let report = tune_dir(dir.path(), &options, |_| samples += 1).unwrap();
    assert_eq!(report.sweeps.len(), 4);
    assert!((4..=12).contains(&samples), "{samples} samples");
    let p = &report.properties;
    assert!(p.read_bandwidth_bytes_per_second > 0 && p.write_bandwidth_bytes_per_second > 0);
    assert!(p.read_iops > 0 && p.write_iops > 0);
    assert!(p.block_bytes >= 4096);
    assert!([1, 2, 4].contains(&p.read_depth) && [1, 2, 4].contains(&p.write_depth));
    assert!(!dir.path().join(TEST_FILE_NAME).exists());
}
