//! What every core shares ([`Shared`]: configuration, committee, owners, metrics) and what
//! each core keeps for itself ([`CoreState`]: its counters, verified-metadata cache, blob
//! cache, peer client), with the storage calls every handler makes through the owners.
//!
//! Invariant: a core's caches never outlive a change of the blob on the node: a deletion or a
//! later end epoch is pushed to [`Shared::changes`], and every core drops the blob from its
//! caches on its next lookup (one atomic load when nothing changed).
//!
//! Boundary: storage is reached only through [`CoreState::call`] (a message to the owning
//! core); nothing here speaks HTTP.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use floe_codec::{decode_metadata, BlobId, BlobLayout, BlobMetadata, SliverKind, VerifyScratch};
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::store::Key;
use hyper::StatusCode;
use prometheus_client::registry::Registry;

use crate::config::NodeConfig;
use crate::control::{ControlPlane, View, ViewCell};
use crate::http::error::ApiError;
use crate::metrics::Metrics;
use crate::owner::{Deleted, Held, Listed, MetadataStored, Op, Owners, Record, StorageFailure};
pub(crate) use crate::protocol::{record_kind, sliver_index};

pub struct Shared {
    pub config: NodeConfig,
    /// The committee as this node sees it now (replaced when the epoch changes).
    pub view: Arc<ViewCell>,
    /// n: the same in every epoch.
    pub n_shards: u16,
    /// The control plane on etcd, if the node runs on one.
    pub control: Option<Arc<ControlPlane>>,
    pub owners: Owners,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// How hard each data directory is pushed (`io_plan`).
    pub io: Vec<crate::io_plan::DiskPlan>,
    /// Sync and healing progress, for `/v1/health`.
    pub sync: crate::sync::SyncStatus,
    /// Where big uploads are spooled, and what they promised of its disk.
    pub spool_dir: std::path::PathBuf,
    pub spool: Arc<crate::spool::SpoolUse>,
    /// Blobs deleted, extended or made permanent while the node runs, for every core to drop
    /// from its caches.
    pub changes: ChangeLog,
    /// The S3 API, when this node serves it (`s3_listen`).
    pub s3: Option<Arc<crate::s3::S3>>,
    /// Data directories retired after their device failed (`floe_storage::disks`).
    pub retired: Arc<crate::owner::RetiredDirs>,
}

impl Shared {
    /// The committee now (one atomic load; hold it for the length of one task).
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.view.load().epoch()
    }

    /// The largest blob `PUT /v1/blobs` takes: the code's limit at the committee's n (bigger
    /// blobs than fit in memory are spooled to disk, see `spool`).
    pub fn blob_bytes_max(&self) -> u64 {
        floe_codec::EncodingConfig::new(self.n_shards).map_or(0, |c| c.blob_bytes_max())
    }

    /// The largest blob that can be encoded in memory: one whose body and encoding fit this
    /// core's buffer budget together (the publisher holds both at once).
    pub fn memory_blob_bytes_max(&self) -> u64 {
        let Ok(config) = floe_codec::EncodingConfig::new(self.n_shards) else {
            return 0;
        };
        let budget = self.config.limits.buffer_bytes_per_core;
        let fits = |bytes: u64| {
            config
                .layout(bytes)
                .is_ok_and(|l| bytes.saturating_add(l.encoded_bytes_total()) <= budget)
        };
        let bound = config.blob_bytes_max();
        if fits(bound) {
            return bound;
        }
        // The encoding grows with the blob: the largest size that fits, by bisection.
        let (mut fits_below, mut too_big) = (0u64, bound);
        while too_big - fits_below > 1 {
            let middle = fits_below + (too_big - fits_below) / 2;
            if fits(middle) {
                fits_below = middle;
            } else {
                too_big = middle;
            }
        }
        fits_below
    }
}

/// The blobs deleted or changed (a later end epoch, made permanent) on this node, newest
/// last, so that each core drops them from its caches (a core checks one atomic per lookup;
/// the lock is taken only when something changed).
#[derive(Default)]
pub struct ChangeLog {
    total: AtomicU64,
    recent: Mutex<VecDeque<[u8; 32]>>,
}

/// Changes the log keeps. Why: a core that fell further behind clears its caches instead.
const CHANGE_LOG_ENTRIES: usize = 4096;

impl ChangeLog {
    fn push(&self, blob_id: [u8; 32]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back(blob_id);
        if recent.len() > CHANGE_LOG_ENTRIES {
            recent.pop_front();
        }
        self.total.fetch_add(1, Ordering::Release);
    }

