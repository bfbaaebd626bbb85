//! The engine: threads, each a single-threaded tokio runtime driving its share of the
//! connections (nothing shared between threads on the request path), closed
//! loop (each connection sends as soon as its last answer arrived) or open loop (each
//! connection follows a fixed schedule, and latency counts from when a request should have
//! been sent, so a server that falls behind shows it: wrk2's coordinated-omission correction).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use floe_codec::{decode_metadata, decode_sliver, BlobMetadata, SliverKind};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::content;
use crate::http::{
    request_head, store_head, stored_blob_id, Client, Head, HttpError, Meter, Upload, Watchdog,
};
use crate::manifest::Blob;
use crate::report::{self, Report};
use crate::spec::{KeyChooser, Mix, Op, Popularity, SizeDist};
use crate::target::Target;

/// The granularity of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub targets: Vec<Target>,
    pub mix: Mix,
    /// The manifest's blobs (empty for `url` and `store`).
    pub blobs: Vec<Blob>,
    pub popularity: Popularity,
    pub range_size: SizeDist,
    pub store_size: SizeDist,
    pub store_epochs: u32,
    pub token: Option<String>,
    pub connections: usize,
    pub threads: usize,
    /// Requests per second over all connections (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Measured requests in all, after which the run ends (the duration still bounds it).
    pub requests: Option<u64>,
    pub timeout: Duration,
    /// The fraction of reads whose bytes are checked, 0 to 1.
    pub verify: f64,
    pub seed: u64,
    /// A live progress line on standard error (only if it is a terminal).
    pub progress: bool,
    /// The bucket the `s3` workloads read the manifest's blobs from.
    pub s3_bucket: String,
}

impl RunConfig {
    pub fn check(&self) -> Result<()> {
        if self.targets.is_empty() {
            bail!("no target: give --target URL");
        }
        if self.connections == 0 || self.threads == 0 {
            bail!("--connections and --threads must be at least 1");
        }
        if self.mix.ops().any(Op::is_s3) && !self.mix.ops().all(Op::is_s3) {
            bail!(
                "the s3 workloads go to S3 endpoints and the others to floe's API: run them apart"
            );
        }
        if self.mix.ops().any(Op::needs_manifest) && self.blobs.is_empty() {
            bail!("the blob, range and sliver workloads read the blobs of a manifest: run `floe-loadgen prepare` first and pass --manifest");
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be a positive number of requests per second");
            }
        }
        if self.duration.is_zero() {
            bail!("--duration must be above 0");
        }
        if !(0.0..=1.0).contains(&self.verify) {
            bail!("--verify is a fraction from 0 to 1");
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        Ok(())
    }

    /// The workload, as the report names it.
    pub fn workload(&self) -> String {
        self.mix.to_string()
    }
}

/// For the sliver workload: per target, per blob, what the target holds.
#[derive(Default)]
struct SliverSet {
    /// Indexes into the manifest's blobs with at least one pair here.
    blobs: Vec<usize>,
    /// Per manifest blob: its metadata (checked against its ID) and the pairs held here.
    per_blob: Vec<Option<(BlobMetadata, Vec<u16>)>>,
}

struct Shared {
    config: RunConfig,
    /// Per target.
    slivers: Vec<SliverSet>,
    /// Per target, per manifest blob: the presigned GetObject path (the `s3` workloads).
    s3_paths: Vec<Vec<String>>,
    start: Instant,
    claimed: AtomicU64,
    /// Only when a progress line is shown: otherwise no counter is shared between threads.
    live: Option<Live>,
}

/// Counters the progress line reads while the run goes.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Body bytes as they move (each connection's [`Meter`] adds to it).
    bytes: Arc<AtomicU64>,
}

