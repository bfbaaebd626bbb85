//! The command line: `floe-loadgen prepare` and `floe-loadgen run`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::manifest::Manifest;
use crate::prepare::{prepare, PrepareConfig};
use crate::run::{run, RunConfig};
use crate::spec::{Mix, Popularity, SizeDist};
use crate::target::Target;

/// floe-loadgen: drive a floe node or cluster with verified reads and stores, closed or open
/// loop, and report throughput and HdrHistogram latencies.
#[derive(Parser, Debug)]
#[command(name = "floe-loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store a data set through a node and write its manifest (blob IDs, sizes, checksums).
    Prepare(PrepareArgs),
    /// Run a workload and report what it measured.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// The node to store through.
    #[arg(long, default_value = "http://127.0.0.1:31415", value_parser = Target::parse)]
    pub target: Target,
    /// Where to write the manifest.
    #[arg(long)]
    pub manifest: PathBuf,
    /// How many blobs.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// Blob size: `1MiB`, `1GiB`, `2.5GB`, or log-uniform between two sizes: `4KiB..4GiB`
    /// (up to the node's largest blob; each is generated as it is sent, not held).
    #[arg(long, default_value = "1MiB")]
    pub size: SizeDist,
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Seeds the content and the sizes: the same seed stores the same data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stores in flight at once.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Connecting, each stall of an upload, and the node's answer after the body (plus a
    /// second per 10 MB sent: the node encodes the blob once it has it all).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The node's write token, if it has one.
    #[arg(long, env = "FLOE_TOKEN")]
    pub token: Option<String>,
    /// Also name each blob in this S3 endpoint of the node (`blob-NNNNNNNN` in --s3-bucket),
    /// for the s3 workloads; the key comes from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long, value_parser = Target::parse)]
    pub s3: Option<Target>,
    #[arg(long, default_value = crate::s3::BUCKET_DEFAULT)]
    pub s3_bucket: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A node (or any HTTP server for the `url` workload); repeat for a cluster: connections
    /// are spread over the targets in turn.
    #[arg(long = "target", default_value = "http://127.0.0.1:31415", value_parser = Target::parse)]
    pub targets: Vec<Target>,
    /// The manifest `prepare` wrote (for the blob, range and sliver workloads).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// blob | range | sliver | store | url, or a mix by weight: `blob:70,range:25,store:5`.
    #[arg(long, default_value = "blob")]
    pub workload: Mix,
    /// Connections in all, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Threads (one single-threaded runtime each); default: one per CPU.
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Open loop at this many requests per second in all (latency corrected for coordinated
    /// omission); without it, a closed loop.
    #[arg(long, short = 'R')]
    pub rate: Option<f64>,
    /// How long to measure (after the warm-up); default 10s, or up to 1h with --requests.
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Load before measuring, not counted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Stop after this many measured requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Per request: connecting, the answer's head after the request was sent (a store's: plus
    /// a second per 10 MB sent), and each stall of a body either way; a big body that keeps
    /// moving does not time out.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Which blobs reads pick: uniform, zipf or zipf:S.
    #[arg(long, default_value = "uniform")]
    pub popularity: Popularity,
    /// Range read sizes (random offsets): `64KiB` or `4KiB..4MiB` (log-uniform).
    #[arg(long, default_value = "4KiB..1MiB")]
    pub range_size: SizeDist,
    /// Sizes of the blobs the store workload writes.
    #[arg(long, default_value = "1MiB")]
    pub store_size: SizeDist,
    #[arg(long, default_value_t = 1)]
    pub store_epochs: u32,
    /// Fraction of reads whose bytes are checked against the manifest (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    pub verify: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, env = "FLOE_TOKEN")]
    pub token: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the latency percentile distribution (wrk2's format, milliseconds) to this file.
    #[arg(long)]
    pub percentiles: Option<PathBuf>,
    /// Write PREFIX-latency.svg and PREFIX-throughput.svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The bucket the s3 workloads read (default: the manifest's); their targets are S3
    /// endpoints, and the key comes from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    pub s3_bucket: Option<String>,
}

/// Exit status when a run saw bytes that failed verification.
pub const EXIT_VERIFY_FAILED: i32 = 2;

/// Runs a parsed command; returns the process exit status.
pub fn execute(cli: Cli, out: &mut impl Write) -> Result<i32> {
    match cli.command {
        Command::Prepare(args) => {
            let manifest = prepare(PrepareConfig {
                target: args.target,
                count: args.count,
                size: args.size,
                epochs: args.epochs,
                seed: args.seed,
                connections: args.connections,
                timeout: args.timeout,
                token: args.token,
                progress: true,
                s3: args.s3.map(|target| (target, args.s3_bucket)),
            })?;
            manifest.save(&args.manifest)?;
            let bytes: u64 = manifest.blobs.iter().map(|b| b.size).sum();
            writeln!(
                out,
                "stored {} blobs ({bytes} bytes) through {}; manifest {}",
                manifest.blobs.len(),
                manifest.target,
                args.manifest.display()
            )?;
            Ok(0)
        }
        Command::Run(args) => {
            let (blobs, manifest_bucket) = match &args.manifest {
                Some(path) => {
                    let manifest = Manifest::load(path)?;
                    (manifest.blobs()?, manifest.s3_bucket)
                }
                None => (Vec::new(), None),
            };
            let threads = args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let duration = args.duration.unwrap_or(if args.requests.is_some() {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(10)
            });
            let config = RunConfig {
                targets: args.targets,
                mix: args.workload,
                blobs,
                popularity: args.popularity,
                range_size: args.range_size,
                store_size: args.store_size,
                store_epochs: args.store_epochs,
                token: args.token,
                connections: args.connections,
                threads: threads.min(args.connections.max(1)),
                rate: args.rate,
                duration,
                warmup: args.warmup,
                requests: args.requests,
                timeout: args.timeout,
                verify: args.verify,
                seed: args.seed,
                progress: !args.json,
                s3_bucket: args
                    .s3_bucket
                    .or(manifest_bucket)
                    .unwrap_or_else(|| crate::s3::BUCKET_DEFAULT.to_string()),
            };
            let report = run(config)?;
            if let Some(path) = &args.percentiles {
                let mut file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                crate::report::write_percentiles(&report.latency, &mut file)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(prefix) = &args.plot {
                crate::plot::write(&report, prefix)?;
            }
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &report)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", report.table())?;
            }
            Ok(if report.errors.contains_key("verify") {
                EXIT_VERIFY_FAILED
            } else {
                0
            })
        }
    }
}
