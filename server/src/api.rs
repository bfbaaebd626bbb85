//! The request handlers: one function per route, each returning a response or an
//! [`ApiError`]. They run on the core that accepted the connection; storage operations go to
//! the owning core through [`Owners`](crate::owner::Owners).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use floe_codec::{
    decode_metadata, decode_sliver, decode_sliver_batch, encode_recovery_symbols,
    encode_sliver_batch, sliver_header, BlobId, BlobLayout, BlobMetadata, ExpandedSliver,
    RecoverySymbol, SliverKind, VerifyScratch, SYMBOL_BYTES_MAX,
};
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::store::Key;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::config::{Committee, Member, NodeConfig};
use crate::error::ApiError;
use crate::metrics::{fs_space, Metrics, ReasonLabel};
use crate::owner::{
    BlobState, Deleted, Held, Listed, MetadataStored, Op, Owners, Record, StorageFailure,
};
use crate::route::Route;

/// What every core shares (read-only, or atomics).
pub struct Shared {
    pub config: NodeConfig,
    pub committee: Committee,
    pub me: Member,
    /// `owned[s]`: this node holds shard `s`.
    pub owned: Vec<bool>,
    pub owners: Owners,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// How hard each data directory is pushed (`io_plan`).
    pub io: Vec<crate::io_plan::DiskPlan>,
    /// Sync and healing progress, for `/v1/health`.
    pub sync: crate::sync::SyncStatus,
    /// Blobs deleted while the node runs, for every core to drop from its caches.
    pub deletions: DeletionLog,
}

/// The blobs deleted on this node, newest last, so that each core drops them from its caches
/// (a core checks one atomic per lookup; the lock is taken only when something was deleted).
#[derive(Default)]
pub struct DeletionLog {
    total: AtomicU64,
    recent: Mutex<VecDeque<[u8; 32]>>,
}

/// Deletions the log keeps. Why: a core that fell further behind clears its caches instead.
const DELETION_LOG_ENTRIES: usize = 4096;

impl DeletionLog {
    fn push(&self, blob_id: [u8; 32]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back(blob_id);
        if recent.len() > DELETION_LOG_ENTRIES {
            recent.pop_front();
        }
        self.total.fetch_add(1, Ordering::Release);
    }

    /// The number of deletions so far, and those after the first `seen` (`None` when the log
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
    pub peers: crate::peer::Peers,
    /// Verified blobs, for the aggregator.
    pub(crate) blob_cache: RefCell<crate::blobs::BlobCache>,
    /// How many of [`Shared::deletions`] this core's caches have dropped.
    deletions_seen: Cell<u64>,
    /// Blobs being read into `blob_cache`, for other reads of them to wait on.
    pub(crate) filling: RefCell<HashMap<[u8; 32], Rc<event_listener::Event>>>,
}

pub type Body = Full<Bytes>;

impl CoreState {
    pub fn new(shared: Arc<Shared>, core: usize) -> Self {
        Self {
            core,
            in_flight: Cell::new(0),
            connections: Cell::new(0),
            buffer_bytes: Cell::new(0),
            metadata_cache: RefCell::new(Default::default()),
            scratch: RefCell::new(VerifyScratch::default()),
            peers: crate::peer::Peers::new(
                shared.config.write_token.clone(),
                std::time::Duration::from_secs(shared.config.peer_timeout_seconds),
            ),
            blob_cache: RefCell::new(crate::blobs::BlobCache::new(
                shared.config.cache_bytes_per_core,
                shared
                    .config
                    .cache_dir
                    .clone()
                    .or_else(|| shared.config.data_dirs.first().cloned()),
            )),
            deletions_seen: Cell::new(0),
            filling: RefCell::new(HashMap::new()),
            shared,
        }
    }