/// Runs the load and returns what was measured.
pub fn run(config: RunConfig) -> Result<Report> {
    config.check()?;
    preflight(&config)?;
    let slivers = if config.mix.ops().any(|op| op == Op::Sliver) {
        sliver_sets(&config)?
    } else {
        Vec::new()
    };
    let s3_paths = if config.mix.ops().any(Op::is_s3) {
        // Valid for the whole run, with room for its timeouts.
        let expires = (config.duration + config.warmup + Duration::from_secs(3600))
            .min(Duration::from_secs(7 * 24 * 3600));
        let mut per_target = Vec::new();
        for target in &config.targets {
            let signer = crate::s3::Signer::from_env(target, &config.s3_bucket)?;
            per_target.push(
                (0..config.blobs.len() as u64)
                    .map(|i| signer.get(i, expires))
                    .collect(),
            );
        }
        per_target
    } else {
        Vec::new()
    };
    // Every thread starts from the same instant, a little ahead so that all are ready.
    let start = Instant::now() + Duration::from_millis(20);
    let show_progress = config.progress && std::io::stderr().is_terminal();
    let shared = Arc::new(Shared {
        config,
        slivers,
        s3_paths,
        start,
        claimed: AtomicU64::new(0),
        live: show_progress.then(Live::default),
    });
    let done = Arc::new(AtomicBool::new(false));
    let progress = show_progress.then(|| {
        let (shared, done) = (shared.clone(), done.clone());
        std::thread::spawn(move || progress_line(&shared, &done))
    });
    let mut threads = Vec::new();
    for thread in 0..shared.config.threads {
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || on_this_thread(thread_main(shared, thread)))
            .with_context(|| format!("starting loadgen thread {thread}"))?;
        threads.push(handle);
    }
    let mut total = Stats::new();
    for handle in threads {
        let stats = handle
            .join()
            .map_err(|_| anyhow!("a loadgen thread panicked"))??;
        total.merge(&stats);
    }
    done.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
        eprint!("\r\x1b[2K");
    }
    Ok(report::build(&shared.config, total, shared.start))
}

/// A clear error before any load if a target does not answer at all.
fn preflight(config: &RunConfig) -> Result<()> {
    for target in &config.targets {
        if config.mix.ops().any(|op| op == Op::Url || op.is_s3()) {
            // Only the answer's head: the URL may name a file of many GB.
            on_this_thread(async {
                let watchdog = Watchdog::spawn(watch_period(config.timeout));
                let mut client = Client::new(target.addr, config.timeout, &watchdog);
                let mut head = Vec::new();
                request_head(&mut head, "GET", &target.path, &target.host, &[], None);
                client.start(&head, None).await.map(|_| ())
            })?
            .map_err(|e| anyhow!("GET {}: {e}", target.path))
            .with_context(|| format!("the target {target} does not answer"))?;
            continue;
        }
        let path = "/v1/health";
        let (status, body) = block_on_fetch(target, "GET", path, config.timeout)
            .with_context(|| format!("the target {target} does not answer"))?;
        if status != 200 {
            bail!(
                "the target {target} answered {status} to GET /v1/health: {}; is it a floe node?",
                String::from_utf8_lossy(&body).trim()
            );
        }
    }
    Ok(())
}

/// How often a thread's watchdog looks for requests past their deadline.
pub(crate) fn watch_period(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

/// Runs a future to its end on a single-threaded runtime of this thread.
pub(crate) fn on_this_thread<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    Ok(tokio::task::LocalSet::new().block_on(&runtime, future))
}

/// One request (setup, not load).
pub(crate) fn block_on_fetch(
    target: &Target,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    on_this_thread(async {
        let watchdog = Watchdog::spawn(watch_period(timeout));
        let mut client = Client::new(target.addr, timeout, &watchdog);
        let mut head = Vec::new();
        request_head(&mut head, method, path, &target.host, &[], None);
        client.fetch(&head, None).await
    })?
    .map_err(|e| anyhow!("{method} {path}: {e}"))
}

