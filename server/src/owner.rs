//! Shard ownership across cores: each core owns the storage of some shards, and a task on that
//! core (the "owner") is the only thing that touches it.
//!
//! Shard `s` belongs to core `s % cores`; a blob's metadata to core `blob_id % cores` (its
//! "home"). A connection is served on whatever core accepted it; it verifies what it receives
//! itself (spreading the hashing over cores) and sends storage operations to the owning core as
//! an [`Op`] over a channel: the one explicit cross-core hop, counted and timed in `/metrics`.
//! An owner drains every operation waiting in its queue before writing, so the slivers of many
//! concurrent requests become one durable commit (group commit).

use std::sync::Arc;
use std::time::Instant;

use floe_storage::device::Dir;
use floe_storage::disks::Disks;
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::store::{Key, Put, StoreError};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{DirLabel, Metrics};
use crate::scrub::ScrubPacer;

/// One record to store (a sliver: metadata goes through [`Op::PutMetadata`]).
pub struct Record {
    pub key: Key,
    pub end_epoch: u32,
    pub data: bytes::Bytes,
}

/// A stored record. `end_epoch` and `flags` are a metadata record's (what its readers need);
/// a sliver's read leaves them 0, sparing the hot path a second index lookup.
pub struct Found {
    pub data: bytes::Bytes,
    pub end_epoch: u32,
    /// [`FLAG_DELETABLE`] on a deletable blob's metadata.
    pub flags: u8,
}

/// What [`Op::PutMetadata`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataStored {
    /// Stored (or already stored so): the blob's end epoch and whether it is deletable, after
    /// merging with what was stored before; `changed` when an earlier record was replaced
    /// (a later end epoch, or made permanent).
    Stored {
        end_epoch: u32,
        deletable: bool,
        changed: bool,
    },
    /// Refused: a deletable store of a blob deleted until `end_epoch`.
    Deleted { end_epoch: u32 },
}

/// What [`Op::Delete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Deleted now, its tombstone kept until `end_epoch`.
    Now { end_epoch: u32 },
    /// It had been deleted before.
    Before { end_epoch: u32 },
    /// The blob is permanent here: nothing was deleted.
    Permanent,
    /// Neither stored nor deleted here, and no end epoch was given to remember a deletion by.
    Unknown,
}

/// How a blob stands on a node: the order is that of a merge (sync keeps the greater of two
/// nodes' states), so that every node ends in the same state whatever order it learns in:
/// a deletion overrides a deletable store, a permanent store overrides a deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlobState {
    Deletable,
    Deleted,
    Permanent,
}

/// One entry of a blob listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub blob_id: [u8; 32],
    pub end_epoch: u32,
    pub state: BlobState,
}

/// A storage failure, as sent back to the requesting core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageFailure {
    /// The disk is full; what was stored before stays readable.
    NoSpace,
    /// The record failed its checksum: treated as missing.
    Corrupt,
    /// Anything else, with the store's message.
    Other(String),
}

impl From<StoreError> for StorageFailure {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NoSpace { .. } => Self::NoSpace,
            StoreError::Corrupt { .. } => Self::Corrupt,
            other => Self::Other(other.to_string()),
        }
    }
}

/// What a record key holds for a blob, as listed by [`Op::Keys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub kind: RecordKind,
    pub shard: u16,
    pub end_epoch: u32,
    pub flags: u8,
}

/// A record, `None` if absent.
pub type GetResult = Result<Option<Found>, StorageFailure>;