    pub(crate) fn n(&self) -> usize {
        self.shared.committee.n_shards.into()
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

    /// Drops blobs deleted since the last call from this core's caches.
    pub(crate) fn forget_deleted(&self) {
        let log = &self.shared.deletions;
        if log.total.load(Ordering::Acquire) == self.deletions_seen.get() {
            return;
        }
        let (total, deleted) = log.since(self.deletions_seen.get());
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
        self.deletions_seen.set(total);
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
        self.forget_deleted();
        if let Some(hit) = self.metadata_cache.borrow().entries.get(&blob_id.0) {
            return Ok(Some(hit.clone()));
        }
        let Some(found) = self.metadata_record(blob_id).await? else {
            return Ok(None);
        };
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
        self.shared.deletions.push(id);
        self.forget_deleted();
        for result in results {
            result?;
        }
        self.shared.metrics.blobs_deleted.inc();
        Ok(decided)
    }

    /// Stores verified metadata (its BCS `body`) on the blob's home core and caches it. The
    /// blob is kept until `end_epoch` or a later end epoch it already had: a second store can
    /// extend a lifetime, never shorten it; and it stays deletable only if every store said
    /// so. A deletable store of a deleted blob answers 409 `blobDeleted`. Returns the end
    /// epoch and deletability stored.
    pub(crate) async fn store_metadata(
        &self,
        blob_id: &BlobId,
        body: Bytes,
        metadata: BlobMetadata,
        layout: BlobLayout,
        end_epoch: u32,
        deletable: bool,
    ) -> Result<(u32, bool), ApiError> {
        let home = self.shared.owners.home_of(&blob_id.0);
        let id = blob_id.0;
        let stored = self
            .call(home, |reply| Op::PutMetadata {
                blob_id: id,
                data: body,
                end_epoch,
                deletable,
                reply,
            })
            .await?
            .map_err(storage_error)?;
        let (end_epoch, deletable) = match stored {
            MetadataStored::Stored {
                end_epoch,
                deletable,
            } => (end_epoch, deletable),
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
pub(crate) fn blob_deleted(blob_id: &BlobId, end_epoch: u32) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "blobDeleted",
        format!(
            "blob {blob_id} was deleted; it can be stored again as permanent (without \
             deletable=true) now, or as deletable after epoch {end_epoch}"
        ),
    )
}

pub(crate) fn record_kind(kind: SliverKind) -> RecordKind {
    match kind {
        SliverKind::Primary => RecordKind::Primary,
        SliverKind::Secondary => RecordKind::Secondary,
    }
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

/// Bytes of request bodies this core holds; released on drop.
pub struct BufferReservation {
    state: Rc<CoreState>,
    bytes: u64,
}

impl Drop for BufferReservation {
    fn drop(&mut self) {
        let b = &self.state.buffer_bytes;
        b.set(b.get() - self.bytes);
    }
}

pub(crate) fn reserve(state: &Rc<CoreState>, bytes: u64) -> Result<BufferReservation, ApiError> {
    let limit = state.shared.config.limits.buffer_bytes_per_core;
    let used = state.buffer_bytes.get();
    if used + bytes > limit {
        state
            .shared
            .metrics
            .rejected
            .get_or_create(&ReasonLabel {
                reason: "buffer_bytes",
            })
            .inc();
        return Err(ApiError::unavailable(
            "overloaded",
            format!("memory for request bodies on this core is in use ({used} of {limit} bytes); retry later"),
        ));
    }
    state.buffer_bytes.set(used + bytes);
    Ok(BufferReservation {
        state: state.clone(),
        bytes,
    })
}

/// The body length a request declares, if it declares one.
pub fn declared_length(headers: &hyper::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalidHeader", "Content-Length is not a number"))
}

/// The write token a request carries (`Authorization: Bearer <token>`), if any.
pub fn bearer_token(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Reads a whole body of at most `limit` bytes. A body that ends early (truncated upload, a
/// client that went away) is an error, and nothing of it is kept.
pub(crate) async fn read_body(
    state: &Rc<CoreState>,
    request: Request<Incoming>,
    limit: u64,
) -> Result<(Bytes, BufferReservation), ApiError> {
    let too_large = |what: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bodyTooLarge",
            format!("{what}; the limit here is {limit} bytes"),
        )
    };
    let declared = declared_length(request.headers())?;
    if let Some(bytes) = declared.filter(|b| *b > limit) {
        return Err(too_large(format!("the body declares {bytes} bytes")));
    }
    let reservation = reserve(state, declared.unwrap_or(limit))?;
    let collected = Limited::new(request.into_body(), limit as usize)
        .collect()
        .await;
    match collected {
        Ok(body) => {
            let bytes = body.to_bytes();
            state
                .shared
                .metrics
                .received_bytes
                .inc_by(bytes.len() as u64);
            Ok((bytes, reservation))
        }
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large("the body is longer".into()))
        }
        Err(err) => Err(ApiError::bad_request(
            "incompleteBody",
            format!("the request body ended early or could not be read: {err}"),
        )),
    }
}

pub(crate) fn check_token(state: &CoreState, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &state.shared.config.write_token else {
        return Ok(());
    };
    let given = bearer_token(request.headers());
    // Compare without an early exit, so timing does not reveal a prefix.
    let matches = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need `Authorization: Bearer <token>` with the node's write token",
        ))
    }
}