/// For each target: each blob's metadata, checked against its ID, and the pairs the target
/// holds (`GET /v1/blobs/{id}/status`); one connection per target for all of them.
fn sliver_sets(config: &RunConfig) -> Result<Vec<SliverSet>> {
    on_this_thread(async {
        let watchdog = Watchdog::spawn(watch_period(config.timeout));
        let mut sets = Vec::new();
        for target in &config.targets {
            let mut client = Client::new(target.addr, config.timeout, &watchdog);
            let mut set = SliverSet::default();
            for (index, blob) in config.blobs.iter().enumerate() {
                let body = get_ok(&mut client, target, &format!("{}/status", blob.path)).await?;
                let answer: serde_json::Value = serde_json::from_slice(&body)
                    .with_context(|| format!("{target}: the status of {}", blob.id))?;
                let pairs: Vec<u16> = answer["primaryPairs"]
                    .as_array()
                    .map(|pairs| {
                        pairs
                            .iter()
                            .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                            .collect()
                    })
                    .unwrap_or_default();
                if pairs.is_empty() {
                    set.per_blob.push(None);
                    continue;
                }
                let body = get_ok(&mut client, target, &format!("{}/metadata", blob.path)).await?;
                let metadata = decode_metadata(&body)
                    .map_err(|e| anyhow!("{target}: the metadata of {}: {e}", blob.id))?;
                if metadata.compute_blob_id() != blob.id {
                    bail!(
                        "{target}: the metadata of {} does not match its blob ID",
                        blob.id
                    );
                }
                set.blobs.push(index);
                set.per_blob.push(Some((metadata, pairs)));
            }
            if set.blobs.is_empty() {
                bail!("{target} holds no primary sliver of any blob in the manifest");
            }
            sets.push(set);
        }
        Ok(sets)
    })?
}

/// The body of a `GET` that must answer 200 (setup, not load).
async fn get_ok(client: &mut Client, target: &Target, path: &str) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    request_head(&mut head, "GET", path, &target.host, &[], None);
    let (status, body) = client
        .fetch(&head, None)
        .await
        .map_err(|e| anyhow!("{target}: GET {path}: {e}"))?;
    if status != 200 {
        bail!("{target}: GET {path} answered {status}");
    }
    Ok(body)
}

fn progress_line(shared: &Shared, done: &AtomicBool) {
    let live = shared.live.as_ref().expect("progress has its counters");
    let mut last = (0, 0);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let ok = live.ok.load(Ordering::Relaxed);
        let bytes = live.bytes.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let elapsed = shared.start.elapsed().as_secs_f64();
        let phase = if elapsed < shared.config.warmup.as_secs_f64() {
            "warm-up"
        } else {
            "measuring"
        };
        eprint!(
            "\r\x1b[2K{phase} {elapsed:6.1} s  {:>9} ok  {:>6} errors  {:>10.0} req/s  {:>8.3} GB/s",
            ok,
            errors,
            (ok - last.0) as f64,
            (bytes - last.1) as f64 / 1e9
        );
        last = (ok, bytes);
    }
}

/// What one thread (then the whole run) measured.
pub struct Stats {
    /// Microseconds from the intended send time (the send time in a closed loop).
    pub latency: Histogram<u64>,
    /// Microseconds from the actual send (not corrected).
    pub service: Histogram<u64>,
    /// Microseconds from the send to the answer's first byte, reads only.
    pub ttfb: Histogram<u64>,
    /// Open loop: microseconds a request went out after it was due while its connection was
    /// idle (the timer's lateness, loadgen's own).
    pub send_lag: Histogram<u64>,
    pub per_op: BTreeMap<Op, OpStats>,
    pub errors: BTreeMap<String, u64>,
    pub error_sample: Option<String>,
    /// Per second of the measured window: answers completed in it, and body bytes moved in
    /// it (received or sent, by any request: also one that began in the warm-up, failed, or
    /// ended after the window).
    pub seconds: Vec<(u64, u64)>,
    pub ok: u64,
    /// Body bytes of the answers counted (a store: its body).
    pub bytes: u64,
    pub verified: u64,
    /// Requests still running when the duration ended (not counted).
    pub unfinished: u64,
    pub connects: u64,
    pub last_done: Option<Instant>,
}

pub struct OpStats {
    pub ok: u64,
    pub errors: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // One microsecond to an hour, three significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 3_600_000_000)
}

