//! `floe`: the command-line entry point. Thin: every subcommand calls a library.

mod client;
mod cluster;
mod committee;
mod strips;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// jemalloc, not glibc's malloc. Why: under stores and deletions glibc's heap grew without
/// bound (RssAnon of a node storing and deleting 64 KiB-1 MiB blobs rose 59 -> 86 MiB in five
/// minutes, and 95 -> 157 MiB in a 30-minute soak, in steps at each reclaim), though the live
/// heap stayed under 40 MB (heaptrack): freed big buffers raise glibc's mmap threshold, and
/// later ones fragment its arenas. jemalloc returns freed pages to the kernel over time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use clap::{Args, Parser, Subcommand};
use floe_codec::{
    decode_metadata, decode_primary_verified, encode_metadata, encode_owned, BlobId,
    EncodingConfig, SliverKind, VerifyScratch, N_SHARDS_DEFAULT,
};

/// floe: an erasure-coded blob store for hot AI data, byte-compatible with Walrus's RS2.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage node. With no options: a single node owning all n = 1000 shards, data in
    /// ./floe-data, listening on 127.0.0.1:31415.
    Node(NodeArgs),
    /// Measure each data directory's device (io_uring, O_DIRECT, rising queue depth) and write
    /// io-properties.toml for `floe node`; with --check, report the system settings instead.
    Tune(TuneArgs),
    /// Store a file through a node's publisher (any node of the committee); prints the blob ID.
    Store {
        file: PathBuf,
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:31415")]
        node: String,
        /// Epochs to store the blob for.
        #[arg(long, default_value_t = 1)]
        epochs: u32,
        /// Store it deletable: `floe delete` (with the write token) can remove it before its
        /// end epoch. Without it the blob is permanent until then.
        #[arg(long)]
        deletable: bool,
        /// Also compute the blob ID here (a full encode: files over 1 GiB in strips) and fail
        /// unless the node's answer names the same blob.
        #[arg(long)]
        verify: bool,
    },
    /// Delete a blob stored with --deletable, on every node of the committee.
    Delete {
        /// The blob ID (it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        blob_id: String,
        #[arg(long, default_value = "http://127.0.0.1:31415")]
        node: String,
    },
    /// Read a blob through a node's aggregator, verified against its ID by the node.
    Read {
        /// The blob ID (it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        blob_id: String,
        #[arg(long, default_value = "http://127.0.0.1:31415")]
        node: String,
        /// Where to write the blob (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also compute the blob ID of what was written (a full encode: files over 1 GiB in
        /// strips) and remove the file unless it is the blob asked for.
        #[arg(long, requires = "output")]
        verify: bool,
    },
    /// A local cluster of node processes on loopback.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The committee in the control plane (etcd).
    #[command(subcommand)]
    Committee(CommitteeCommand),
    /// Print the blob ID of a file (the same ID Walrus gives the same bytes at the same n).
    /// Files over 1 GiB are encoded in strips, with memory independent of their size and a
    /// temporary file of about 1.5x theirs (in $TMPDIR).
    BlobId {
        /// The blob.
        file: PathBuf,
        #[command(flatten)]
        code: CodeArgs,
        /// Encode in strips whatever the file's size.
        #[arg(long)]
        in_strips: bool,
    },
    /// Encode a file into slivers and metadata, written to a directory for inspection.
    Encode {
        /// The blob.
        file: PathBuf,
        #[command(flatten)]
        code: CodeArgs,
        /// Output directory: metadata.bcs, blob-id, primary/<i>.bcs, secondary/<j>.bcs.
        #[arg(long)]
        out: PathBuf,
    },
    /// Decode a blob from a directory written by `floe encode`, using any k_p primary slivers
    /// present, and verify it against the blob ID.
    Decode {
        /// Directory written by `floe encode`.
        dir: PathBuf,
        /// Where to write the blob (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// Where the control plane is.
#[derive(Args)]
struct EtcdArgs {
    /// etcd client URLs, comma-separated (http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The prefix of floe's keys in etcd.
    #[arg(long, default_value = floe_control::PREFIX_DEFAULT)]
    etcd_prefix: String,
}

#[derive(Subcommand)]
enum CommitteeCommand {
    /// Load a committee file (as `floe node --committee` reads it) as the first epoch's.
    Init {
        file: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print the current epoch and its committee.
    Show {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Set the next epoch's committee (nodes added or removed, shards moved; n stays): shards
    /// whose owner changes move when that epoch begins, at the end of the current one or, with
    /// --now, at once.
    Propose {
        file: PathBuf,
        /// Begin the next epoch now.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Show the shards moving into the current epoch: from, to, slivers and bytes moved, done.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start K nodes (separate processes and data directories) sharing n shards; prints the
    /// committee file.
    Up {
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        #[arg(long, default_value_t = 10)]
        shards: u16,
        /// Where the committee file, node configs, data and logs go.
        #[arg(long, default_value = "./floe-cluster")]
        dir: PathBuf,
        /// Executor cores per node.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Seconds between sync rounds (learning blobs, healing slivers).
        #[arg(long, default_value_t = 5)]
        sync_interval: u64,
        /// Coordinate the nodes through a local etcd (Debian's `etcd-server`) started beside
        /// them in DIR/etcd: the committee, epochs and the blob registry live there, and
        /// `floe committee show|propose|status --etcd URL` work on it. Peers authenticate
        /// with a generated cluster secret.
        #[arg(long)]
        etcd: bool,
    },
    /// Stop the nodes of a cluster started with `up` (SIGTERM, by PID), and its etcd; the
    /// data stays.
    Down {
        #[arg(long, default_value = "./floe-cluster")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// node.toml (every key optional; see README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, IP:port (port 0 picks a free one); overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Serve the S3 API on IP:port (port 0 picks a free one); overrides `s3_listen`. Needs a
    /// key: `[[s3.keys]]` in node.toml or FLOE_S3_ACCESS_KEY_ID / FLOE_S3_SECRET_ACCESS_KEY.
    #[arg(long = "s3-listen")]
    s3_listen: Option<String>,
    /// A data directory (repeat for several disks); overrides `data_dirs`.
    #[arg(long = "data-dir")]
    data_dirs: Vec<PathBuf>,
    /// Executor threads, one per core (0 = all cores); overrides `cores`.
    #[arg(long)]
    cores: Option<usize>,
    /// Shards of a single-node deployment; overrides `n_shards`.
    #[arg(long)]
    shards: Option<u16>,
    /// This node's name in the committee; overrides `name`.
    #[arg(long)]
    name: Option<String>,
    /// The committee file; overrides `committee`.
    #[arg(long)]
    committee: Option<PathBuf>,
    /// Read the committee from the control plane in etcd (client URLs, comma-separated)
    /// instead of a committee file; overrides `etcd_endpoints`.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
}

#[derive(Args)]
struct TuneArgs {
    /// A data directory to measure (repeat per disk); default: those of --config, or ./floe-data.
    #[arg(long = "data-dir")]
    data_dirs: Vec<PathBuf>,
    /// node.toml, for its data directories, cores and limits.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Report the system settings that matter to floe (nothing is measured or changed).
    #[arg(long)]
    check: bool,
    /// Machine-readable output (JSON) on standard output.
    #[arg(long)]
    json: bool,
    /// Time per measured point, e.g. 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Size of the test file written in each directory, e.g. 1G or 256M (removed afterwards).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    file_size: u64,
    /// Deepest queue tried (powers of two from 1; sweeps stop earlier past the knee).
    #[arg(long, default_value_t = 64)]
    max_depth: u32,
    /// Where to write the properties.
    #[arg(long, default_value = floe_tuning::properties::FILE_NAME)]
    out: PathBuf,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 2s or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    if !(seconds > 0.0 && seconds < 3600.0) {
        return Err(format!(
            "{text:?}: a duration must be above 0 and below an hour"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

fn parse_size(text: &str) -> Result<u64, String> {
    let upper = text.to_ascii_uppercase();
    let trimmed = upper.trim_end_matches("IB").trim_end_matches('B');
    let (number, shift) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 30),
        Some('T') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1G or 256M"))?;
    value
        .checked_shl(shift)
        .filter(|bytes| *bytes >= 1 << 20)
        .ok_or_else(|| format!("{text:?}: the test file must be at least 1M"))
}

#[derive(Args)]
struct CodeArgs {
    /// Number of shards n. The default is Walrus's 1000, so that IDs match Walrus's; small n is
    /// for test clusters.
    #[arg(long, default_value_t = N_SHARDS_DEFAULT)]
    shards: u16,
    /// Worker threads for encoding (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line, without a backtrace.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `FLOE_WRITE_TOKEN`, if set and not empty.
fn write_token() -> Option<String> {
    std::env::var("FLOE_WRITE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node(args) => run_node(args)?,
        Command::Tune(args) => run_tune(args)?,
        Command::Store {
            file,
            node,
            epochs,
            deletable,
            verify,
        } => {
            let stored = client::store(&node, &file, epochs, deletable, write_token().as_deref())?;
            if verify {
                verify_file(&node, &file, &stored.blob_id)?;
            }
            let inner = &stored.answer[&stored.outcome];
            eprintln!(
                "{}: {} bytes, end epoch {}, {} shards confirmed{}",
                stored.outcome,
                inner["size"],
                inner["endEpoch"],
                inner["shardsConfirmed"],
                if inner["deletable"] == true {
                    ", deletable"
                } else {
                    ""
                }
            );
            println!("{}", stored.blob_id);
        }
        Command::Delete { blob_id, node } => {
            let id: BlobId = blob_id.parse()?;
            let answer = client::delete(&node, &id, write_token().as_deref())?;
            let inner = &answer["deleted"];
            let names = |key: &str| -> String {
                let list: Vec<&str> = inner[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                list.join(", ")
            };
            eprintln!("deleted {id} on {}", names("nodesDeleted"));
            let failed = names("failedNodes");
            if !failed.is_empty() {
                eprintln!("not confirmed (they learn it through sync): {failed}");
            }
        }
        Command::Read {
            blob_id,
            node,
            output,
            verify,
        } => {
            let id: BlobId = blob_id.parse()?;
            client::read(&node, &id, output.as_deref())?;
            if let (true, Some(path)) = (verify, &output) {
                if let Err(err) = verify_file(&node, path, &id.to_string()) {
                    let _ = fs::remove_file(path);
                    return Err(err.context(format!("removed {}", path.display())));
                }
            }
        }
        Command::Cluster(ClusterCommand::Up {
            nodes,
            shards,
            dir,
            cores,
            sync_interval,
            etcd,
        }) => {
            let (committee, urls) = cluster::up(&cluster::Up {
                dir: dir.clone(),
                nodes,
                shards,
                cores,
                sync_interval_seconds: sync_interval,
                etcd,
            })?;
            print!("{}", fs::read_to_string(&committee)?);
            if let Some(url) = cluster::etcd_url(&dir) {
                eprintln!("\netcd: {url} (data and log in {}/etcd)", dir.display());
                eprintln!("  committee: floe committee show --etcd {url}");
            }
            eprintln!(
                "\n{nodes} nodes up; committee file {}; logs in {}/node-*/node.log",
                committee.display(),
                dir.display()
            );
            eprintln!("  store: floe store FILE --node {}", urls[0]);
            eprintln!(
                "  read:  floe read BLOB_ID --node {} -o FILE",
                urls[urls.len() - 1]
            );
            eprintln!("  stop:  floe cluster down --dir {}", dir.display());
        }
        Command::Committee(CommitteeCommand::Init { file, etcd }) => {
            println!("{}", committee::init(&file, &etcd.etcd, &etcd.etcd_prefix)?);
        }
        Command::Committee(CommitteeCommand::Show { json, etcd }) => {
            print!("{}", committee::show(&etcd.etcd, &etcd.etcd_prefix, json)?);
            if json {
                println!();
            }
        }
        Command::Committee(CommitteeCommand::Propose { file, now, etcd }) => {
            println!(
                "{}",
                committee::propose(&file, now, &etcd.etcd, &etcd.etcd_prefix)?
            );
        }
        Command::Committee(CommitteeCommand::Status { json, etcd }) => {
            print!(
                "{}",
                committee::status(&etcd.etcd, &etcd.etcd_prefix, json)?
            );
            if json {
                println!();
            }
        }
        Command::Cluster(ClusterCommand::Down { dir }) => {
            let stopped = cluster::down(&dir)?;
            eprintln!("stopped {stopped} nodes; data stays in {}", dir.display());
        }
        Command::BlobId {
            file,
            code,
            in_strips,
        } => {
            let config = EncodingConfig::new(code.shards)?;
            let size = fs::metadata(&file)
                .with_context(|| format!("reading the size of {}", file.display()))?
                .len();
            if in_strips || size > strips::STRIPS_FROM_BYTES {
                let temp = std::env::temp_dir();
                let id = with_threads(code.threads, || strips::blob_id(&file, &config, &temp))??;
                println!("{id}");
                return Ok(());
            }
            let blob = read_blob(&file, &config)?;
            let encoded = with_threads(code.threads, || encode_owned(&config, blob))??;
            println!("{}", encoded.blob_id());
        }
        Command::Encode { file, code, out } => {
            let config = EncodingConfig::new(code.shards)?;
            let blob = read_blob(&file, &config)?;
            let started = Instant::now();
            let encoded = with_threads(code.threads, || encode_owned(&config, blob))??;
            let encode_s = started.elapsed().as_secs_f64();
            write_encoded(&out, &encoded)?;
            let layout = encoded.layout();
            eprintln!(
                "encoded {} bytes at n = {} in {:.3} s: symbol size {} B, primary slivers {} B, \
                 secondary slivers {} B, {} B in all; wrote {}",
                layout.blob_bytes,
                config.n_shards(),
                encode_s,
                layout.symbol_bytes,
                layout.primary_sliver_bytes(),
                layout.secondary_sliver_bytes(),
                layout.encoded_bytes_total() + layout.metadata_bytes(),
                out.display()
            );
            println!("{}", encoded.blob_id());
        }
        Command::Decode {
            dir,
            output,
            threads,
        } => {
            let blob = with_threads(threads, || decode_dir(&dir))??;
            match output {
                Some(path) => fs::write(&path, &blob)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout().lock(), &blob)?,
            }
        }
    }
    Ok(())
}

fn run_tune(args: TuneArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => floe_server::NodeConfig::load(path)?,
        None => floe_server::NodeConfig::default(),
    };
    let dirs = if args.data_dirs.is_empty() {
        config.data_dirs.clone()
    } else {
        args.data_dirs.clone()
    };
    if args.check {
        let findings = floe_tuning::check::report(
            &dirs,
            config.core_count(),
            config.io_memory_bytes as u64,
            config.limits.connections_per_core as u64,
        );
        if args.json {
            println!("{}", serde_json::to_string_pretty(&findings)?);
        } else {
            for f in &findings {
                let status = format!("{:?}", f.status).to_uppercase();
                println!("{status:<5} {:<28} {}", f.check, f.value);
                if f.status != floe_tuning::check::Status::Ok {
                    println!("      why: {}", f.why);
                    if let Some(fix) = &f.fix {
                        let root = if f.needs_root { " (needs root)" } else { "" };
                        println!("      fix{root}: {fix}");
                    }
                }
            }
        }
        if findings
            .iter()
            .any(|f| f.status == floe_tuning::check::Status::Fail)
        {
            bail!("the system is not ready for floe (see FAIL above)");
        }
        return Ok(());
    }
    floe_tuning::stop_on_signals()?;
    let options = floe_tuning::TuneOptions {
        duration: args.duration,
        file_bytes: args.file_size,
        max_depth: args.max_depth.max(1),
        ..Default::default()
    };
    let mut reports = Vec::new();
    for dir in &dirs {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!(
            "measuring {} ({} MiB test file, {:?} per point)",
            dir.display(),
            options.file_bytes >> 20,
            options.duration
        );
        let report = floe_tuning::tune_dir(dir, &options, |s| {
            eprintln!(
                "  {:<10} {:<5} {:>7} B  depth {:>3}: {:>9.1} MB/s {:>9.0} IOPS  p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us",
                format!("{:?}", s.workload.pattern).to_lowercase(),
                format!("{:?}", s.workload.direction).to_lowercase(),
                s.workload.block_bytes,
                s.workload.depth,
                s.bytes_per_second / 1e6,
                s.iops,
                s.latency.p50_us,
                s.latency.p99_us,
                s.latency.p999_us
            );
        })
        .with_context(|| format!("measuring {}", dir.display()))?;
        reports.push(report);
    }
    let properties = floe_tuning::properties::IoProperties {
        disks: reports.iter().map(|r| r.properties.clone()).collect(),
    };
    fs::write(&args.out, properties.to_toml())
        .with_context(|| format!("writing {}", args.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let p = &r.properties;
            println!(
                "{}: read {:.0} MB/s, write {:.0} MB/s, {} B random reads {} IOPS (depth {}), writes {} IOPS (depth {})",
                r.dir.display(),
                p.read_bandwidth_bytes_per_second as f64 / 1e6,
                p.write_bandwidth_bytes_per_second as f64 / 1e6,
                p.block_bytes,
                p.read_iops,
                p.read_depth,
                p.write_iops,
                p.write_depth
            );
        }
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

fn run_node(args: NodeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = match &args.config {
        Some(path) => floe_server::NodeConfig::load(path)?,
        None => floe_server::NodeConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(s3_listen) = args.s3_listen {
        config.s3_listen = Some(s3_listen);
    }
    if !args.data_dirs.is_empty() {
        config.data_dirs = args.data_dirs;
    }
    if let Some(cores) = args.cores {
        config.cores = cores;
    }
    if let Some(shards) = args.shards {
        config.n_shards = shards;
    }
    if let Some(name) = args.name {
        config.name = name;
    }
    if !args.etcd.is_empty() {
        config.etcd_endpoints = args.etcd;
    }
    if let Some(committee) = args.committee {
        config.committee = Some(committee);
    }
    floe_server::run(config, |ready| {
        let url = format!("http://{}", ready.address);
        let dirs: Vec<String> = ready
            .data_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        println!(
            "floe node {:?} listening on {url} ({} cores; n = {} shards, {} held here; data in {})",
            ready.name,
            ready.cores,
            ready.n_shards,
            ready.shards_owned,
            dirs.join(", ")
        );
        println!("  health:  curl {url}/v1/health");
        println!("  metrics: curl {url}/metrics");
        println!(
            "  store:   floe store FILE --node {url}   (prints the blob ID; encodes at n = {})",
            ready.n_shards
        );
        println!(
            "  read:    floe read BLOB_ID --node {url} -o FILE   (or curl {url}/v1/blobs/BLOB_ID)"
        );
        if let Some(s3) = ready.s3_address {
            let s3_url = format!("http://{s3}");
            println!("S3 API on {s3_url} (path style; keys from [[s3.keys]] or FLOE_S3_*)");
            println!(
                "  boto3:   boto3.client(\"s3\", endpoint_url=\"{s3_url}\", aws_access_key_id=..., aws_secret_access_key=...)"
            );
            println!("  AWS CLI: aws --endpoint-url {s3_url} s3 ls");
        }
        println!("  stop:    Ctrl-C or SIGTERM (in-flight requests finish first)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}

/// Runs `f` on a pool of `threads` workers (all cores when `None`).
/// Computes the blob ID of `file` at the committee's n (from the node's `/v1/health`) and
/// fails unless it is `expected`.
fn verify_file(node: &str, file: &Path, expected: &str) -> Result<()> {
    let n = client::n_shards(node)?;
    let config = EncodingConfig::new(n)?;
    let size = fs::metadata(file)?.len();
    let id = if size > strips::STRIPS_FROM_BYTES {
        strips::blob_id(file, &config, &std::env::temp_dir())?
    } else {
        *encode_owned(&config, read_blob(file, &config)?)?.blob_id()
    };
    if id.to_string() != expected {
        bail!(
            "{} has blob ID {id} at n = {n}, not {expected}: the bytes differ",
            file.display()
        );
    }
    eprintln!("verified: {} is blob {id}", file.display());
    Ok(())
}

fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> Result<T> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        builder = builder.num_threads(threads);
    }
    Ok(builder.build()?.install(f))
}

/// Reads a blob, refusing one too large for the code before reading it, into a buffer with
/// room for all primary slivers so that encoding does not copy it again.
fn read_blob(path: &Path, config: &EncodingConfig) -> Result<Vec<u8>> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let blob_bytes = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let layout = config.layout(blob_bytes)?;
    let capacity = config.n_shards() * layout.primary_sliver_bytes();
    let mut blob = Vec::with_capacity(capacity.max(blob_bytes as usize));
    file.read_to_end(&mut blob)
        .with_context(|| format!("reading {}", path.display()))?;
    if blob.len() as u64 != blob_bytes {
        bail!("{} changed size while it was read", path.display());
    }
    Ok(blob)
}

fn write_encoded(out: &Path, encoded: &floe_codec::EncodedBlob) -> Result<()> {
    let n = encoded.layout().config.n_shards();
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        let dir = out.join(kind.as_str());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for index in 0..n {
            let path = dir.join(format!("{index}.bcs"));
            fs::write(&path, encoded.sliver_bcs(kind, index))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let path = out.join("metadata.bcs");
    fs::write(&path, encode_metadata(encoded.metadata()))
        .with_context(|| format!("writing {}", path.display()))?;
    let path = out.join("blob-id");
    fs::write(&path, format!("{}\n", encoded.blob_id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn decode_dir(dir: &Path) -> Result<Vec<u8>> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let blob_id: BlobId = String::from_utf8(read("blob-id")?)?.trim().parse()?;
    let metadata = decode_metadata(&read("metadata.bcs")?).context("metadata.bcs")?;
    metadata.verify(&blob_id, metadata.n_shards())?;
    let layout = metadata.layout()?;
    let k_p = layout.config.n_primary_source();
    let primary_dir = dir.join("primary");
    let mut paths: Vec<PathBuf> = fs::read_dir(&primary_dir)
        .with_context(|| format!("listing {}", primary_dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    // Verify each sliver on its own, so that a corrupt file is named and skipped rather than
    // failing the whole decode; stop once k_p good ones are in hand.
    let mut slivers = Vec::new();
    let mut scratch = VerifyScratch::default();
    for path in paths {
        if slivers.len() == k_p {
            break;
        }
        let body = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let checked = verified_primary(&metadata, &layout, &body, &mut scratch);
        match checked {
            Ok(sliver) => slivers.push(sliver),
            Err(err) => eprintln!("skipping {}: {err}", path.display()),
        }
    }
    let slivers: Vec<(usize, &[u8])> = slivers
        .iter()
        .map(|s| (usize::from(s.index), s.data.as_slice()))
        .collect();
    // Each sliver was verified above: rows taken straight from them need no second check.
    Ok(decode_primary_verified(&metadata, &slivers)?)
}

/// Decodes a primary sliver body and verifies it against the metadata, as the sliver the body
/// names.
fn verified_primary(
    metadata: &floe_codec::BlobMetadata,
    layout: &floe_codec::BlobLayout,
    body: &[u8],
    scratch: &mut VerifyScratch,
) -> Result<floe_codec::Sliver> {
    let sliver = floe_codec::decode_sliver(SliverKind::Primary, body)?;
    floe_codec::verify_sliver(
        metadata,
        layout,
        SliverKind::Primary,
        sliver.index.into(),
        sliver.symbol_bytes.into(),
        &sliver.data,
        scratch,
    )?;
    Ok(sliver)
}