pub(crate) fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&value).expect("JSON values serialise"),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn octets(bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// The response for an error.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(err.body())));
    *response.status_mut() = err.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match err.status {
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    if let Some(allow) = err.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// Serves one routed request.
pub async fn dispatch(
    state: &Rc<CoreState>,
    route: Route,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Health => Ok(health(state)),
        Route::Metrics => metrics(state),
        Route::Metadata {
            blob_id,
            method,
            epochs,
            deletable,
        } => {
            if method == Method::PUT {
                check_token(state, &request)?;
                put_metadata(state, blob_id, epochs, deletable, request).await
            } else {
                get_metadata(state, blob_id).await
            }
        }
        Route::DeleteHere { blob_id, end_epoch } => {
            check_token(state, &request)?;
            delete_metadata(state, blob_id, end_epoch).await
        }
        Route::Sliver {
            blob_id,
            method,
            pair,
            kind,
        } => {
            let shard = shard_of(state, &blob_id, pair)?;
            if method == Method::PUT {
                check_token(state, &request)?;
                put_sliver(state, blob_id, pair, shard, kind, request).await
            } else {
                get_sliver(state, blob_id, shard, kind).await
            }
        }
        Route::RecoverySymbols {
            blob_id,
            target_pairs,
            target_kind,
            limit,
        } => recovery_symbols(state, blob_id, &target_pairs, target_kind, limit).await,
        Route::Status { blob_id } => status(state, blob_id).await,
        Route::Slivers {
            blob_id,
            method,
            kind,
            pairs,
        } => match kind {
            Some(kind) if method != Method::PUT => get_slivers(state, blob_id, kind, &pairs).await,
            _ => {
                check_token(state, &request)?;
                put_slivers(state, blob_id, request).await
            }
        },
        Route::List { after, limit } => list_blobs(state, after, limit).await,
        Route::Publish { epochs, deletable } => {
            check_token(state, &request)?;
            crate::blobs::publish(state, epochs, deletable, request).await
        }
        Route::Blob { blob_id, method } => {
            crate::blobs::read(state, blob_id, method == Method::HEAD, &request).await
        }
        Route::Delete { blob_id } => {
            check_token(state, &request)?;
            crate::blobs::delete(state, blob_id).await
        }
    }
}

/// 400 `pairOutOfRange` unless `pair < n`; `what` names the parameter.
fn check_pair(pair: u16, n: usize, what: &str) -> Result<(), ApiError> {
    if usize::from(pair) >= n {
        return Err(ApiError::bad_request(
            "pairOutOfRange",
            format!("{what} {pair} is out of range: the committee has n = {n} shards"),
        ));
    }
    Ok(())
}

/// The shard holding `pair`, if this node holds it.
pub(crate) fn shard_of(state: &CoreState, blob_id: &BlobId, pair: u16) -> Result<u16, ApiError> {
    let n = state.n();
    check_pair(pair, n, "sliver pair index")?;
    let shard = blob_id.shard_for_pair(pair.into(), n) as u16;
    if !state.shared.owned[usize::from(shard)] {
        let owner = state
            .shared
            .committee
            .members
            .iter()
            .find(|m| m.shards.binary_search(&shard).is_ok());
        let hint = owner.map_or(String::new(), |m| {
            format!(" (it is held by {} at {})", m.name, m.address)
        });
        return Err(ApiError::not_found(
            "shardNotHeld",
            format!("pair {pair} of this blob lives on shard {shard}, which this node does not hold{hint}"),
        ));
    }
    Ok(shard)
}

fn health(state: &CoreState) -> Response<Body> {
    let shared = &state.shared;
    let dirs = &shared.config.data_dirs;
    let mut disks = Vec::new();
    let mut healthy_dirs = Vec::new();
    for dir in dirs {
        let space = fs_space(dir);
        let ok = space.is_some_and(|(free, _)| free > 0);
        healthy_dirs.push(ok);
        disks.push(json!({
            "dir": dir.display().to_string(),
            "freeBytes": space.map(|s| s.0),
            "totalBytes": space.map(|s| s.1),
            "healthy": ok,
        }));
    }
    let healthy = shared
        .me
        .shards
        .iter()
        .filter(|s| healthy_dirs[usize::from(**s) % dirs.len()])
        .count();
    let owned = shared.me.shards.len();
    json_response(
        StatusCode::OK,
        json!({
            "status": if healthy == owned { "ok" } else { "degraded" },
            "name": shared.me.name,
            "epoch": shared.committee.current_epoch(),
            "nShards": shared.committee.n_shards,
            "shardsOwned": owned,
            "shardsHealthy": healthy,
            "cores": shared.owners.cores(),
            "disks": disks,
            "io": shared.io,
            "sync": shared.sync.to_json(),
            "blobBytesMax": floe_codec::EncodingConfig::new(shared.committee.n_shards)
                .map_or(0, |c| c.blob_bytes_max())
                .min(shared.config.limits.body_bytes_max),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

fn metrics(state: &CoreState) -> Result<Response<Body>, ApiError> {
    state
        .shared
        .metrics
        .refresh_disks(&state.shared.config.data_dirs);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.shared.registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metricsError",
            e.to_string(),
        )
    })?;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

pub(crate) fn verification_failed(
    state: &CoreState,
    what: &'static str,
    message: String,
) -> ApiError {
    state
        .shared
        .metrics
        .verification_failures
        .get_or_create(&ReasonLabel { reason: what })
        .inc();
    ApiError::bad_request("verificationFailed", message)
}

async fn put_metadata(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    epochs: u32,
    deletable: bool,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    // Version, encoding, length, ULEB(n) and n tagged pairs.
    let format_max = (2 + 8 + 5 + n * 66) as u64;
    let limit = format_max.min(state.shared.config.limits.body_bytes_max);
    let (body, _reservation) = read_body(state, request, limit).await?;
    let metadata = decode_metadata(&body)
        .map_err(|e| ApiError::bad_request("invalidBcs", format!("metadata: {e}")))?;
    metadata
        .verify(&blob_id, n)
        .map_err(|e| verification_failed(state, "metadata", e.to_string()))?;
    let layout = metadata
        .layout()
        .map_err(|e| verification_failed(state, "metadata", e.to_string()))?;
    let end_epoch = state
        .shared
        .committee
        .current_epoch()
        .saturating_add(epochs);
    let (end_epoch, deletable) = state
        .store_metadata(&blob_id, body, metadata, layout, end_epoch, deletable)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "blobId": blob_id.to_string(),
            "stored": "metadata",
            "endEpoch": end_epoch,
            "deletable": deletable,
        }),
    ))
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