    /// The number of changes so far, and those after the first `seen` (`None` when the log
    /// no longer has them all).
    fn since(&self, seen: u64) -> (u64, Option<Vec<[u8; 32]>>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.total.load(Ordering::Acquire);
        let missed = (total - seen) as usize;
        let ids =
            (missed <= recent.len()).then(|| recent.iter().rev().take(missed).copied().collect());
        (total, ids)
    }
}

/// Metadata kept on a core after it was verified, for checking slivers against.
pub struct CachedMetadata {
    pub metadata: BlobMetadata,
    pub layout: BlobLayout,
    pub end_epoch: u32,
    /// As stored when this was cached (the home core's record decides; see [`Op::Delete`]).
    pub deletable: bool,
}

/// Verified metadata cached per core. Why bounded by count: at n = 1000 one entry is ~64 KiB.
const METADATA_CACHE_ENTRIES: usize = 256;

/// Verified metadata by blob, with insertion order for eviction.
#[derive(Default)]
struct MetadataCache {
    entries: HashMap<[u8; 32], Rc<CachedMetadata>>,
    order: VecDeque<[u8; 32]>,
}

/// One core's state: limits' counters and caches. Never shared with another core.
pub struct CoreState {
    pub shared: Arc<Shared>,
    pub core: usize,
    pub in_flight: Cell<usize>,
    pub connections: Cell<usize>,
    pub buffer_bytes: Cell<u64>,
    metadata_cache: RefCell<MetadataCache>,
    pub(crate) scratch: RefCell<VerifyScratch>,
    /// This core's client to the other nodes.
    pub peers: crate::peer_client::Peers,
    /// Verified blobs, for the aggregator.
    pub(crate) blob_cache: RefCell<crate::blob_cache::BlobCache>,
    /// How many of [`Shared::changes`] this core's caches have dropped.
    changes_seen: Cell<u64>,
    /// Blobs being read into `blob_cache`, for other reads of them to wait on.
    pub(crate) filling: RefCell<HashMap<[u8; 32], Rc<event_listener::Event>>>,
}

impl CoreState {
    pub fn new(shared: Arc<Shared>, core: usize) -> Self {
        Self {
            core,
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            buffer_bytes: Cell::new(0),
            metadata_cache: RefCell::new(Default::default()),
            scratch: RefCell::new(VerifyScratch::default()),
            peers: crate::peer_client::Peers::new(
                shared.config.write_token.clone(),
                shared
                    .config
                    .cluster_secret
                    .clone()
                    .map(|secret| (shared.config.name.clone(), secret)),
                shared.config.peer_deadlines(),
            ),
            blob_cache: RefCell::new(crate::blob_cache::BlobCache::new(
                shared.config.cache_bytes_per_core,
                shared
                    .config
                    .cache_dir
                    .clone()
                    .or_else(|| shared.config.data_dirs.first().cloned()),
            )),
            changes_seen: Cell::new(0),
            filling: RefCell::new(HashMap::new()),
            shared,
        }
    }

    pub(crate) fn n(&self) -> usize {
        self.shared.n_shards.into()
    }

    pub(crate) async fn call<T>(
        &self,
        core: usize,
        op: impl FnOnce(futures::channel::oneshot::Sender<T>) -> Op,
    ) -> Result<T, ApiError> {
        self.shared
            .owners
            .call(self.core, core, &self.shared.metrics, op)
            .await
            .map_err(storage_error)
    }

    /// Drops blobs deleted or changed since the last call from this core's caches.
    pub(crate) fn forget_changed(&self) {
        let log = &self.shared.changes;
        if log.total.load(Ordering::Acquire) == self.changes_seen.get() {
            return;
        }
        let (total, deleted) = log.since(self.changes_seen.get());
        let mut metadata = self.metadata_cache.borrow_mut();
        let mut blobs = self.blob_cache.borrow_mut();
        match deleted {
            Some(ids) => {
                for id in ids {
                    metadata.entries.remove(&id);
                    blobs.remove(&BlobId(id));
                }
            }
            None => {
                *metadata = MetadataCache::default();
                blobs.clear();
            }
        }
        self.changes_seen.set(total);
    }

    /// The stored metadata record (BCS), end epoch and flags, from the blob's home core.
    pub(crate) async fn metadata_record(
        &self,
        blob_id: &BlobId,
    ) -> Result<Option<crate::owner::Found>, ApiError> {
        let home = self.shared.owners.home_of(&blob_id.0);
        let key = Key::metadata(blob_id.0);
        let found = self.call(home, |reply| Op::Get { key, reply }).await?;
        found.map_err(storage_error)
    }

    /// Stores one record on `core`, durably.
    pub(crate) async fn store_record(&self, core: usize, record: Record) -> Result<(), ApiError> {
        self.call(core, |reply| Op::Put {
            records: vec![record],
            reply,
        })
        .await?
        .map_err(storage_error)
    }