impl Stats {
    fn new() -> Self {
        Self {
            latency: histogram(),
            service: histogram(),
            ttfb: histogram(),
            send_lag: histogram(),
            per_op: BTreeMap::new(),
            errors: BTreeMap::new(),
            error_sample: None,
            seconds: Vec::new(),
            ok: 0,
            bytes: 0,
            verified: 0,
            unfinished: 0,
            connects: 0,
            last_done: None,
        }
    }

    fn op(&mut self, op: Op) -> &mut OpStats {
        self.per_op.entry(op).or_insert_with(|| OpStats {
            ok: 0,
            errors: 0,
            bytes: 0,
            latency: histogram(),
        })
    }

    fn merge(&mut self, other: &Stats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        let _ = self.ttfb.add(&other.ttfb);
        let _ = self.send_lag.add(&other.send_lag);
        for (op, stats) in &other.per_op {
            let mine = self.op(*op);
            mine.ok += stats.ok;
            mine.errors += stats.errors;
            mine.bytes += stats.bytes;
            let _ = mine.latency.add(&stats.latency);
        }
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        if self.error_sample.is_none() {
            self.error_sample.clone_from(&other.error_sample);
        }
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize(other.seconds.len(), (0, 0));
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        self.ok += other.ok;
        self.bytes += other.bytes;
        self.verified += other.verified;
        self.unfinished += other.unfinished;
        self.connects += other.connects;
        self.last_done = self.last_done.max(other.last_done);
    }
}

async fn thread_main(shared: Arc<Shared>, thread: usize) -> Stats {
    let stats = Rc::new(RefCell::new(Stats::new()));
    let config = &shared.config;
    let watchdog = Watchdog::spawn(watch_period(config.timeout));
    let mut tasks = Vec::new();
    for connection in (thread..config.connections).step_by(config.threads) {
        let (shared, stats, watchdog) = (shared.clone(), stats.clone(), watchdog.clone());
        tasks.push(tokio::task::spawn_local(async move {
            connection_main(shared, connection, stats, watchdog).await
        }));
    }
    for task in tasks {
        task.await.expect("a connection task panicked");
    }
    Rc::try_unwrap(stats)
        .ok()
        .expect("every connection finished")
        .into_inner()
}

/// What a request came to.
enum Outcome {
    Ok {
        bytes: u64,
        sent: Instant,
        first_byte: Option<Instant>,
        verified: bool,
    },
    Failed {
        kind: String,
        message: String,
    },
}

fn failed(kind: &str, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        kind: kind.to_string(),
        message: message.into(),
    }
}

impl From<HttpError> for Outcome {
    fn from(error: HttpError) -> Self {
        failed(error.kind(), error.to_string())
    }
}

/// Per connection: its target, its random stream and the buffers it reuses.
struct Connection<'a> {
    shared: &'a Shared,
    index: usize,
    target: &'a Target,
    client: Client,
    rng: StdRng,
    keys: KeyChooser,
    head: Vec<u8>,
    collected: Vec<u8>,
    stores: u64,
}

