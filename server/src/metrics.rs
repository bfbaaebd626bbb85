//! The node's Prometheus metrics (`GET /metrics`).
//!
//! One registry for the whole node; every metric is a set of atomics, so each core updates
//! them without a lock or a cross-core message. Names follow `api.md`: counters end in
//! `_total`, sizes in `_bytes`, durations are seconds, and no label holds a blob ID (label
//! values come from small fixed sets: routes, statuses, cores, data directories).

use std::path::Path;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoreLabel {
    pub core: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabel {
    pub dir: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A peer that failed a request (`unreachable`) or sent something that failed verification
/// (`bad_metadata`, `bad_sliver`, `bad_symbol`). Peers are the committee's few named nodes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerFault {
    pub peer: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 us to ~26 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

/// Every metric of a node.
pub struct Metrics {
    pub requests: Family<RouteStatus, Counter>,
    pub request_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub in_flight: Family<CoreLabel, Gauge>,
    pub connections: Family<CoreLabel, Gauge>,
    /// Requests or connections turned away by a limit, by which limit.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Metadata or slivers that failed verification on PUT.
    pub verification_failures: Family<ReasonLabel, Counter>,
    pub disk_used_bytes: Family<DirLabel, Gauge>,
    pub disk_free_bytes: Family<DirLabel, Gauge>,
    pub disk_io_errors: Family<DirLabel, Counter>,
    /// Cores whose last commit to the directory failed (no success since).
    pub disk_failing_cores: Family<DirLabel, Gauge>,
    /// 1 once a data directory is retired (its device failed; its shards moved to the other
    /// directories, `owner::RetiredDirs`).
    pub disk_retired: Family<DirLabel, Gauge>,
    /// 1 while a data directory is healthy ([`disk_health`]), else 0; set at every render.
    pub disk_healthy: Family<DirLabel, Gauge>,
    pub corrupt_records: Family<DirLabel, Counter>,
    /// Mapped pages the device failed to deliver, turned into read errors
    /// (`floe_storage::fault`); brought up to date at every render.
    pub mapped_read_faults: Counter,
    /// Bytes of live records reclaiming copied forward, per data directory.
    pub reclaim_moved_bytes: Family<DirLabel, Counter>,
    /// Bytes of segment files reclaiming removed, per data directory.
    pub reclaim_freed_bytes: Family<DirLabel, Counter>,
    /// Storage operations a connection's core sent to another core.
    pub cross_core_hops: Counter,
    pub cross_core_hop_seconds: Histogram,
    /// Records written per group commit.
    pub records_per_commit: Histogram,
    pub peer_faults: Family<PeerFault, Counter>,
    /// Blobs whose metadata sync fetched from a peer.
    pub sync_blobs_learned: Counter,
    /// Known blobs whose later end epoch or permanence was learned from a peer.
    pub sync_blobs_updated: Counter,
    /// Blobs deleted on this node (by a user, a peer or sync).
    pub blobs_deleted: Counter,
    /// Stores to peers still under way after the publisher answered (it answers at the write
    /// quorum, see `publisher`).
    pub publish_background: Gauge,
    /// Request handlers that panicked (answered 500; a bug).
    pub handler_panics: Counter,
    /// Panics caught in detached tasks (`crate::task`); brought up to date at every render.
    pub task_panics: Counter,
    /// Blobs the S3 API deleted because their last name went.
    pub s3_blobs_deleted: Counter,
    /// Aggregator reads that asked more peers because the first were slow.
    pub hedged_reads: Counter,
    /// Whole-blob reads not cached because the blob is too large for the cache or the budget.
    pub blob_cache_skipped: Counter,
    /// Streamed reads that recovered a missing systematic sliver from recovery symbols.
    pub recovered_reads: Counter,
    /// Whole-blob reads answered from the blob cache.
    pub blob_cache_hits: Counter,
    /// Whole blobs gathered and verified into the blob cache.
    pub blob_cache_fills: Counter,
    /// Blobs whose metadata this node keeps (at the last sync).
    pub sync_blobs_known: Gauge,
    /// Slivers this node should hold but lacks (at the last sync).
    pub heal_missing_slivers: Gauge,
    /// Sliver rebuilds, by result (`ok`, `failed`).
    pub heal_slivers: Family<ResultLabel, Counter>,
    /// Bytes fetched from peers to rebuild slivers (recovery-symbol answers, whole bodies).
    pub heal_fetched_bytes: Counter,
    /// Bytes of slivers rebuilt.
    pub heal_rebuilt_bytes: Counter,
    /// 1 while the control plane (etcd) answers, 0 while it does not (nodes on etcd only).
    pub control_connected: Gauge,
    /// 1 while this node is the one that advances epochs.
    pub control_leader: Gauge,
    /// The current epoch as this node knows it.
    pub epoch: Gauge,
    /// The registry revision this node applied up to.
    pub registry_revision: Gauge,
    /// Registry records applied (events and full-read entries).
    pub registry_records: Counter,
    /// Full reads of the registry (first start, or etcd compacted past this node's revision).
    pub registry_full_reads: Counter,
    /// Blobs the registry named whose metadata no peer could give yet.
    pub registry_pending: Gauge,
    /// Bytes of slivers pulled from previous owners of shards moving here.
    pub migration_bytes: Counter,
    /// Shards this node gave away and dropped once their new owner had them.
    pub migration_dropped_shards: Counter,
}

impl Metrics {
    /// The metrics, registered in a new registry.
    pub fn new() -> (Self, Registry) {
        let metrics = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            in_flight: Family::default(),
            connections: Family::default(),
            rejected: Family::default(),
            verification_failures: Family::default(),
            disk_used_bytes: Family::default(),
            disk_free_bytes: Family::default(),
            disk_io_errors: Family::default(),
            disk_failing_cores: Family::default(),
            disk_retired: Family::default(),
            disk_healthy: Family::default(),
            corrupt_records: Family::default(),
            mapped_read_faults: Counter::default(),
            reclaim_moved_bytes: Family::default(),
            reclaim_freed_bytes: Family::default(),
            cross_core_hops: Counter::default(),
            cross_core_hop_seconds: latency_histogram(),
            records_per_commit: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            peer_faults: Family::default(),
            sync_blobs_learned: Counter::default(),
            sync_blobs_updated: Counter::default(),
            blobs_deleted: Counter::default(),
            publish_background: Gauge::default(),
            s3_blobs_deleted: Counter::default(),
            handler_panics: Counter::default(),
            task_panics: Counter::default(),
            hedged_reads: Counter::default(),
            blob_cache_skipped: Counter::default(),
            recovered_reads: Counter::default(),
            blob_cache_hits: Counter::default(),
            blob_cache_fills: Counter::default(),
            sync_blobs_known: Gauge::default(),
            heal_missing_slivers: Gauge::default(),
            heal_slivers: Family::default(),
            heal_fetched_bytes: Counter::default(),
            heal_rebuilt_bytes: Counter::default(),
            control_connected: Gauge::default(),
            control_leader: Gauge::default(),
            epoch: Gauge::default(),
            registry_revision: Gauge::default(),
            registry_records: Counter::default(),
            registry_full_reads: Counter::default(),
            registry_pending: Gauge::default(),
            migration_bytes: Counter::default(),
            migration_dropped_shards: Counter::default(),
        };
        let mut registry = Registry::with_prefix("floe");
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from request head to response head, by route",
            Unit::Seconds,
            metrics.request_seconds.clone(),
        );
        r.register_with_unit(
            "http_received",
            "Request body bytes received",
            Unit::Bytes,
            metrics.received_bytes.clone(),
        );
        r.register_with_unit(
            "http_sent",
            "Response body bytes sent",
            Unit::Bytes,
            metrics.sent_bytes.clone(),
        );
        r.register(
            "peer_faults",
            "Requests to peers that failed, and answers that failed verification, by peer",
            metrics.peer_faults.clone(),
        );
        r.register(
            "control_connected",
            "1 while the control plane (etcd) answers this node",
            metrics.control_connected.clone(),
        );
        r.register(
            "control_leader",
            "1 while this node advances the epochs",
            metrics.control_leader.clone(),
        );
        r.register(
            "epoch",
            "The current epoch as this node knows it",
            metrics.epoch.clone(),
        );
        r.register(
            "registry_revision",
            "The etcd revision of the blob registry this node applied up to",
            metrics.registry_revision.clone(),
        );
        r.register(
            "registry_records",
            "Blob registry records applied (watched events and full-read entries)",
            metrics.registry_records.clone(),
        );
        r.register(
            "registry_full_reads",
            "Full paged reads of the blob registry (first start, or history compacted past this node)",
            metrics.registry_full_reads.clone(),
        );
        r.register(
            "registry_pending",
            "Blobs the registry names whose metadata no peer could give yet",
            metrics.registry_pending.clone(),
        );
        r.register_with_unit(
            "migration_pulled",
            "Bytes of slivers pulled from the previous owners of shards moving here",
            Unit::Bytes,
            metrics.migration_bytes.clone(),
        );
        r.register(
            "migration_dropped_shards",
            "Shards this node gave away and dropped once their new owner held them",
            metrics.migration_dropped_shards.clone(),
        );
        r.register(
            "sync_blobs_learned",
            "Blobs whose metadata was fetched from a peer by sync",
            metrics.sync_blobs_learned.clone(),
        );
        r.register(
            "sync_blobs_updated",
            "Known blobs whose later end epoch or permanence sync learned from a peer",
            metrics.sync_blobs_updated.clone(),
        );
        r.register(
            "blob_cache_hits",
            "Blob reads answered from the blob cache",
            metrics.blob_cache_hits.clone(),
        );
        r.register(
            "blob_cache_fills",
            "Whole blobs gathered, verified and put into the blob cache",
            metrics.blob_cache_fills.clone(),
        );
        r.register(
            "blobs_deleted",
            "Blobs deleted on this node (by a user, a peer, or learned by sync)",
            metrics.blobs_deleted.clone(),
        );
        r.register(
            "handler_panics",
            "Request handlers that panicked and were answered 500 (a bug; the log has it)",
            metrics.handler_panics.clone(),
        );
        r.register(
            "task_panics",
            "Panics caught in background tasks (a stream's producer, a store finishing after its answer); each is logged and the core goes on",
            metrics.task_panics.clone(),
        );
        r.register(
            "s3_blobs_deleted",
            "Blobs the S3 API deleted because no object or part names them any more",
            metrics.s3_blobs_deleted.clone(),
        );
        r.register(
            "publish_background_stores",
            "Stores to peers still under way after the publisher answered at the write quorum",
            metrics.publish_background.clone(),
        );
        r.register(
            "hedged_reads",
            "Reads that asked more peers because the first ones were slow",
            metrics.hedged_reads.clone(),
        );
        r.register(
            "blob_cache_skipped",
            "Whole-blob reads streamed instead of cached: the blob is larger than a quarter of the cache or of the buffer budget",
            metrics.blob_cache_skipped.clone(),
        );
        r.register(
            "recovered_reads",
            "Streamed reads that recovered a missing systematic sliver from recovery symbols",
            metrics.recovered_reads.clone(),
        );
        r.register(
            "sync_blobs_known",
            "Blobs whose metadata this node keeps, at the last sync",
            metrics.sync_blobs_known.clone(),
        );
        r.register(
            "heal_missing_slivers",
            "Slivers this node should hold but lacks, at the last sync",
            metrics.heal_missing_slivers.clone(),
        );
        r.register(
            "heal_slivers",
            "Slivers rebuilt from peers' recovery symbols, by result",
            metrics.heal_slivers.clone(),
        );
        r.register_with_unit(
            "heal_fetched",
            "Bytes fetched from peers to rebuild slivers",
            Unit::Bytes,
            metrics.heal_fetched_bytes.clone(),
        );
        r.register_with_unit(
            "heal_rebuilt",
            "Bytes of slivers rebuilt",
            Unit::Bytes,
            metrics.heal_rebuilt_bytes.clone(),
        );
        r.register(
            "http_in_flight_requests",
            "Requests being served, per core",
            metrics.in_flight.clone(),
        );
        r.register(
            "http_connections",
            "Open connections, per core",
            metrics.connections.clone(),
        );
        r.register(
            "http_rejected",
            "Requests or connections turned away by a limit",
            metrics.rejected.clone(),
        );
        r.register(
            "verification_failures",
            "Metadata or slivers refused because they failed verification",
            metrics.verification_failures.clone(),
        );
        r.register_with_unit(
            "disk_used",
            "Bytes of floe's files in each data directory",
            Unit::Bytes,
            metrics.disk_used_bytes.clone(),
        );
        r.register_with_unit(
            "disk_free",
            "Free bytes on each data directory's file system",
            Unit::Bytes,
            metrics.disk_free_bytes.clone(),
        );
        r.register(
            "reclaim_moved_bytes",
            "Bytes of live records reclaiming copied forward (its write amplification)",
            metrics.reclaim_moved_bytes.clone(),
        );
        r.register(
            "reclaim_freed_bytes",
            "Bytes of segment files reclaiming removed",
            metrics.reclaim_freed_bytes.clone(),
        );
        r.register(
            "disk_retired",
            "1 once a data directory is retired: its device failed, its shards moved to the other data directories and are healed there",
            metrics.disk_retired.clone(),
        );
        r.register(
            "disk_healthy",
            "1 while the data directory is present, writable, not full, and its last commit succeeded",
            metrics.disk_healthy.clone(),
        );
        r.register(
            "disk_io_errors",
            "Failed reads and commits, per data directory",
            metrics.disk_io_errors.clone(),
        );
        r.register(
            "mapped_read_faults",
            "Mapped pages the disk failed to deliver (SIGBUS turned into a read error; the record is healed)",
            metrics.mapped_read_faults.clone(),
        );
        r.register(
            "corrupt_records",
            "Records that failed their checksum on read (treated as missing), per data directory",
            metrics.corrupt_records.clone(),
        );
        r.register(
            "cross_core_hops",
            "Storage operations sent to the core that owns the shard",
            metrics.cross_core_hops.clone(),
        );
        r.register_with_unit(
            "cross_core_hop_duration",
            "Round trip of a storage operation sent to another core",
            Unit::Seconds,
            metrics.cross_core_hop_seconds.clone(),
        );
        r.register(
            "records_per_commit",
            "Records written per group commit",
            metrics.records_per_commit.clone(),
        );
        (metrics, registry)
    }

    /// Refreshes the per-directory space gauges (called on scrape).
    pub fn refresh_disks(&self, dirs: &[std::path::PathBuf]) {
        for dir in dirs {
            let label = DirLabel {
                dir: dir.display().to_string(),
            };
            if let Some((free, _total)) = fs_space(dir) {
                self.disk_free_bytes.get_or_create(&label).set(free as i64);
            }
            let healthy = self.disk_health(dir).is_ok();
            self.disk_healthy
                .get_or_create(&label)
                .set(i64::from(healthy));
            self.disk_used_bytes
                .get_or_create(&label)
                .set(dir_bytes(dir) as i64);
        }
    }
}

