//! One measured point of `floe tune`'s engine, for the side-by-side comparison with fio in
//! `benches/tune_vs_fio.py`:
//!
//! `tune_point <dir> <sequential|random> <read|write> <block bytes> <depth> <seconds> <file MiB>`
//!
//! Prints the sample as JSON (MB/s, IOPS, latency percentiles).

use std::path::Path;
use std::time::Duration;

use floe_tuning::measure::{run, Direction, Pattern, TestFile, Workload};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tune_point <dir> <sequential|random> <read|write> <block bytes> <depth> <seconds> <file MiB>";
    assert_eq!(args.len(), 8, "{usage}");
    let pattern = match args[2].as_str() {
        "sequential" => Pattern::Sequential,
        "random" => Pattern::Random,
        _ => panic!("{usage}"),
    };
    let direction = match args[3].as_str() {
        "read" => Direction::Read,
        "write" => Direction::Write,
        _ => panic!("{usage}"),
    };
    let number = |i: usize| -> u64 { args[i].parse().expect(usage) };
    floe_tuning::stop_on_signals().unwrap();
    let file = TestFile::create(Path::new(&args[1]), number(7) << 20).unwrap();
    let sample = run(
        &file,
        &Workload {
            pattern,
            direction,
            block_bytes: number(4) as usize,
            depth: number(5) as u32,
            duration: Duration::from_secs(number(6)),
        },
    )
    .unwrap();
    println!("{}", serde_json::to_string(&sample).unwrap());
}