/// `DELETE /v1/blobs/{id}/metadata?endEpoch=E`: deletes the blob on this node only.
async fn delete_metadata(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    end_epoch: u32,
) -> Result<Response<Body>, ApiError> {
    let (deleted, end_epoch) = match state.delete_here(&blob_id, end_epoch).await? {
        Deleted::Now { end_epoch } => ("now", end_epoch),
        Deleted::Before { end_epoch } => ("before", end_epoch),
        Deleted::Permanent => return Err(not_deletable(&blob_id, &state.shared.me.name)),
        Deleted::Unknown => {
            return Err(ApiError::not_found(
                "blobNotFound",
                format!("this node has no metadata for blob {blob_id}"),
            ))
        }
    };
    Ok(json_response(
        StatusCode::OK,
        json!({"blobId": blob_id.to_string(), "deleted": deleted, "endEpoch": end_epoch}),
    ))
}

async fn get_metadata(state: &Rc<CoreState>, blob_id: BlobId) -> Result<Response<Body>, ApiError> {
    match state.metadata_record(&blob_id).await? {
        Some(crate::owner::Found { data: bytes, .. }) => {
            state.shared.metrics.sent_bytes.inc_by(bytes.len() as u64);
            Ok(octets(bytes))
        }
        None => Err(ApiError::not_found(
            "blobNotFound",
            format!("this node has no metadata for blob {blob_id}"),
        )),
    }
}