impl Metrics {
    /// Whether data directory `dir` can take writes now, or what is wrong with it: not retired,
    /// present,
    /// writable (a file system remounted read-only after errors fails here), not full, and the
    /// last commit of every core to it succeeded.
    pub fn disk_health(&self, dir: &Path) -> Result<(), &'static str> {
        let label = DirLabel {
            dir: dir.display().to_string(),
        };
        if self.disk_retired.get_or_create(&label).get() > 0 {
            return Err("retired");
        }
        match fs_space(dir) {
            None => return Err("missing"),
            Some((0, _)) => return Err("full"),
            Some(_) => {}
        }
        if let Err(errno) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
            return Err(match errno {
                rustix::io::Errno::ROFS => "read-only",
                rustix::io::Errno::NOENT => "missing",
                _ => "not writable",
            });
        }
        if self.disk_failing_cores.get_or_create(&label).get() > 0 {
            return Err("commits failing");
        }
        Ok(())
    }
}

/// Free and total bytes of the file system holding `path`.
pub fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some((stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize))
}

/// Bytes of the files under `path` (two levels: the per-core directories and their segments).
pub fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if let Ok(inner) = std::fs::read_dir(entry.path()) {
                total += inner
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum::<u64>();
            }
        } else {
            total += meta.len();
        }
    }
    total
}