async fn connection_main(
    shared: Arc<Shared>,
    index: usize,
    stats: Rc<RefCell<Stats>>,
    watchdog: Watchdog,
) {
    let config = &shared.config;
    let target_index = index % config.targets.len();
    let target = &config.targets[target_index];
    let mut connection = Connection {
        shared: &shared,
        index,
        target,
        client: Client::new(target.addr, config.timeout, &watchdog),
        rng: StdRng::seed_from_u64(
            config.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ),
        keys: KeyChooser::new(config.popularity, config.blobs.len() as u64),
        head: Vec::with_capacity(512),
        collected: Vec::new(),
        stores: 0,
    };
    let measure_start = shared.start + config.warmup;
    let end = measure_start + config.duration;
    connection.client.meter = Some(Meter::new(
        measure_start,
        end,
        shared.live.as_ref().map(|live| live.bytes.clone()),
    ));
    // Open loop: this connection's share of the rate, its first send staggered so that the
    // connections together send evenly.
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(config.connections as f64 / rate));
    let mut next = shared.start
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / config.connections as f64)
        });
    let mut now = Instant::now();
    let mut last_done = shared.start;
    if now < shared.start {
        tokio::time::sleep(shared.start - now).await;
        now = Instant::now();
    }
    loop {
        // A closed loop's next request is due now (the last answer's arrival: one clock
        // read less per request); an open loop's when its schedule says.
        let intended = match interval {
            Some(interval) => {
                let at = next;
                next += interval;
                at
            }
            None => now,
        };
        // The schedule ends with the duration, and so does an open loop that fell behind it.
        if intended >= end || now >= end {
            break;
        }
        // tokio's timer wakes on the millisecond tick after its deadline; aiming a tick early
        // keeps sends within about a millisecond of the schedule either way.
        if intended > now + TIMER_TICK {
            tokio::time::sleep_until((intended - TIMER_TICK).into()).await;
        }
        let measured = intended >= measure_start;
        if measured {
            if let Some(limit) = config.requests {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
            }
        }
        let op = config.mix.pick(&mut connection.rng);
        let outcome = connection.execute(op, target_index).await;
        let done = Instant::now();
        now = done;
        let previous_done = std::mem::replace(&mut last_done, done);
        let back_off = {
            let mut stats = stats.borrow_mut();
            if !measured {
                continue;
            }
            if done > end && config.requests.is_none() {
                stats.unfinished += 1;
                continue;
            }
            stats.last_done = stats.last_done.max(Some(done));
            match outcome {
                Outcome::Ok {
                    bytes,
                    sent,
                    first_byte,
                    verified,
                } => {
                    // Latency counts from when the request was due if the last answer on this
                    // connection came after that (the server kept it waiting: coordinated-omission
                    // correction), else from when it was sent: the timer that woke this connection
                    // has a millisecond's granularity, and its lateness is loadgen's, not the
                    // server's (it is reported apart as the send lag).
                    let from = if interval.is_some() && previous_done > intended {
                        intended
                    } else {
                        if interval.is_some() {
                            let _ = stats
                                .send_lag
                                .record(micros(sent.saturating_duration_since(intended)));
                        }
                        sent
                    };
                    let latency = micros(done - from);
                    let _ = stats.latency.record(latency);
                    let _ = stats.service.record(micros(done - sent));
                    if let Some(first) = first_byte {
                        let _ = stats.ttfb.record(micros(first - sent));
                    }
                    let second = (done - measure_start).as_secs() as usize;
                    if stats.seconds.len() <= second {
                        stats.seconds.resize(second + 1, (0, 0));
                    }
                    // Its bytes were counted as they moved, by the client's meter.
                    stats.seconds[second].0 += 1;
                    stats.ok += 1;
                    stats.bytes += bytes;
                    stats.verified += u64::from(verified);
                    let per_op = stats.op(op);
                    per_op.ok += 1;
                    per_op.bytes += bytes;
                    let _ = per_op.latency.record(latency);
                    if let Some(live) = &shared.live {
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    false
                }
                Outcome::Failed { kind, message } => {
                    *stats.errors.entry(kind.clone()).or_default() += 1;
                    stats.op(op).errors += 1;
                    if stats.error_sample.is_none() {
                        stats.error_sample = Some(format!("{} {}: {message}", op.name(), kind));
                    }
                    if let Some(live) = &shared.live {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // A closed loop would spin on a refused connection.
                    kind == "connect" && interval.is_none()
                }
            }
        };
        if back_off {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut stats = stats.borrow_mut();
    // Each connection adds the connections it opened, and the bytes it moved, when it ends.
    stats.connects += connection.client.connects;
    let moved = connection
        .client
        .meter
        .take()
        .map_or(Vec::new(), |m| m.seconds);
    if stats.seconds.len() < moved.len() {
        stats.seconds.resize(moved.len(), (0, 0));
    }
    for (second, bytes) in stats.seconds.iter_mut().zip(moved) {
        second.1 += bytes;
    }
}

impl Connection<'_> {
    async fn execute(&mut self, op: Op, target_index: usize) -> Outcome {
        match op {
            Op::Blob => self.read_blob(false, None).await,
            Op::Range => self.read_blob(true, None).await,
            Op::S3 => self.read_blob(false, Some(target_index)).await,
            Op::S3Range => self.read_blob(true, Some(target_index)).await,
            Op::Sliver => self.read_sliver(target_index).await,
            Op::Store => self.store().await,
            Op::Url => self.read_url().await,
        }
    }

    /// Reads an answer's body into `collected` (or past it if `keep` is false).
    async fn collect(&mut self, head: &Head, keep: bool) -> Result<(), HttpError> {
        self.collected.clear();
        let collected = &mut self.collected;
        self.client
            .body(head, |chunk| {
                if keep {
                    collected.extend_from_slice(chunk)
                }
            })
            .await
    }

    /// Reads an answer's body as an error: drains it, names the status.
    async fn unexpected(&mut self, head: &Head, expected: u16) -> Outcome {
        let mut text = Vec::new();
        let drained = self
            .client
            .body(head, |chunk| {
                if text.len() < 512 {
                    text.extend_from_slice(&chunk[..chunk.len().min(512 - text.len())]);
                }
            })
            .await;
        if let Err(error) = drained {
            return error.into();
        }
        failed(
            &format!("http_{}", head.status),
            format!(
                "expected {expected}, got {}: {}",
                head.status,
                String::from_utf8_lossy(&text).trim()
            ),
        )
    }

    /// Reads a manifest blob whole or a range of it: through floe's API, or (`s3`: the target's
    /// index) its S3 object.
    async fn read_blob(&mut self, range: bool, s3: Option<usize>) -> Outcome {
        let config = &self.shared.config;
        let index = self.keys.sample(&mut self.rng) as usize;
        let blob = &config.blobs[index];
        let path = match s3 {
            Some(target) => &self.shared.s3_paths[target][index],
            None => &blob.path,
        };
        let verify = self.rng.gen_bool(config.verify);
        // An empty blob has no range to ask for.
        let span = (range && blob.size > 0).then(|| {
            let len = config.range_size.sample(&mut self.rng).clamp(1, blob.size);
            let first = self.rng.gen_range(0..=blob.size - len);
            (first, first + len - 1)
        });
        let range_value;
        let extra: &[(&str, &str)] = match span {
            Some((first, last)) => {
                range_value = format!("bytes={first}-{last}");
                &[("Range", &range_value)]
            }
            None => &[],
        };
        request_head(&mut self.head, "GET", path, &self.target.host, extra, None);
        let (head, sent, first_byte) = match self.client.start(&self.head, None).await {
            Ok(answer) => answer,
            Err(error) => return error.into(),
        };
        let (expected_status, offset, len) = match span {
            Some((first, last)) => (206, first, last - first + 1),
            None => (200, 0, blob.size),
        };
        if head.status != expected_status {
            return self.unexpected(&head, expected_status).await;
        }
        let mut wrong = None;
        if head.content_length != len {
            wrong = Some(format!("{} bytes instead of {len}", head.content_length));
        } else if let Some((first, last)) = span {
            if head.content_range != Some((first, last, blob.size)) {
                wrong = Some(format!(
                    "Content-Range {:?} for bytes {first}-{last}/{}",
                    head.content_range, blob.size
                ));
            }
        }
        let mut hasher = (verify && span.is_none()).then(blake3::Hasher::new);
        let mut checker =
            (verify && span.is_some()).then(|| content::Checker::new(&blob.key, offset));
        let read = self
            .client
            .body(&head, |chunk| {
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(chunk);
                }
                if let Some(checker) = checker.as_mut() {
                    checker.update(chunk);
                }
            })
            .await;
        if let Err(error) = read {
            return error.into();
        }
        if wrong.is_none()
            && (hasher.is_some_and(|h| h.finalize() != blob.blake3)
                || checker.is_some_and(|c| c.mismatch))
        {
            wrong = Some("bytes differ from the manifest's".to_string());
        }
        match wrong {
            Some(what) => failed("verify", format!("{}: {what}", blob.id)),
            None => Outcome::Ok {
                bytes: head.content_length,
                sent,
                first_byte: Some(first_byte),
                verified: verify,
            },
        }
    }

    async fn read_sliver(&mut self, target_index: usize) -> Outcome {
        let config = &self.shared.config;
        let set = &self.shared.slivers[target_index];
        // Popularity over the blobs this target holds slivers of.
        let pick = if set.blobs.len() == config.blobs.len() {
            self.keys.sample(&mut self.rng) as usize
        } else {
            self.rng.gen_range(0..set.blobs.len())
        };
        let blob_index = set.blobs[pick.min(set.blobs.len() - 1)];
        let blob = &config.blobs[blob_index];
        let (metadata, pairs) = set.per_blob[blob_index]
            .as_ref()
            .expect("listed blobs have pairs");
        let pair = pairs[self.rng.gen_range(0..pairs.len())];
        let verify = self.rng.gen_bool(config.verify);
        let path = format!("{}/slivers/{pair}/primary", blob.path);
        request_head(&mut self.head, "GET", &path, &self.target.host, &[], None);
        let (head, sent, first_byte) = match self.client.start(&self.head, None).await {
            Ok(answer) => answer,
            Err(error) => return error.into(),
        };
        if head.status != 200 {
            return self.unexpected(&head, 200).await;
        }
        if let Err(error) = self.collect(&head, verify).await {
            return error.into();
        }
        if verify {
            let checked = decode_sliver(SliverKind::Primary, &self.collected)
                .map_err(|e| e.to_string())
                .and_then(|sliver| {
                    if sliver.index != pair {
                        return Err(format!("sliver index {} for pair {pair}", sliver.index));
                    }
                    sliver.verify(metadata).map_err(|e| e.to_string())
                });
            if let Err(what) = checked {
                return failed("verify", format!("{} pair {pair}: {what}", blob.id));
            }
        }
        Outcome::Ok {
            bytes: head.content_length,
            sent,
            first_byte: Some(first_byte),
            verified: verify,
        }
    }

    async fn store(&mut self) -> Outcome {
        let shared = self.shared;
        let config = &shared.config;
        let size = config.store_size.sample(&mut self.rng);
        let key = content::key(config.seed, &format!("store-{}", self.index), self.stores);
        self.stores += 1;
        // The body is generated as it is sent: a store of any size takes one chunk's memory.
        let mut content = content::Stream::new(&key, 0);
        let mut fill = |chunk: &mut [u8]| content.fill(chunk);
        store_head(
            &mut self.head,
            &self.target.host,
            config.store_epochs,
            config.token.as_deref(),
            size,
        );
        let upload = Upload {
            len: size,
            fill: &mut fill,
        };
        let (head, sent, _) = match self.client.start(&self.head, Some(upload)).await {
            Ok(answer) => answer,
            Err(error) => return error.into(),
        };
        if head.status != 200 {
            return self.unexpected(&head, 200).await;
        }
        if let Err(error) = self.collect(&head, true).await {
            return error.into();
        }
        // The answer must name a well-formed blob ID of the size sent; the bytes themselves
        // are checked when read back.
        if let Err(what) = stored_blob_id(&self.collected, size) {
            return failed("verify", format!("store of {size} bytes: {what}"));
        }
        Outcome::Ok {
            bytes: size,
            sent,
            first_byte: None,
            verified: true,
        }
    }

    async fn read_url(&mut self) -> Outcome {
        request_head(
            &mut self.head,
            "GET",
            &self.target.path,
            &self.target.host,
            &[],
            None,
        );
        let (head, sent, first_byte) = match self.client.start(&self.head, None).await {
            Ok(answer) => answer,
            Err(error) => return error.into(),
        };
        if !(200..300).contains(&head.status) {
            return self.unexpected(&head, 200).await;
        }
        if let Err(error) = self.client.body(&head, |_| {}).await {
            return error.into();
        }
        Outcome::Ok {
            bytes: head.content_length,
            sent,
            first_byte: Some(first_byte),
            verified: false,
        }
    }
}