/// An operation for the core that owns the data.
pub enum Op {
    /// Store records durably (all of them, or report failure).
    Put {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<(), StorageFailure>>,
    },
    /// Read a record: a shared view of the mapped segment (no copy; `Bytes` is `Send`).
    Get {
        key: Key,
        reply: oneshot::Sender<GetResult>,
    },
    /// Store a blob's metadata record on its home core, merged with what is stored: the later
    /// end epoch, deletable only if both were; a deletable store of a deleted blob is refused.
    PutMetadata {
        blob_id: [u8; 32],
        data: bytes::Bytes,
        end_epoch: u32,
        deletable: bool,
        /// Store even if the blob was deleted here (a later record supersedes the deletion):
        /// an S3 object naming the bytes of a blob released before.
        revive: bool,
        reply: oneshot::Sender<Result<MetadataStored, StorageFailure>>,
    },
    /// Delete a blob's records on this core, with a tombstone kept until the later of
    /// `end_epoch` and the stored end epoch. With `decide` (the blob's home core): refused if
    /// the metadata says permanent, and [`Deleted::Unknown`] (nothing written) if neither
    /// metadata nor tombstone is here and `end_epoch` is 0. Without: unconditional (the
    /// other cores, after the home core decided).
    Delete {
        blob_id: [u8; 32],
        end_epoch: u32,
        decide: bool,
        reply: oneshot::Sender<Result<Deleted, StorageFailure>>,
    },
    /// The end epoch of the blob's deletion, if it is deleted here.
    IsDeleted {
        blob_id: [u8; 32],
        reply: oneshot::Sender<Option<u32>>,
    },
    /// Drop the shards this node no longer serves (`forget[s]`) from this core's index (their
    /// records are reclaimed).
    ForgetShards {
        forget: Vec<bool>,
        reply: oneshot::Sender<usize>,
    },
    /// List the records this core holds for a blob.
    Keys {
        blob_id: [u8; 32],
        reply: oneshot::Sender<Vec<Held>>,
    },
    /// Blobs whose metadata or deletion this core keeps, after `after` in blob ID order (at
    /// most `limit`). Every core remembers deletions (tombstones shadow its slivers); only
    /// the blob's home core's entry counts.
    ListMetadata {
        after: Option<[u8; 32]>,
        limit: usize,
        /// This core and the core count, to tell its home blobs.
        core: usize,
        cores: usize,
        reply: oneshot::Sender<Vec<Listed>>,
    },
    /// Of `blobs` and this core's `shards`, the slivers this core lacks: (blob, shard, kind).
    Missing {
        blobs: Vec<[u8; 32]>,
        shards: Vec<u16>,
        reply: oneshot::Sender<Vec<([u8; 32], u16, RecordKind)>>,
    },
    /// Background upkeep, sent by the core's maintenance timer every second: the scrubber's
    /// pacing decides what it may check in the coming second (see [`ScrubPacer`]).
    Maintain,
    /// Drops metadata and tombstones that expired before `epoch`, and lists the blobs with
    /// slivers on this core whose own end epoch passed: they expire only if their blob's
    /// metadata did (a lifetime may have been extended since they were stored); see
    /// [`run_maintenance`].
    ExpireMetadata {
        epoch: u32,
        reply: oneshot::Sender<Vec<[u8; 32]>>,
    },
    /// The end epoch of each blob's metadata on this (its home) core, `None` where there is none.
    EndEpochs {
        blobs: Vec<[u8; 32]>,
        reply: oneshot::Sender<Vec<Option<u32>>>,
    },
    /// Gives the slivers of `extend` their blob's later end epoch, drops those of `expire`, and
    /// starts reclaiming.
    SettleSlivers {
        extend: Vec<([u8; 32], u32)>,
        expire: Vec<[u8; 32]>,
    },
}

/// A sealed segment is rewritten once at most this fraction of it is live. Why: a freed byte
/// then costs at most one byte of copying, and the disk holds at most twice the live data.
pub const RECLAIM_LIVE_FRACTION_MAX: f64 = 0.5;

/// Senders to every core's owner, indexed by core. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct Owners {
    senders: Vec<mpsc::Sender<Op>>,
}

/// The owner's queue length. Why: bounded so that a burst waits for capacity rather than
/// growing memory; each core's in-flight limit keeps it from filling in practice.
pub const QUEUE_LEN: usize = 1024;

impl Owners {
    /// Channels for `cores` owners: the senders, and each core's receiver.
    pub fn new(cores: usize) -> (Self, Vec<mpsc::Receiver<Op>>) {
        let (senders, receivers) = (0..cores).map(|_| mpsc::channel(QUEUE_LEN)).unzip();
        (Self { senders }, receivers)
    }

    /// Closes `core`'s queue: its owner finishes what is queued, then ends.
    pub fn close(&self, core: usize) {
        self.senders[core].clone().close_channel();
    }

    pub fn cores(&self) -> usize {
        self.senders.len()
    }

    /// The core that owns `shard`'s slivers.
    pub fn core_of_shard(&self, shard: u16) -> usize {
        usize::from(shard) % self.senders.len()
    }

    /// The core that keeps a blob's metadata.
    pub fn home_of(&self, blob_id: &[u8; 32]) -> usize {
        home_core(blob_id, self.senders.len())
    }

