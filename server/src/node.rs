//! Starting and stopping a node: checks before anything starts, one glommio executor per
//! core, and a two-phase graceful shutdown.
//!
//! Startup checks the configuration, the committee, the locked-memory limit, each data
//! directory and the listen address, and fails with the fix in the message. Then each core
//! opens its stores (`DATA_DIR/core-C-of-N`), starts its owner task, binds the listen address
//! with `SO_REUSEPORT` (the kernel spreads connections over cores) and serves.
//!
//! Shutdown (SIGTERM/SIGINT): phase 1, every core stops accepting and lets in-flight requests
//! finish (hyper's graceful shutdown) within the grace period; phase 2, once every core is
//! drained, the owners stop. Every acknowledged write was durable before it was acknowledged,
//! so nothing needs flushing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;
use tracing::{debug, info, warn};

use floe_storage::disks::Disks;
use floe_storage::glommio_dir::GlommioDir;
use floe_storage::store::StoreOptions;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::owner::{run_maintenance, run_owner, Owners};
use crate::serve::{Api, Stopping};
use crate::state::{CoreState, Shared};

/// Why a node could not start or stopped with an error.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct NodeError(pub String);

impl From<crate::config::ConfigError> for NodeError {
    fn from(err: crate::config::ConfigError) -> Self {
        Self(err.to_string())
    }
}

/// What a started node reports once every core serves.
#[derive(Clone, Debug)]
pub struct Ready {
    pub address: SocketAddr,
    /// Where the S3 API listens, when it is on.
    pub s3_address: Option<SocketAddr>,
    pub cores: usize,
    pub name: String,
    pub n_shards: u16,
    pub shards_owned: usize,
    pub data_dirs: Vec<PathBuf>,
}

enum Event {
    Ready {
        address: SocketAddr,
        s3: Option<SocketAddr>,
    },
    Failed(String),
    Drained,
    Signal(i32),
}