    /// The blob's verified metadata: from this core's cache, or from its home core.
    pub(crate) async fn metadata(
        &self,
        blob_id: &BlobId,
    ) -> Result<Option<Rc<CachedMetadata>>, ApiError> {
        self.forget_changed();
        let epoch = self.shared.epoch();
        let hit = self
            .metadata_cache
            .borrow()
            .entries
            .get(&blob_id.0)
            .cloned();
        match hit {
            Some(hit) if hit.end_epoch >= epoch => return Ok(Some(hit)),
            // Expired here (or extended since: the home core's record says).
            Some(_) => {
                self.metadata_cache.borrow_mut().entries.remove(&blob_id.0);
            }
            None => {}
        }
        let Some(found) = self.metadata_record(blob_id).await? else {
            return Ok(None);
        };
        if found.end_epoch < epoch {
            // Past its end epoch: gone, whether or not the next sweep dropped it yet.
            return Ok(None);
        }
        let (bytes, end_epoch) = (found.data, found.end_epoch);
        // It was verified before it was stored, and its checksum held on this read.
        let metadata = decode_metadata(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storageError",
                format!("stored metadata does not decode: {e}"),
            )
        })?;
        let layout = metadata.layout().map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storageError",
                e.to_string(),
            )
        })?;
        let cached = Rc::new(CachedMetadata {
            metadata,
            layout,
            end_epoch,
            deletable: found.flags & FLAG_DELETABLE != 0,
        });
        self.remember(blob_id, cached.clone());
        Ok(Some(cached))
    }

    /// The end epoch of the blob's deletion, if this node deleted it (its home core decides).
    pub(crate) async fn deleted(&self, blob_id: &BlobId) -> Result<Option<u32>, ApiError> {
        let home = self.shared.owners.home_of(&blob_id.0);
        let blob_id = blob_id.0;
        self.call(home, |reply| Op::IsDeleted { blob_id, reply })
            .await
    }

    /// Deletes the blob on this node: the home core decides (see [`Op::Delete`]), then every
    /// other core drops its slivers, and every core's caches forget it.
    pub(crate) async fn delete_here(
        &self,
        blob_id: &BlobId,
        end_epoch: u32,
    ) -> Result<Deleted, ApiError> {
        let home = self.shared.owners.home_of(&blob_id.0);
        let id = blob_id.0;
        let decided = self
            .call(home, |reply| Op::Delete {
                blob_id: id,
                end_epoch,
                decide: true,
                reply,
            })
            .await?
            .map_err(storage_error)?;
        let Deleted::Now { end_epoch } = decided else {
            return Ok(decided);
        };
        let others = (0..self.shared.owners.cores())
            .filter(|core| *core != home)
            .map(|core| async move {
                self.call(core, |reply| Op::Delete {
                    blob_id: id,
                    end_epoch,
                    decide: false,
                    reply,
                })
                .await?
                .map_err(storage_error)
            });
        // Caches forget it even if a core failed: the home core's tombstone already hides it.
        let results = futures::future::join_all(others).await;
        self.shared.changes.push(id);
        self.forget_changed();
        for result in results {
            result?;
        }
        self.shared.metrics.blobs_deleted.inc();
        Ok(decided)
    }

    /// Stores verified metadata (its BCS `body`) on the blob's home core and caches it. The
    /// blob is kept until `end_epoch` or a later end epoch it already had: a second store can
    /// extend a lifetime, never shorten it; and it stays deletable only if every store said
    /// so. A deletable store of a deleted blob answers 409 `blobDeleted` (unless `revive`). Returns the end
    /// epoch and deletability stored.
    #[allow(clippy::too_many_arguments)] // the record, then how it is kept
    pub(crate) async fn store_metadata(
        &self,
        blob_id: &BlobId,
        body: Bytes,
        metadata: BlobMetadata,
        layout: BlobLayout,
        end_epoch: u32,
        deletable: bool,
        revive: bool,
    ) -> Result<(u32, bool), ApiError> {
        let home = self.shared.owners.home_of(&blob_id.0);
        let id = blob_id.0;
        let stored = self
            .call(home, |reply| Op::PutMetadata {
                blob_id: id,
                data: body,
                end_epoch,
                deletable,
                revive,
                reply,
            })
            .await?
            .map_err(storage_error)?;
        let (end_epoch, deletable) = match stored {
            MetadataStored::Stored {
                end_epoch,
                deletable,
                changed,
            } => {
                if changed {
                    // A later end epoch or permanence: every core's cached copy is stale.
                    self.shared.changes.push(id);
                    self.forget_changed();
                }
                (end_epoch, deletable)
            }
            MetadataStored::Deleted { end_epoch } => return Err(blob_deleted(blob_id, end_epoch)),
        };
        self.remember(
            blob_id,
            Rc::new(CachedMetadata {
                metadata,
                layout,
                end_epoch,
                deletable,
            }),
        );
        Ok((end_epoch, deletable))
    }

    pub(crate) fn remember(&self, blob_id: &BlobId, cached: Rc<CachedMetadata>) {
        let mut cache = self.metadata_cache.borrow_mut();
        if cache.entries.insert(blob_id.0, cached).is_none() {
            cache.order.push_back(blob_id.0);
            if cache.order.len() > METADATA_CACHE_ENTRIES {
                let oldest = cache.order.pop_front().expect("not empty");
                cache.entries.remove(&oldest);
            }
        }
    }
}