/// The index of the sliver of `kind` in pair `pair`.
pub(crate) fn sliver_index(kind: SliverKind, pair: u16, n: usize) -> usize {
    match kind {
        SliverKind::Primary => pair.into(),
        SliverKind::Secondary => n - 1 - usize::from(pair),
    }
}

async fn put_sliver(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    pair: u16,
    shard: u16,
    kind: SliverKind,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    let config = floe_codec::EncodingConfig::new(n as u16).expect("the committee's n is valid");
    let symbols = kind.n_symbols(&config.layout(0).expect("an empty blob has a layout"));
    // ULEB length, the symbols at the largest symbol size, symbol size and index.
    let format_max = (5 + symbols * SYMBOL_BYTES_MAX + 4) as u64;
    let limit = format_max.min(state.shared.config.limits.body_bytes_max);
    let (body, _reservation) = read_body(state, request, limit).await?;
    let Some(known) = state.metadata(&blob_id).await? else {
        return Err(ApiError::not_found(
            "blobNotFound",
            format!("this node has no metadata for blob {blob_id}: store the metadata first"),
        ));
    };
    let sliver = decode_sliver(kind, &body)
        .map_err(|e| ApiError::bad_request("invalidBcs", format!("{kind} sliver: {e}")))?;
    let index = sliver_index(kind, pair, n);
    if usize::from(sliver.index) != index {
        return Err(ApiError::bad_request(
            "wrongSliverIndex",
            format!(
                "pair {pair} holds {kind} sliver {index}, the body is sliver {}",
                sliver.index
            ),
        ));
    }
    floe_codec::verify_sliver(
        &known.metadata,
        &known.layout,
        kind,
        index,
        sliver.symbol_bytes.into(),
        &sliver.data,
        &mut state.scratch.borrow_mut(),
    )
    .map_err(|e| verification_failed(state, "sliver", e.to_string()))?;
    drop(sliver);
    let record = Record {
        key: Key {
            blob_id: blob_id.0,
            kind: record_kind(kind),
            shard,
        },
        end_epoch: known.end_epoch,
        data: body,
    };
    let core = state.shared.owners.core_of_shard(shard);
    state.store_record(core, record).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"blobId": blob_id.to_string(), "stored": kind.as_str(), "pair": pair, "shard": shard}),
    ))
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
        Err(other) => Err(storage_error(other)),
    }
}