/// Runs a node until SIGTERM or SIGINT; `on_ready` is called once every core serves.
pub fn run(mut config: NodeConfig, on_ready: impl FnOnce(&Ready)) -> Result<(), NodeError> {
    config.apply_env();
    config.validate()?;
    let (seen, cursor) = if config.etcd_endpoints.is_empty() {
        (None, None)
    } else {
        let cursor = open_cursor(&config)?;
        let seen = match crate::control::committee_from_etcd(&config) {
            Ok(found) => found,
            // Restarted while etcd is down: the committee it last saw, so reads go on.
            Err(err) => match crate::control::saved_view(&cursor) {
                Some(seen) => {
                    warn!(%err, epoch = seen.epoch, "etcd does not answer: starting with the committee this node saw last; writes answer 503 until etcd is back");
                    seen
                }
                None => return Err(err.into()),
            },
        };
        let committee = &seen.committee;
        let giving = seen.moves.values().any(|m| m.from.name == config.name);
        if committee.member(&config.name).is_none() && !giving {
            let names: Vec<&str> = committee.members.iter().map(|m| m.name.as_str()).collect();
            return Err(NodeError(format!(
                "this node's name {:?} is not in the committee in etcd (members: {}); set \
                 `name` in node.toml or --name",
                config.name,
                names.join(", ")
            )));
        }
        (Some(seen), Some(Arc::new(cursor)))
    };
    let committee = match &seen {
        Some(seen) => seen.committee.clone(),
        None => config.committee()?,
    };
    if committee.members.len() > 1 && config.cluster_secret.is_none() {
        warn!(
            "peers are not authenticated: set the same `cluster_secret` (or FLOE_CLUSTER_SECRET) \
             on every node, so that only members store slivers and pull shards here"
        );
    }
    let view = match seen {
        Some(seen) => seen.view(&config.name),
        None => crate::control::View::new(committee.clone(), &config.name, None),
    };
    let me = view.me.clone();
    let cores = config.core_count();
    check_memlock(cores, config.io_memory_bytes)?;
    let mut working = Vec::new();
    let mut failed = None;
    for dir in &config.data_dirs {
        match prepare_data_dir(dir, cores) {
            Ok(()) => working.push(dir.clone()),
            // A failed disk among several: the node starts without it (`floe_storage::disks`).
            Err(DirProblem::DeviceFailed(err)) if config.data_dirs.len() > 1 => {
                warn!("{err}; the node starts without it: its shards are served from the other data directories and healed there");
                failed = Some(err);
            }
            Err(DirProblem::DeviceFailed(err) | DirProblem::Unusable(err)) => return Err(err),
        }
    }
    let Some(first_working) = working.first() else {
        return Err(failed.expect("a directory failed"));
    };
    // The spool and the cache default to the first data directory: the first that works.
    if config.spool_dir.is_none() {
        config.spool_dir = Some(first_working.join("spool"));
    }
    if config.cache_dir.is_none() {
        config.cache_dir = Some(first_working.clone());
    }
    let address = probe_listen(config.listen_addr()?)?;
    let s3_address = match config.s3_listen_addr()? {
        Some(s3) => Some(probe_listen(s3)?),
        None => None,
    };
    let s3 = match s3_address {
        // On etcd, the namespace is the cluster's (blobs are not released there).
        Some(_) if !config.etcd_endpoints.is_empty() => {
            let namespace = floe_control::namespace::EtcdNamespace::new(
                &config.etcd_endpoints,
                &config.etcd_prefix,
            )
            .map_err(|e| NodeError(format!("starting the S3 namespace's etcd client: {e}")))?;
            Some(Arc::new(crate::s3::S3::new(
                config.s3.clone(),
                crate::s3::Names::Etcd(Box::new(namespace)),
                false,
            )))
        }
        Some(_) => {
            let dir = config
                .data_dirs
                .first()
                .expect("validate() checked there is one");
            let path = dir.join("namespace.redb");
            let namespace = floe_storage::namespace::Namespace::open(&path).map_err(|e| {
                NodeError(format!(
                    "the S3 namespace {} cannot be opened ({e}). Fix: make the data directory \
                     writable, or move a damaged file aside",
                    path.display()
                ))
            })?;
            Some(Arc::new(crate::s3::S3::new(
                config.s3.clone(),
                crate::s3::Names::Local(namespace),
                committee.members.len() == 1,
            )))
        }
        None => None,
    };
    let spool_dir = config.spool_dir();
    match crate::spool::clean(&spool_dir) {
        Ok(0) => {}
        Ok(removed) => {
            info!(dir = %spool_dir.display(), removed, "removed the spool files of uploads an earlier run did not finish")
        }
        Err(err) => {
            return Err(NodeError(format!(
                "the spool directory {} is not usable ({err}). Fix: make it writable, or choose \
                 another with `spool_dir` in node.toml",
                spool_dir.display()
            )))
        }
    }
    let properties = crate::io_plan::load(&config).map_err(NodeError)?;
    let io = crate::io_plan::plan(&config, properties.as_ref());
    for plan in &io {
        info!(
            dir = %plan.dir.display(),
            source = %plan.source,
            scrub_bytes_per_second = plan.scrub_bytes_per_second,
            commit_bytes_max = plan.commit_bytes_max,
            "I/O plan"
        );
    }

    start_rayon(cores);
    let (metrics, registry) = Metrics::new();
    let metrics = Arc::new(metrics);
    let (owners, queues) = Owners::new(cores);
    metrics.epoch.set(i64::from(view.epoch()));
    let view = Arc::new(crate::control::ViewCell::from_pointee(view));
    let control = match cursor {
        Some(cursor) => Some(
            crate::control::ControlPlane::start(
                &config,
                &config.name,
                view.clone(),
                cursor,
                metrics.clone(),
            )
            .map_err(|e| NodeError(format!("starting the control plane's thread: {e}")))?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        view,
        n_shards: committee.n_shards,
        control,
        owners,
        metrics,
        registry,
        io,
        sync: Default::default(),
        changes: Default::default(),
        spool_dir,
        spool: Default::default(),
        s3,
        retired: Arc::new(crate::owner::RetiredDirs::new(config.data_dirs.len())),
    });

    let (events, events_rx) = std_mpsc::channel::<Event>();
    let mut stops = Vec::new();
    let mut finishes = Vec::new();
    let mut threads = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Core 0 binds first, so that a port of 0 becomes one port that every core shares.
    let mut bound = address;
    let mut s3_bound = s3_address;
    for (core, queue) in queues.into_iter().enumerate() {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (finish, finish_rx) = oneshot::channel::<()>();
        stops.push(stop);
        finishes.push(finish);
        let placement = if config.pin_cores {
            Placement::Fixed(core % cpus)
        } else {
            Placement::Unbound
        };
        let shared = shared.clone();
        let events = events.clone();
        let thread = LocalExecutorBuilder::new(placement)
            .name(&format!("floe-core-{core}"))
            .io_memory(config.io_memory_bytes)
            .spawn(move || async move {
                core_main(
                    shared,
                    core,
                    (bound, s3_bound),
                    queue,
                    stop_rx,
                    finish_rx,
                    events,
                )
                .await
            })
            .map_err(|e| NodeError(format!("starting the executor of core {core}: {e}")))?;
        threads.push(thread);
        // Wait for this core before starting the next: its port is theirs.
        match events_rx.recv() {
            Ok(Event::Ready { address, s3 }) => {
                bound = address;
                s3_bound = s3;
            }
            Ok(Event::Failed(message)) => {
                stop_all(stops, finishes);
                join_all(threads);
                return Err(NodeError(message));
            }
            _ => unreachable!("a starting core reports ready or failed first"),
        }
    }

    let signal_events = events.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| NodeError(format!("installing signal handlers: {e}")))?;
    let signal_handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = signal_events.send(Event::Signal(signal));
        }
    });

    on_ready(&Ready {
        address: bound,
        s3_address: s3_bound,
        cores,
        name: me.name.clone(),
        n_shards: committee.n_shards,
        shards_owned: me.shards.len(),
        data_dirs: config.data_dirs.clone(),
    });

    let mut failure = None;
    match events_rx.recv() {
        Ok(Event::Signal(signal)) => info!(
            signal,
            "shutting down: no new connections, finishing requests"
        ),
        Ok(Event::Failed(message)) => failure = Some(message),
        _ => failure = Some("a core stopped unexpectedly".into()),
    }
    signal_handle.close();
    let started = Instant::now();
    for stop in stops {
        let _ = stop.send(());
    }
    let mut drained = 0;
    while drained < cores {
        match events_rx.recv() {
            Ok(Event::Drained) => drained += 1,
            Ok(Event::Failed(message)) => {
                failure.get_or_insert(message);
                drained += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    for finish in finishes {
        let _ = finish.send(());
    }
    join_all(threads);
    if let Some(control) = &shared.control {
        control.stop();
    }
    info!(seconds = started.elapsed().as_secs_f64(), "stopped");
    match failure {
        Some(message) => Err(NodeError(message)),
        None => Ok(()),
    }
}

/// Starts the codec's rayon pool (encoding, verifying peer slivers) from this unpinned thread,
/// before any executor is pinned. Why: rayon starts its pool on first use, and threads inherit
/// the CPU affinity of the thread that starts them: started from a pinned executor's blocking
/// pool, every rayon thread ran on that one CPU (measured: a 1.2 GB PUT encoded on one of two
/// cores).
fn start_rayon(cores: usize) {
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(cores)
        .thread_name(|i| format!("floe-rayon-{i}"))
        .build_global();
    if let Err(err) = built {
        // Already started (several nodes in one process, as in tests): keep that one.
        debug!(%err, "the rayon pool was started before");
    }
}

fn stop_all(stops: Vec<oneshot::Sender<()>>, finishes: Vec<oneshot::Sender<()>>) {
    for stop in stops {
        let _ = stop.send(());
    }
    for finish in finishes {
        let _ = finish.send(());
    }
}

fn join_all(threads: Vec<glommio::ExecutorJoinHandle<()>>) {
    for thread in threads {
        if thread.join().is_err() {
            warn!("an executor thread panicked");
        }
    }
}

/// The locked-memory limit must cover glommio's registered I/O memory on every core.
fn check_memlock(cores: usize, io_memory: usize) -> Result<(), NodeError> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    let Some(current) = limit.current else {
        return Ok(()); // unlimited
    };
    // glommio also locks a little for its rings; leave a quarter of a MiB per core for that.
    let needed = cores as u64 * (io_memory as u64 + (256 << 10));
    if current < needed {
        return Err(NodeError(format!(
            "the locked-memory limit (ulimit -l) is {} KiB, but {cores} cores x io_memory_bytes \
             {} KiB need {} KiB. Fix: raise it (`ulimit -l unlimited` as root, or \
             LimitMEMLOCK=infinity in the systemd unit), or lower `cores` or `io_memory_bytes` \
             in node.toml",
            current / 1024,
            io_memory / 1024,
            needed / 1024
        )));
    }
    Ok(())
}

/// The per-core directory of a data directory.
pub fn core_dir(data_dir: &Path, core: usize, cores: usize) -> PathBuf {
    data_dir.join(format!("core-{core}-of-{cores}"))
}

/// Creates the data directory, checks it is writable, and that it was not written by a node
/// with another number of cores (shards would be looked up on the wrong core).
/// The node's place in the registry (`control.redb` in the first data directory).
fn open_cursor(config: &NodeConfig) -> Result<floe_storage::cursor::Cursor, NodeError> {
    let dir = config
        .data_dirs
        .first()
        .expect("validate() checked there is one");
    let path = dir.join("control.redb");
    std::fs::create_dir_all(dir)
        .map_err(|e| NodeError(format!("creating {}: {e}", dir.display())))?;
    floe_storage::cursor::Cursor::open(&path).map_err(|e| {
        NodeError(format!(
            "{} cannot be opened ({e}). Fix: make the data directory writable, or move a \
             damaged file aside (the node then reads the whole registry again)",
            path.display()
        ))
    })
}

/// Why a data directory cannot be used.
enum DirProblem {
    /// Its device failed (`EIO`, read-only after errors, gone).
    DeviceFailed(NodeError),
    /// Anything else: permissions, another node's layout.
    Unusable(NodeError),
}

fn prepare_data_dir(dir: &Path, cores: usize) -> Result<(), DirProblem> {
    let fail = |what: &str, err: std::io::Error| {
        const EIO: i32 = 5;
        const ENXIO: i32 = 6;
        const ENODEV: i32 = 19;
        const EROFS: i32 = 30;
        const EUCLEAN: i32 = 117;
        let device = matches!(
            err.raw_os_error(),
            Some(EIO | ENXIO | ENODEV | EROFS | EUCLEAN)
        );
        if device {
            DirProblem::DeviceFailed(NodeError(format!(
                "data directory {}'s device failed ({what}: {err}). Fix: replace the disk and \
                 mount an empty file system at the same path",
                dir.display()
            )))
        } else {
            DirProblem::Unusable(NodeError(format!(
                "data directory {} is not usable ({what}: {err}). Fix: create it and make it \
                 writable by this user, or choose another with --data-dir or `data_dirs` in \
                 node.toml",
                dir.display()
            )))
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("creating it", e))?;
    let probe = dir.join(".floe-write-test");
    std::fs::write(&probe, b"floe").map_err(|e| fail("writing a file in it", e))?;
    std::fs::remove_file(&probe).map_err(|e| fail("removing a file from it", e))?;
    let entries = std::fs::read_dir(dir).map_err(|e| fail("listing it", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("core-") else {
            continue;
        };
        let Some((_, of)) = rest.split_once("-of-") else {
            continue;
        };
        if of.parse::<usize>().ok() != Some(cores) {
            return Err(DirProblem::Unusable(NodeError(format!(
                "data directory {} was written by a node with {of} cores ({name}), this one \
                 runs {cores}: each core owns its shards' files. Fix: start with --cores {of} \
                 (or `cores = {of}` in node.toml)",
                dir.display()
            ))));
        }
    }
    Ok(())
}

/// Checks the listen address is free (a plain bind, without `SO_REUSEPORT`, so that another
/// process serving there is found rather than silently sharing the port), and resolves port 0.
fn probe_listen(address: SocketAddr) -> Result<SocketAddr, NodeError> {
    match std::net::TcpListener::bind(address) {
        Ok(listener) => listener
            .local_addr()
            .map_err(|e| NodeError(format!("reading the bound address: {e}"))),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(NodeError(format!(
            "{address} is already in use (another floe node?). Fix: stop that process, or \
             listen elsewhere with --listen or `listen` in node.toml"
        ))),
        Err(err) => Err(NodeError(format!(
            "cannot listen on {address}: {err}. Fix: use an address of this machine with \
             --listen or `listen` in node.toml"
        ))),
    }
}

/// Binds `address` for this core: `SO_REUSEPORT`, so that every core listens on the same port
/// and the kernel spreads connections over them, and `SO_REUSEADDR`, so that a restarted node
/// can bind again while connections of the last run are in TIME_WAIT (they inherit the flag).
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let family = if address.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let socket = rustix::net::socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    sockopt::set_socket_reuseport(&socket, true)?;
    rustix::net::bind(&socket, &address)?;
    rustix::net::listen(&socket, 1024)?;
    // SAFETY: a bound, listening TCP socket whose ownership moves into the listener.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

async fn core_main(
    shared: Arc<Shared>,
    core: usize,
    (address, s3_address): (SocketAddr, Option<SocketAddr>),
    queue: futures::channel::mpsc::Receiver<crate::owner::Op>,
    stop: oneshot::Receiver<()>,
    finish: oneshot::Receiver<()>,
    events: std_mpsc::Sender<Event>,
) {
    let config = &shared.config;
    let cores = shared.owners.cores();
    let mut dirs = Vec::new();
    for data_dir in &config.data_dirs {
        let path = core_dir(data_dir, core, cores);
        dirs.push(
            GlommioDir::open(&path)
                .await
                .map_err(|err| format!("opening {}: {err}", path.display())),
        );
    }
    let disks = match Disks::open_each(dirs, StoreOptions::default()).await {
        Ok((mut disks, opened)) => {
            // Before anything is served: metadata of blobs past their end epoch stays out, also
            // that a dropped tombstone no longer shadows; their slivers follow at the first
            // expiry sweep (`owner::run_maintenance`), which asks the metadata's home core.
            let epoch = shared.epoch();
            for (_, store) in disks.live_mut() {
                store.expire_metadata(epoch);
            }
            // Shards this node gave away (moves done): their records come back with the
            // index at open until reclaimed.
            if shared.control.is_some() {
                let forget = shared.view().unserved();
                disks.forget_shards(|s| forget.get(usize::from(s)) == Some(&true));
            }
            // Retired at open (it failed now or in an earlier run): published, so that the
            // other cores, health and the healer know.
            for (index, (dir, opened)) in config.data_dirs.iter().zip(opened).enumerate() {
                match opened {
                    floe_storage::disks::Opened::Serving(report) => info!(
                        core,
                        dir = %dir.display(),
                        records = report.records,
                        segments = report.segments,
                        corrupt_regions = report.corrupt_regions.len(),
                        torn_tail_bytes = report.torn_tail_bytes,
                        "store opened"
                    ),
                    floe_storage::disks::Opened::Replaced(_) => {
                        info!(
                            core,
                            dir = %dir.display(),
                            "a retired data directory was replaced by an empty one: its shards \
                             move back there and are healed"
                        );
                        shared.retired.want_heal();
                    }
                    floe_storage::disks::Opened::Retired(why) => {
                        tracing::error!(
                            core,
                            dir = %dir.display(),
                            why,
                            "data directory retired: its shards are served from the other data \
                             directories and healed there"
                        );
                        shared
                            .retired
                            .retire(index, &dir.display().to_string(), &shared.metrics);
                    }
                }
            }
            disks
        }
        Err(err) => {
            let _ = events.send(Event::Failed(format!(
                "core {core}: opening the stores: {err}"
            )));
            return;
        }
    };
    let commit_bytes_max = shared
        .io
        .iter()
        .map(|p| p.commit_bytes_max)
        .min()
        .unwrap_or(1 << 20);
    let scrubbers = config
        .data_dirs
        .iter()
        .zip(&shared.io)
        .map(|(data_dir, plan)| {
            crate::scrub::ScrubPacer::new(
                plan.scrub_bytes_per_second,
                Duration::from_secs(config.scrub_interval_seconds),
                Some(core_dir(data_dir, core, cores).join("scrub-pass.json")),
            )
        })
        .collect();
    let owner = glommio::spawn_local(run_owner(
        disks,
        queue,
        shared.metrics.clone(),
        shared.retired.clone(),
        config.data_dirs.clone(),
        commit_bytes_max,
        scrubbers,
    ));
    let view = shared.view.clone();
    let maintenance = glommio::spawn_local(run_maintenance(
        shared.owners.clone(),
        core,
        u32::try_from(config.reclaim_interval_seconds)
            .unwrap_or(u32::MAX)
            .max(1),
        move || view.load().epoch(),
        shared.metrics.clone(),
    ));
    let listener = match listen(address) {
        Ok(listener) => listener,
        Err(err) => {
            let _ = events.send(Event::Failed(format!(
                "core {core}: listening on {address}: {err}"
            )));
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(address);
    let s3_listener = match s3_address.map(listen) {
        None => None,
        Some(Ok(listener)) => Some(listener),
        Some(Err(err)) => {
            let _ = events.send(Event::Failed(format!(
                "core {core}: listening for S3 on {}: {err}",
                s3_address.expect("some")
            )));
            return;
        }
    };
    let s3_bound = s3_listener
        .as_ref()
        .map(|l| l.local_addr().unwrap_or_else(|_| s3_address.expect("some")));
    let _ = events.send(Event::Ready {
        address: bound,
        s3: s3_bound,
    });
    debug!(core, %bound, "serving");

    let state = Rc::new(CoreState::new(shared.clone(), core));
    // Sync runs on one core; it reaches the others through their owners.
    let sync = (core == 0).then(|| glommio::spawn_local(crate::sync::run(state.clone())));
    let stopping = Rc::new(Stopping::default());
    let gate = Rc::new(glommio::sync::Gate::new());
    // The S3 listener accepts until the node stops; its connections share the gate.
    let s3_accept = s3_listener.map(|listener| {
        let (state, stopping, gate) = (state.clone(), stopping.clone(), gate.clone());
        if core == 0 {
            // What an earlier run released and did not delete.
            let state = state.clone();
            crate::task::spawn_detached("s3_release_backlog", async move {
                if let Some(s3) = state.shared.s3.clone() {
                    s3.release_backlog(&state).await;
                }
            });
        }
        glommio::spawn_local(async move {
            loop {
                if stopping.flag.get() {
                    return;
                }
                let stopped = stopping.event.listen();
                match select(Box::pin(listener.accept()), stopped).await {
                    Either::Left((Ok(stream), _)) => {
                        let connection = crate::serve::connection(
                            state.clone(),
                            stream,
                            stopping.clone(),
                            Api::S3,
                        );
                        if let Ok(task) = gate.spawn(connection) {
                            task.detach();
                        }
                    }
                    Either::Left((Err(err), _)) => {
                        warn!(core, %err, "S3 accept failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    Either::Right(_) => return,
                }
            }
        })
    });
    let mut stop = stop;
    loop {
        match select(Box::pin(listener.accept()), &mut stop).await {
            Either::Left((Ok(stream), _)) => {
                let connection =
                    crate::serve::connection(state.clone(), stream, stopping.clone(), Api::Floe);
                // A dropped glommio task is cancelled: detach it; the gate still waits for it.
                if let Ok(task) = gate.spawn(connection) {
                    task.detach();
                }
            }
            Either::Left((Err(err), _)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(core, %err, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Either::Right(_) => break,
        }
    }
    drop(listener);
    stopping.flag.set(true);
    stopping.event.notify(usize::MAX);
    if let Some(task) = s3_accept {
        task.await;
    }
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    if glommio::timer::timeout(grace, async {
        let _ = gate.close().await;
        Ok(())
    })
    .await
    .is_err()
    {
        warn!(
            core,
            "connections still open after the grace period; closing them"
        );
    }
    drop(sync);
    let _ = events.send(Event::Drained);
    let _ = finish.await;
    drop(state);
    // The owner ends once no sender is left; `Shared` holds them, so close the queue.
    shared.owners.close(core);
    owner.await;
    drop(maintenance);
}