    /// Sends `op` (built around a reply channel) to `core` and awaits the reply. A hop to
    /// another core than `from` is counted and timed.
    pub async fn call<T>(
        &self,
        from: usize,
        core: usize,
        metrics: &Metrics,
        op: impl FnOnce(oneshot::Sender<T>) -> Op,
    ) -> Result<T, StorageFailure> {
        let started = Instant::now();
        let (reply, answer) = oneshot::channel();
        let mut sender = self.senders[core].clone();
        let gone = || StorageFailure::Other("the node is shutting down".into());
        futures::SinkExt::send(&mut sender, op(reply))
            .await
            .map_err(|_| gone())?;
        let result = answer.await.map_err(|_| gone())?;
        if core != from {
            metrics.cross_core_hops.inc();
            metrics
                .cross_core_hop_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(result)
    }
}

/// The core of `cores` that keeps a blob's metadata.
pub fn home_core(blob_id: &[u8; 32], cores: usize) -> usize {
    let head = u64::from_le_bytes(blob_id[..8].try_into().expect("8 bytes"));
    (head % cores as u64) as usize
}

/// The node's retired data directories (node-wide: the first core that finds a directory's
/// device failed retires it, and every other core follows after its next operations, within a
/// second), and whether their shards still want healing.
#[derive(Debug, Default)]
pub struct RetiredDirs {
    dirs: Vec<std::sync::atomic::AtomicBool>,
    /// Set when a directory is retired or replaced; the healer takes it ([`crate::sync`]).
    pub heal_wanted: std::sync::atomic::AtomicBool,
}

impl RetiredDirs {
    pub fn new(dirs: usize) -> Self {
        Self {
            dirs: (0..dirs).map(|_| Default::default()).collect(),
            heal_wanted: Default::default(),
        }
    }

    /// Directory `index` (`dir`) is retired: counted in `/metrics`; its shards want healing
    /// elsewhere.
    pub fn retire(&self, index: usize, dir: &str, metrics: &Metrics) {
        self.dirs[index].store(true, std::sync::atomic::Ordering::Release);
        metrics
            .disk_retired
            .get_or_create(&DirLabel { dir: dir.into() })
            .set(1);
        self.want_heal();
    }