async fn get_sliver(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    shard: u16,
    kind: SliverKind,
) -> Result<Response<Body>, ApiError> {
    match load_sliver(state, &blob_id, shard, kind).await? {
        Some(bytes) => {
            state.shared.metrics.sent_bytes.inc_by(bytes.len() as u64);
            Ok(octets(bytes))
        }
        None => Err(ApiError::not_found(
            "sliverNotFound",
            format!(
                "this node does not hold the {kind} sliver of shard {shard} for blob {blob_id}"
            ),
        )),
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

async fn status(state: &Rc<CoreState>, blob_id: BlobId) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    let held = held(state, &blob_id).await?;
    let metadata = held.iter().find(|h| h.kind == RecordKind::Metadata);
    let pairs = |kind: RecordKind| {
        let mut pairs: Vec<usize> = held
            .iter()
            .filter(|h| h.kind == kind)
            .map(|h| blob_id.pair_for_shard(h.shard.into(), n))
            .collect();
        pairs.sort_unstable();
        pairs
    };
    let deleted = match metadata {
        Some(_) => None,
        None => state.deleted(&blob_id).await?,
    };
    Ok(json_response(
        StatusCode::OK,
        json!({
            "blobId": blob_id.to_string(),
            "known": metadata.is_some(),
            "endEpoch": metadata.map(|m| m.end_epoch).or(deleted),
            "deletable": metadata.map(|m| m.flags & FLAG_DELETABLE != 0),
            "deleted": deleted.is_some(),
            "primaryPairs": pairs(RecordKind::Primary),
            "secondaryPairs": pairs(RecordKind::Secondary),
        }),
    ))
}

async fn recovery_symbols(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    target_pairs: &[u16],
    target_kind: SliverKind,
    limit: Option<u32>,
) -> Result<Response<Body>, ApiError> {
    for &pair in target_pairs {
        check_pair(pair, state.n(), "targetPair")?;
    }
    let Some(known) = state.metadata(&blob_id).await? else {
        return Err(ApiError::not_found(
            "blobNotFound",
            format!("this node has no metadata for blob {blob_id}"),
        ));
    };
    // The answer is built in memory: at most one symbol per source per target.
    let needed = target_kind.n_symbols(&known.layout);
    let per_target = limit.map_or(needed, |l| (l as usize).min(needed));
    let estimate =
        (target_pairs.len() * per_target * recovery_symbol_bytes_max(&known.layout)) as u64;
    if estimate > state.shared.config.limits.buffer_bytes_per_core {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "answerTooLarge",
            format!(
                "{} target slivers would take up to {estimate} bytes of symbols, over this \
                 node's {} per core; ask for fewer targetPairs",
                target_pairs.len(),
                state.shared.config.limits.buffer_bytes_per_core
            ),
        ));
    }
    let _reservation = reserve(state, estimate)?;
    let symbols =
        local_recovery_symbols(state, &blob_id, &known, target_pairs, target_kind, limit).await?;
    if symbols.is_empty() {
        return Err(ApiError::not_found(
            "sliverNotFound",
            format!(
                "this node holds no {} sliver of blob {blob_id} to recover from",
                target_kind.orthogonal()
            ),
        ));
    }
    let body = encode_recovery_symbols(&symbols);
    state.shared.metrics.sent_bytes.inc_by(body.len() as u64);
    Ok(octets(Bytes::from(body)))
}

/// The most bytes one recovery symbol takes on the wire: the symbol, a Merkle proof for the
/// largest committee (13 levels), and framing.
pub(crate) fn recovery_symbol_bytes_max(layout: &BlobLayout) -> usize {
    layout.symbol_bytes + 32 * 13 + 16
}

/// Symbols for rebuilding sliver `target_kind` of each of `target_pairs`: one from each
/// sliver of the other kind this node holds, at most `min(limit, k)` per target; each source
/// sliver is expanded once for all targets.
pub(crate) async fn local_recovery_symbols(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    target_pairs: &[u16],
    target_kind: SliverKind,
    limit: Option<u32>,
) -> Result<Vec<RecoverySymbol>, ApiError> {
    let n = state.n();
    let targets: Vec<usize> = target_pairs
        .iter()
        .map(|&pair| sliver_index(target_kind, pair, n))
        .collect();
    let source_kind = target_kind.orthogonal();
    let needed = target_kind.n_symbols(&known.layout);
    let limit = limit.map_or(needed, |l| (l as usize).min(needed));
    let sources: Vec<Held> = held(state, blob_id)
        .await?
        .into_iter()
        .filter(|h| h.kind == record_kind(source_kind))
        .collect();
    let mut symbols = Vec::with_capacity(limit.min(sources.len()) * targets.len());
    let mut used = 0;
    for source in sources {
        if used == limit {
            break;
        }
        let Some(bytes) = load_sliver(state, blob_id, source.shard, source_kind).await? else {
            continue;
        };
        let pair = blob_id.pair_for_shard(source.shard.into(), n) as u16;
        let source_index = sliver_index(source_kind, pair, n);
        // Stored slivers were verified on arrival and passed their checksum on this read; the
        // expansion checks the root again anyway, and a failure means skip, never send.
        let Ok(header) = sliver_header(&bytes) else {
            continue;
        };
        let Ok(expanded) = ExpandedSliver::new(
            &known.metadata,
            &known.layout,
            source_kind,
            source_index,
            &bytes[header.data],
        ) else {
            continue;
        };
        used += 1;
        symbols.extend(targets.iter().map(|&t| expanded.recovery_symbol(t)));
    }
    Ok(symbols)
}