/// 409 `blobDeleted`: a deletable store of a blob deleted until `end_epoch`.
/// The error code of [`blob_deleted`].
pub(crate) const BLOB_DELETED: &str = "blobDeleted";

pub(crate) fn blob_deleted(blob_id: &BlobId, end_epoch: u32) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        BLOB_DELETED,
        format!(
            "blob {blob_id} was deleted; it can be stored again as permanent (without \
             deletable=true) now, or as deletable after epoch {end_epoch}"
        ),
    )
}

pub(crate) fn storage_error(failure: StorageFailure) -> ApiError {
    match failure {
        StorageFailure::NoSpace => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "noSpace",
            "the node's disk is full; everything stored before stays readable",
        ),
        StorageFailure::Corrupt => ApiError::not_found(
            "notHeld",
            "the stored copy failed its checksum and is treated as missing",
        ),
        StorageFailure::Other(message) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storageError", message)
        }
    }
}

/// 409 `notDeletable`: the blob was stored permanent (on `node`).
pub(crate) fn not_deletable(blob_id: &BlobId, node: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "notDeletable",
        format!(
            "blob {blob_id} was stored without deletable=true (on {node}): it stays until its \
             end epoch and cannot be deleted"
        ),
    )
}

pub(crate) async fn load_sliver(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    shard: u16,
    kind: SliverKind,
) -> Result<Option<Bytes>, ApiError> {
    let key = Key {
        blob_id: blob_id.0,
        kind: record_kind(kind),
        shard,
    };
    let core = state.shared.owners.core_of_shard(shard);
    match state.call(core, |reply| Op::Get { key, reply }).await? {
        Ok(found) => Ok(found.map(|found| found.data)),
        // Failed its checksum: missing, to be healed; never served.
        Err(StorageFailure::Corrupt) => Ok(None),
        // The disk failed to read it (counted in floe_disk_io_errors_total): missing here
        // too; a read decodes from the other slivers, a peer asks another node.
        Err(StorageFailure::Other(why)) => {
            tracing::warn!(blob = %blob_id, shard, %why, "a sliver could not be read; treated as missing");
            Ok(None)
        }
        Err(other) => Err(storage_error(other)),
    }
}

/// Everything this node holds for a blob, from every core.
pub(crate) async fn held(state: &Rc<CoreState>, blob_id: &BlobId) -> Result<Vec<Held>, ApiError> {
    let mut all = Vec::new();
    for core in 0..state.shared.owners.cores() {
        let blob = blob_id.0;
        let held = state
            .call(core, |reply| Op::Keys {
                blob_id: blob,
                reply,
            })
            .await?;
        for h in held {
            if h.kind != RecordKind::Metadata || !all.iter().any(|a: &Held| a.kind == h.kind) {
                all.push(h);
            }
        }
    }
    Ok(all)
}

/// Stores each core's records in one durable commit per core, all cores at once.
pub(crate) async fn store_per_core(
    state: &Rc<CoreState>,
    per_core: Vec<Vec<Record>>,
) -> Result<(), ApiError> {
    let writes = per_core
        .into_iter()
        .enumerate()
        .filter(|(_, records)| !records.is_empty())
        .map(|(core, records)| async move {
            state
                .call(core, |reply| Op::Put { records, reply })
                .await?
                .map_err(storage_error)
        });
    for result in futures::future::join_all(writes).await {
        result?;
    }
    Ok(())
}

/// Every blob whose metadata or deletion this node keeps after `after`, at most `limit`, from
/// all cores.
pub(crate) async fn list_metadata(
    state: &Rc<CoreState>,
    after: Option<[u8; 32]>,
    limit: usize,
) -> Result<Vec<Listed>, ApiError> {
    let mut all = Vec::new();
    let cores = state.shared.owners.cores();
    for core in 0..cores {
        let page = state
            .call(core, |reply| Op::ListMetadata {
                after,
                limit,
                core,
                cores,
                reply,
            })
            .await?;
        all.extend(page);
    }
    all.sort_unstable();
    all.truncate(limit);
    Ok(all)
}