    pub fn want_heal(&self) {
        self.heal_wanted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_retired(&self, index: usize) -> bool {
        self.dirs[index].load(std::sync::atomic::Ordering::Acquire)
    }

    /// Which directories are live, in order (for [`floe_storage::disks::place`]).
    pub fn live(&self) -> Vec<bool> {
        (0..self.dirs.len()).map(|i| !self.is_retired(i)).collect()
    }
}

/// Retirements between this core's `disks` and the node's `retired`: what this core retired
/// is published, logged and counted; what another core retired is retired here too.
async fn follow_retirements<D: Dir>(
    disks: &mut Disks<D>,
    retired: &RetiredDirs,
    dir_labels: &[String],
    metrics: &Metrics,
) {
    for (index, why) in disks.take_retired() {
        let dir = &dir_labels[index];
        tracing::error!(
            dir,
            why,
            "data directory retired: its device failed; its shards move to the other data \
             directories and are healed there. Replace the disk and restart with an empty \
             directory at the same path to use it again"
        );
        retired.retire(index, dir, metrics);
    }
    for index in 0..dir_labels.len() {
        if retired.is_retired(index) && !disks.is_retired(index) {
            disks
                .retire(index, "another core found its device failed".into())
                .await;
            // Published and logged by the core that found it.
            disks.take_retired();
        }
    }
}

/// Retires the live directories that are gone or read-only (checked every second: a disk
/// pulled, unmounted or remounted read-only after errors may fail no operation of the store,
/// whose files stay open, until much later).
async fn retire_vanished<D: Dir>(
    disks: &mut Disks<D>,
    data_dirs: &[std::path::PathBuf],
    metrics: &Metrics,
) {
    for (index, dir) in data_dirs.iter().enumerate() {
        if disks.is_retired(index) {
            continue;
        }
        if let Err(problem @ ("missing" | "read-only")) = metrics.disk_health(dir) {
            disks
                .retire(index, format!("the data directory is {problem}"))
                .await;
        }
    }
}

/// The owner task of one core: serves operations until every sender is gone.
pub async fn run_owner<D: Dir>(
    mut disks: Disks<D>,
    mut queue: mpsc::Receiver<Op>,
    metrics: Arc<Metrics>,
    retired: Arc<RetiredDirs>,
    data_dirs: Vec<std::path::PathBuf>,
    commit_bytes_max: u64,
    mut scrubbers: Vec<ScrubPacer>,
) {
    let dir_labels: Vec<String> = data_dirs.iter().map(|d| d.display().to_string()).collect();
    let mut seen = vec![DiskCounters::default(); dir_labels.len()];
    // Bytes each directory's scrubber may still check this second. Scrubbing and reclaiming
    // run only while the queue is empty, one small step at a time, so they never hold up a
    // request for long.
    let mut scrub_budget = vec![0u64; dir_labels.len()];
    let mut last_step = Instant::now();
    for (index, store) in disks.live_mut() {
        scrubbers[index].resume(store);
    }
    loop {
        let background =
            scrub_budget.iter().any(|b| *b > 0) || disks.live().any(|(_, s)| s.reclaim_pending());
        // Under constant load the queue is never empty: still make some progress.
        if background && last_step.elapsed() >= BACKGROUND_BUSY_INTERVAL {
            background_step(&mut disks, &mut scrub_budget, &mut scrubbers, &dir_labels).await;
            update_disk_metrics(&disks, &dir_labels, &mut seen, &metrics);
            last_step = Instant::now();
        }
        let first = if background {
            match queue.try_recv() {
                Ok(op) => op,
                Err(err) if err.is_closed() => break,
                Err(_) => {
                    background_step(&mut disks, &mut scrub_budget, &mut scrubbers, &dir_labels)
                        .await;
                    update_disk_metrics(&disks, &dir_labels, &mut seen, &metrics);
                    last_step = Instant::now();
                    futures_lite::future::yield_now().await;
                    continue;
                }
            }
        } else {
            match queue.next().await {
                Some(op) => op,
                None => break,
            }
        };
        let mut puts = Vec::new();
        let mut others = Vec::new();
        let mut bytes = 0;
        let mut sort = |op: Op, bytes: &mut usize| match op {
            Op::Put { records, reply } => {
                *bytes += records.iter().map(|r| r.data.len()).sum::<usize>();
                puts.push((records, reply));
            }
            other => others.push(other),
        };
        sort(first, &mut bytes);
        // Bounds the commit buffer and the time one commit holds up reads queued behind it
        // (`io_plan`).
        while (bytes as u64) < commit_bytes_max {
            match queue.try_recv() {
                Ok(op) => sort(op, &mut bytes),
                _ => break,
            }
        }
        if !puts.is_empty() {
            let batch: Vec<Put> = puts
                .iter()
                .flat_map(|(records, _)| records.iter())
                .map(|r| Put {
                    key: r.key,
                    end_epoch: r.end_epoch,
                    flags: 0,
                    data: &r.data,
                })
                .collect();
            let result = disks.put(&batch).await.map_err(StorageFailure::from);
            if result.is_ok() {
                metrics.records_per_commit.observe(batch.len() as f64);
            }
            drop(batch);
            for (_, reply) in puts {
                let _ = reply.send(result.clone());
            }
        }
        for op in others {
            match op {
                Op::Put { .. } => unreachable!("puts were sorted out"),
                Op::Get { key, reply } => {
                    let result = match disks.get_shared(&key).await {
                        Ok(Some(data)) => {
                            // Only metadata reads want these: no second lookup for a sliver.
                            let (end_epoch, flags) = match key.kind {
                                RecordKind::Metadata => disks.stored(&key).unwrap_or_default(),
                                _ => (0, 0),
                            };
                            Ok(Some(Found {
                                data,
                                end_epoch,
                                flags,
                            }))
                        }
                        Ok(None) => Ok(None),
                        Err(err) => Err(StorageFailure::from(err)),
                    };
                    let _ = reply.send(result);
                }
                Op::Maintain => {
                    retire_vanished(&mut disks, &data_dirs, &metrics).await;
                    // A new second's allowance: what the pace makes due, at most the ceiling.
                    let now = Instant::now();
                    for (index, store) in disks.live_mut() {
                        scrub_budget[index] = scrubbers[index].due(store, now);
                    }
                }
                Op::ExpireMetadata { epoch, reply } => {
                    let _ = reply.send(expire_metadata(&mut disks, epoch, &dir_labels));
                }
                Op::EndEpochs { blobs, reply } => {
                    let ends = blobs
                        .iter()
                        .map(|id| disks.stored(&Key::metadata(*id)).map(|(end, _)| end))
                        .collect();
                    let _ = reply.send(ends);
                }
                Op::SettleSlivers { extend, expire } => {
                    settle_and_start_reclaim(&mut disks, &extend, &expire, &dir_labels);
                }
                Op::ListMetadata {
                    after,
                    limit,
                    core,
                    cores,
                    reply,
                } => {
                    let home = |id: &[u8; 32]| home_core(id, cores) == core;
                    let _ = reply.send(list(&disks, after, limit, home));
                }
                Op::PutMetadata {
                    blob_id,
                    data,
                    end_epoch,
                    deletable,
                    revive,
                    reply,
                } => {
                    let result =
                        put_metadata(&mut disks, blob_id, data, end_epoch, deletable, revive).await;
                    let _ = reply.send(result);
                }
                Op::Delete {
                    blob_id,
                    end_epoch,
                    decide,
                    reply,
                } => {
                    let _ = reply.send(delete(&mut disks, blob_id, end_epoch, decide).await);
                }
                Op::IsDeleted { blob_id, reply } => {
                    let _ = reply.send(disks.deleted(&blob_id));
                }
                Op::ForgetShards { forget, reply } => {
                    let dropped =
                        disks.forget_shards(|s| forget.get(usize::from(s)) == Some(&true));
                    let _ = reply.send(dropped);
                }
                Op::Missing {
                    blobs,
                    shards,
                    reply,
                } => {
                    let _ = reply.send(missing(&disks, &blobs, &shards));
                }
                Op::Keys { blob_id, reply } => {
                    let mut held: Vec<Held> = Vec::new();
                    for (_, store) in disks.live() {
                        for key in store.keys_of(&blob_id) {
                            if key.kind == RecordKind::Metadata
                                && held.iter().any(|h| h.kind == RecordKind::Metadata)
                            {
                                continue;
                            }
                            let (end_epoch, flags) = store.stored(&key).unwrap_or_default();
                            held.push(Held {
                                kind: key.kind,
                                shard: key.shard,
                                end_epoch,
                                flags,
                            });
                        }
                    }
                    let _ = reply.send(held);
                }
            }
        }
        follow_retirements(&mut disks, &retired, &dir_labels, &metrics).await;
        update_disk_metrics(&disks, &dir_labels, &mut seen, &metrics);
    }
}

/// What [`update_disk_metrics`] last saw of a store's counters.
#[derive(Clone, Copy, Default)]
struct DiskCounters {
    commits: u64,
    failed_commits: u64,
    /// Whether this core's last commit to the directory failed (counted in
    /// `Metrics::disk_failing_cores` until a commit succeeds).
    failing: bool,
    io_errors: u64,
    corrupt: u64,
    moved: u64,
    freed: u64,
}

/// Per-directory counters in `/metrics`, as deltas of the stores' own counters.
fn update_disk_metrics<D: Dir>(
    disks: &Disks<D>,
    dir_labels: &[String],
    seen: &mut [DiskCounters],
    metrics: &Metrics,
) {
    for (index, store) in disks.live() {
        let (label, last) = (&dir_labels[index], &mut seen[index]);
        let c = store.counters();
        // Failed since the last look and nothing succeeded: failing; a success: recovered.
        let failing = if c.commits > last.commits {
            false
        } else {
            last.failing || c.failed_commits > last.failed_commits
        };
        let now = DiskCounters {
            commits: c.commits,
            failed_commits: c.failed_commits,
            failing,
            io_errors: c.failed_commits + c.read_errors,
            corrupt: c.corrupt_records,
            moved: c.reclaim_bytes_moved,
            freed: c.reclaim_bytes_freed,
        };
        let dir = DirLabel { dir: label.clone() };
        let add = |family: &Family<DirLabel, Counter>, now: u64, last: u64| {
            if now > last {
                family.get_or_create(&dir).inc_by(now - last);
            }
        };
        add(&metrics.disk_io_errors, now.io_errors, last.io_errors);
        add(&metrics.corrupt_records, now.corrupt, last.corrupt);
        add(&metrics.reclaim_moved_bytes, now.moved, last.moved);
        add(&metrics.reclaim_freed_bytes, now.freed, last.freed);
        if now.failing != last.failing {
            let cores = metrics.disk_failing_cores.get_or_create(&dir);
            if now.failing {
                cores.inc();
            } else {
                cores.dec();
            }
        }
        *last = now;
    }
}

/// Bytes one scrub step checks at most. Why: a request that arrives during a step waits for
/// at most this much direct reading and hashing (about a millisecond on an SSD).
const SCRUB_STEP_BYTES: u64 = 1 << 20;

/// While requests keep the owner busy, one background step (scrub or reclaim) at most this
/// often. Why: the scrubber still checks ~10 MiB/s per directory under saturation, and
/// reclaiming copies ~40 MiB/s, at a few percent of the owner's time.
const BACKGROUND_BUSY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes one reclaim step copies at most. Why: like a scrub step, a request that arrives
/// during it waits for a few milliseconds of I/O at most.
const RECLAIM_STEP_BYTES: u64 = 4 << 20;

/// One background step: reclaiming first (space), then scrubbing.
async fn background_step<D: Dir>(
    disks: &mut Disks<D>,
    budget: &mut [u64],
    scrubbers: &mut [ScrubPacer],
    dir_labels: &[String],
) {
    let reclaiming = disks
        .live()
        .find(|(_, s)| s.reclaim_pending())
        .map(|(i, _)| i);
    let Some(store) = reclaiming.and_then(|i| disks.store_mut(i)) else {
        return scrub_step(disks, budget, scrubbers, dir_labels).await;
    };
    let dir = &dir_labels[reclaiming.expect("found")];
    match store.reclaim_step(RECLAIM_STEP_BYTES).await {
        Ok(report) if report.segments_removed > 0 => tracing::info!(
            dir,
            segments_removed = report.segments_removed,
            bytes_freed = report.bytes_freed,
            records_moved = report.records_moved,
            "reclaimed space"
        ),
        Ok(_) => {}
        // The segment it was emptying stays (the next pass looks at it again); the pass goes on.
        Err(err) => tracing::warn!(dir, %err, "reclaiming a segment failed"),
    }
}

/// One bounded step of the scrubber, on the first directory with budget left. What it finds
/// corrupt leaves the index (to be healed) and is logged; failures are logged and retried
/// next second.
async fn scrub_step<D: Dir>(
    disks: &mut Disks<D>,
    budget: &mut [u64],
    scrubbers: &mut [ScrubPacer],
    dir_labels: &[String],
) {
    let Some(index) = budget.iter().position(|b| *b > 0) else {
        return;
    };
    let dir = &dir_labels[index];
    let Some(store) = disks.store_mut(index) else {
        // Retired: nothing more to scrub there.
        budget[index] = 0;
        return;
    };
    match store.scrub(budget[index].min(SCRUB_STEP_BYTES)).await {
        Ok(report) => {
            for key in &report.corrupt {
                tracing::warn!(dir, kind = ?key.kind, shard = key.shard, "scrubber found a corrupt record; it is treated as missing");
            }
            budget[index] = budget[index].saturating_sub(report.bytes_checked);
            scrubbers[index].checked(store, report.bytes_checked, report.pass_complete);
            if report.pass_complete {
                tracing::info!(dir, "scrub pass complete");
                budget[index] = 0;
            }
        }
        Err(err) => {
            tracing::warn!(dir, %err, "scrubbing failed");
            budget[index] = 0;
        }
    }
}

/// Applies an expiry sweep's outcome ([`Op::SettleSlivers`]) in every data directory and
/// starts a reclaiming pass over its sparse segments (done in steps while the owner is idle;
/// see [`background_step`]).
fn settle_and_start_reclaim<D: Dir>(
    disks: &mut Disks<D>,
    extend: &[([u8; 32], u32)],
    expire: &[[u8; 32]],
    dir_labels: &[String],
) {
    for (index, store) in disks.live_mut() {
        let dir = &dir_labels[index];
        for (blob_id, end_epoch) in extend {
            store.extend_blob(blob_id, *end_epoch);
        }
        let expired: usize = expire
            .iter()
            .map(|blob_id| store.expire_blob(blob_id))
            .sum();
        if expired > 0 {
            tracing::info!(dir, expired, "slivers expired");
        }
        if !store.reclaim_pending() {
            store.start_reclaim(RECLAIM_LIVE_FRACTION_MAX);
        }
    }
}

/// The core's maintenance timer, until the owner's queue closes: [`Op::Maintain`] every
/// second (the scrubber's pace), and every `expire_every` seconds (and once at start) an
/// expiry sweep. The sweep lets slivers follow their blob's metadata: a sliver record carries
/// the end epoch its blob had when it was stored, and a later extension rewrites only the
/// metadata (on the blob's home core), so a sliver whose own end epoch passed is kept, with
/// the later one, while its blob's metadata lives, and dropped once it does not.
pub async fn run_maintenance(
    owners: Owners,
    core: usize,
    expire_every: u32,
    epoch: impl Fn() -> u32,
    metrics: Arc<Metrics>,
) {
    let mut sender = owners.senders[core].clone();
    let mut tick = 0u32;
    loop {
        if tick.is_multiple_of(expire_every)
            && sweep(&owners, core, epoch(), &metrics).await.is_err()
        {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
        tick = tick.wrapping_add(1);
        if futures::SinkExt::send(&mut sender, Op::Maintain)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// One expiry sweep of `core` (see [`run_maintenance`]).
async fn sweep(
    owners: &Owners,
    core: usize,
    epoch: u32,
    metrics: &Metrics,
) -> Result<(), StorageFailure> {
    let lapsed = owners
        .call(core, core, metrics, |reply| Op::ExpireMetadata {
            epoch,
            reply,
        })
        .await?;
    let mut by_home: Vec<Vec<[u8; 32]>> = vec![Vec::new(); owners.cores()];
    for blob_id in lapsed {
        by_home[owners.home_of(&blob_id)].push(blob_id);
    }
    let (mut extend, mut expire) = (Vec::new(), Vec::new());
    for (home, blobs) in by_home.into_iter().enumerate() {
        if blobs.is_empty() {
            continue;
        }
        let asked = blobs.clone();
        let ends = owners
            .call(core, home, metrics, |reply| Op::EndEpochs {
                blobs: asked,
                reply,
            })
            .await?;
        let (more_extend, more_expire) = settle_plan(blobs.into_iter().zip(ends), epoch);
        extend.extend(more_extend);
        expire.extend(more_expire);
    }
    let mut sender = owners.senders[core].clone();
    futures::SinkExt::send(&mut sender, Op::SettleSlivers { extend, expire })
        .await
        .map_err(|_| StorageFailure::Other("the node is shutting down".into()))
}

/// What an expiry sweep does with the slivers whose own end epoch passed, given their blob's
/// metadata end epoch (`None`: no metadata): kept with the later end epoch while the metadata
/// lives (an extension), dropped once it does not.
#[allow(clippy::type_complexity)]
pub fn settle_plan(
    lapsed: impl IntoIterator<Item = ([u8; 32], Option<u32>)>,
    epoch: u32,
) -> (Vec<([u8; 32], u32)>, Vec<[u8; 32]>) {
    let (mut extend, mut expire) = (Vec::new(), Vec::new());
    for (blob_id, end) in lapsed {
        match end {
            Some(end) if end >= epoch => extend.push((blob_id, end)),
            _ => expire.push(blob_id),
        }
    }
    (extend, expire)
}

/// One expiry sweep of a node whose records all live on one core ([`run_maintenance`] does the
/// same through every core's queue): metadata and tombstones past `epoch` expire, slivers follow
/// their blob's metadata ([`settle_plan`]). What the deterministic simulation runs at each
/// epoch.
pub fn sweep_one_core<D: Dir>(disks: &mut Disks<D>, epoch: u32) {
    let labels = vec![String::new(); disks.directories()];
    let ends: Vec<([u8; 32], Option<u32>)> = expire_metadata(disks, epoch, &labels)
        .into_iter()
        .map(|id| (id, disks.stored(&Key::metadata(id)).map(|(end, _)| end)))
        .collect();
    let (extend, expire) = settle_plan(ends, epoch);
    settle_and_start_reclaim(disks, &extend, &expire, &labels);
}

/// [`Op::ExpireMetadata`]: metadata and tombstones past `epoch` leave every directory's index;
/// returns the blobs with slivers whose own end epoch passed (each once).
fn expire_metadata<D: Dir>(
    disks: &mut Disks<D>,
    epoch: u32,
    dir_labels: &[String],
) -> Vec<[u8; 32]> {
    let mut lapsed = Vec::new();
    for (index, store) in disks.live_mut() {
        let dir = &dir_labels[index];
        let expired = store.expire_metadata(epoch);
        if expired > 0 {
            tracing::info!(dir, expired, "metadata and tombstones expired");
        }
        lapsed.extend(store.lapsed_slivers(epoch));
    }
    lapsed.sort_unstable();
    lapsed.dedup();
    lapsed
}

/// [`Op::Missing`]: the slivers of `shards` of `blobs` not stored here.
pub fn missing<D: Dir>(
    disks: &Disks<D>,
    blobs: &[[u8; 32]],
    shards: &[u16],
) -> Vec<([u8; 32], u16, RecordKind)> {
    let mut missing = Vec::new();
    for blob_id in blobs {
        for &shard in shards {
            for kind in [RecordKind::Primary, RecordKind::Secondary] {
                let key = Key {
                    blob_id: *blob_id,
                    kind,
                    shard,
                };
                if disks.stored(&key).is_none() {
                    missing.push((*blob_id, shard, kind));
                }
            }
        }
    }
    missing
}

/// [`Op::ListMetadata`]: stored blobs and deleted ones, merged in blob ID order.
pub fn list<D: Dir>(
    disks: &Disks<D>,
    after: Option<[u8; 32]>,
    limit: usize,
    home: impl Fn(&[u8; 32]) -> bool,
) -> Vec<Listed> {
    let mut all: Vec<Listed> = Vec::new();
    for (_, store) in disks.live() {
        for (blob_id, end_epoch) in store.metadata_after(after.as_ref(), limit) {
            let flags = store.flags(&Key::metadata(blob_id)).unwrap_or(0);
            let state = if flags & FLAG_DELETABLE != 0 {
                BlobState::Deletable
            } else {
                BlobState::Permanent
            };
            all.push(Listed {
                blob_id,
                end_epoch,
                state,
            });
        }
        let deleted = store.deleted_after(after.as_ref());
        for (blob_id, end_epoch) in deleted.filter(|(id, _)| home(id)).take(limit) {
            all.push(Listed {
                blob_id,
                end_epoch,
                state: BlobState::Deleted,
            });
        }
    }
    // Metadata and tombstones are kept in every directory: one entry per blob.
    all.sort_unstable();
    all.dedup_by_key(|l| l.blob_id);
    all.truncate(limit);
    all
}

/// [`Op::PutMetadata`]: the merge of a metadata record into what `disks` hold (the later end
/// epoch; deletable only if both were; a deletable store of a deleted blob refused unless
/// `revive`).
pub async fn put_metadata<D: Dir>(
    disks: &mut Disks<D>,
    blob_id: [u8; 32],
    data: bytes::Bytes,
    end_epoch: u32,
    deletable: bool,
    revive: bool,
) -> Result<MetadataStored, StorageFailure> {
    let key = Key::metadata(blob_id);
    let stored = disks.stored(&key);
    if stored.is_none() && deletable && !revive {
        if let Some(deleted_until) = disks.deleted(&blob_id) {
            return Ok(MetadataStored::Deleted {
                end_epoch: deleted_until,
            });
        }
    }
    let (end_epoch, deletable) = match stored {
        Some((end, flags)) => (end.max(end_epoch), deletable && flags & FLAG_DELETABLE != 0),
        None => (end_epoch, deletable),
    };
    let flags = if deletable { FLAG_DELETABLE } else { 0 };
    // Already stored so: nothing to write.
    if stored != Some((end_epoch, flags)) {
        disks
            .put(&[Put {
                key,
                end_epoch,
                flags,
                data: &data,
            }])
            .await?;
    }
    Ok(MetadataStored::Stored {
        end_epoch,
        deletable,
        changed: stored.is_some_and(|old| old != (end_epoch, flags)),
    })
}

/// [`Op::Delete`]: with `decide` (the blob's home core), a permanent blob is kept and a blob
/// neither stored nor remembered is [`Deleted::Unknown`] at end epoch 0.
pub async fn delete<D: Dir>(
    disks: &mut Disks<D>,
    blob_id: [u8; 32],
    end_epoch: u32,
    decide: bool,
) -> Result<Deleted, StorageFailure> {
    let stored = disks.stored(&Key::metadata(blob_id));
    if decide {
        match stored {
            Some((_, flags)) if flags & FLAG_DELETABLE == 0 => return Ok(Deleted::Permanent),
            None => {
                // Remembered already; a later end epoch is kept (written again).
                if let Some(deleted_until) = disks.deleted(&blob_id) {
                    if deleted_until >= end_epoch {
                        return Ok(Deleted::Before {
                            end_epoch: deleted_until,
                        });
                    }
                }
                if end_epoch == 0 {
                    return Ok(Deleted::Unknown);
                }
            }
            Some(_) => {}
        }
    }
    let end_epoch = stored.map_or(end_epoch, |(end, _)| end.max(end_epoch));
    disks.delete_blob(&blob_id, end_epoch).await?;
    Ok(Deleted::Now { end_epoch })
}