/// `PUT /v1/blobs/{id}/slivers`: a batch of slivers, each checked like a single PUT; if any
/// fails, nothing is stored. Stored with one commit per owning core.
async fn put_slivers(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    let limit = state.shared.config.limits.body_bytes_max;
    let (body, _reservation) = read_body(state, request, limit).await?;
    let Some(known) = state.metadata(&blob_id).await? else {
        return Err(ApiError::not_found(
            "blobNotFound",
            format!("this node has no metadata for blob {blob_id}: store the metadata first"),
        ));
    };
    let entries = decode_sliver_batch(&body)
        .map_err(|e| ApiError::bad_request("invalidBcs", format!("sliver batch: {e}")))?;
    let mut per_core: Vec<Vec<Record>> = (0..state.shared.owners.cores())
        .map(|_| Vec::new())
        .collect();
    for entry in &entries {
        let shard = shard_of(state, &blob_id, entry.pair)?;
        let (kind, pair) = (entry.kind, entry.pair);
        let sliver = &body[entry.body.clone()];
        let header = sliver_header(sliver).expect("the batch decoder checked every sliver");
        let index = sliver_index(kind, pair, n);
        if usize::from(header.index) != index {
            return Err(ApiError::bad_request(
                "wrongSliverIndex",
                format!(
                    "pair {pair} holds {kind} sliver {index}, the batch has sliver {}",
                    header.index
                ),
            ));
        }
        floe_codec::verify_sliver(
            &known.metadata,
            &known.layout,
            kind,
            index,
            header.symbol_bytes.into(),
            &sliver[header.data],
            &mut state.scratch.borrow_mut(),
        )
        .map_err(|e| verification_failed(state, "sliver", format!("pair {pair}: {e}")))?;
        per_core[state.shared.owners.core_of_shard(shard)].push(Record {
            key: Key {
                blob_id: blob_id.0,
                kind: record_kind(kind),
                shard,
            },
            end_epoch: known.end_epoch,
            data: body.slice(entry.body.clone()),
        });
    }
    store_per_core(state, per_core).await?;
    Ok(json_response(
        StatusCode::OK,
        json!({"blobId": blob_id.to_string(), "stored": entries.len()}),
    ))
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

/// `GET /v1/blobs/{id}/slivers?kind=&pairs=`: the listed slivers this node holds, as a batch.
async fn get_slivers(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    kind: SliverKind,
    pairs: &[u16],
) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    let mut found = Vec::new();
    for &pair in pairs {
        check_pair(pair, n, "pair")?;
        let shard = blob_id.shard_for_pair(pair.into(), n) as u16;
        if !state.shared.owned[usize::from(shard)] {
            continue;
        }
        if let Some(bytes) = load_sliver(state, &blob_id, shard, kind).await? {
            found.push((pair, bytes));
        }
    }
    let body = encode_sliver_batch(found.iter().map(|(pair, b)| (*pair, kind, b.as_ref())));
    state.shared.metrics.sent_bytes.inc_by(body.len() as u64);
    Ok(octets(Bytes::from(body)))
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

/// `GET /v1/blobs?after=&limit=`: `{"blobs": [{"blobId", "endEpoch", "deletable"} or
/// {"blobId", "endEpoch", "deleted": true}], "next": ID|null}`.
async fn list_blobs(
    state: &Rc<CoreState>,
    after: Option<BlobId>,
    limit: u32,
) -> Result<Response<Body>, ApiError> {
    let page = list_metadata(state, after.map(|id| id.0), limit as usize).await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|l| BlobId(l.blob_id).to_string()))
        .flatten();
    let blobs: Vec<_> = page
        .iter()
        .map(|l| {
            let id = BlobId(l.blob_id).to_string();
            match l.state {
                BlobState::Deleted => {
                    json!({"blobId": id, "endEpoch": l.end_epoch, "deleted": true})
                }
                state => json!({
                    "blobId": id,
                    "endEpoch": l.end_epoch,
                    "deletable": state == BlobState::Deletable,
                }),
            }
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"blobs": blobs, "next": next}),
    ))
}
