//! The user API's writes (`api.md`, "Users"): the publisher (`PUT /v1/blobs`) and deletion
//! (`DELETE /v1/blobs/{id}`), served by every node.
//!
//! The publisher encodes the blob (on glommio's blocking pool, which runs the codec's rayon
//! work on every core), stores this node's sliver pairs itself and sends every other node its
//! metadata and its pairs in batches, all nodes at once. It answers as soon as the nodes that
//! confirmed hold at least `n - f` shards (2f + 1 when n = 3f + 1): a hung or slow node (up to
//! f shards' worth) does not hold up the answer. The stores still under way then finish in the
//! background, bounded by the peer client's deadlines; healing covers what they miss.

use std::rc::Rc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

use bytes::Bytes;
use floe_codec::{encode_metadata, encode_sliver_batch, BlobId, EncodingConfig, SliverKind};
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::store::Key;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::budget::{reserve, BufferReservation};
use crate::config::Member;
use crate::http::body::{collect_source, BodySource, RequestBody};
use crate::http::body::{json_response, Body};
use crate::http::error::ApiError;
use crate::owner::{Deleted, Record};
use crate::peer_client::{
    peer_request, Patience, PeerError, PeerRequest, ACK_BYTES_MAX, LISTING_BYTES_MAX,
};
use crate::protocol::{DeleteAnswer, DeleteTally, DeleteVerdict, Tally};
use crate::spool::{Plan, Source, Spooled};
use crate::state::{
    blob_deleted, not_deletable, record_kind, sliver_index, store_per_core, CoreState,
};

/// Bytes of slivers sent to one peer in one request. Why: large enough that a 64 MiB blob
/// takes a handful of requests per peer, small enough that the peer's body limit and memory
/// budget are never a concern and a retry repeats little.
const BATCH_BYTES_MAX: usize = 16 << 20;

pub use crate::protocol::write_quorum;

/// How a blob is stored.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Epochs from now the blob is kept.
    pub epochs: u32,
    pub deletable: bool,
    /// Store a deletable blob even if it was deleted here before (S3 objects, whose blobs are
    /// deleted when their last name goes and may be named again later).
    pub revive: bool,
}

/// What [`store`] did.
#[derive(Clone, Debug)]
pub struct Stored {
    pub blob_id: BlobId,
    pub size: u64,
    /// `newlyCreated` or `alreadyCertified`.
    pub kind: &'static str,
    pub end_epoch: u32,
    pub deletable: bool,
    pub confirmed: usize,
    pub failed: Vec<String>,
    pub pending: Vec<String>,
}

/// `PUT /v1/blobs?epochs=N`.
pub async fn publish(
    state: &Rc<CoreState>,
    epochs: u32,
    deletable: bool,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let declared = crate::http::body::declared_length(request.headers())?;
    let stall = Duration::from_secs(state.shared.config.limits.idle_timeout_seconds);
    let mut body = RequestBody {
        body: request.into_body(),
        stall,
    };
    let intake = take_in(state, declared, &mut body).await?;
    let options = StoreOptions {
        epochs,
        deletable,
        revive: false,
    };
    let stored = store(state, intake, options).await?;
    let blob_id = stored.blob_id.to_string();
    let mut body = json!({
        stored.kind: {
            "blobId": blob_id,
            "size": stored.size,
            "encodingType": "RS2",
            "endEpoch": stored.end_epoch,
            "deletable": stored.deletable,
            "shardsConfirmed": stored.confirmed,
            "blobObject": {
                "blobId": blob_id,
                "size": stored.size,
                "encodingType": "RS2",
                "deletable": stored.deletable,
                "storage": {"endEpoch": stored.end_epoch},
            },
        }
    });
    if !stored.failed.is_empty() {
        body[stored.kind]["failedNodes"] = json!(stored.failed);
    }
    if !stored.pending.is_empty() {
        body[stored.kind]["pendingNodes"] = json!(stored.pending);
    }
    Ok(json_response(StatusCode::OK, body))
}

/// A blob taken in and encoded ([`take_in`]), ready to [`store`].
pub struct Intake {
    source: Source,
    reservation: BufferReservation,
}

impl Intake {
    pub fn blob_id(&self) -> &BlobId {
        self.source.blob_id()
    }

    pub fn size(&self) -> u64 {
        self.source.layout().blob_bytes
    }
}

/// Stores an encoded blob on the committee: this node's pairs here, every other node's sent
/// to it, all at once; returns once the nodes that confirmed hold `n - f` shards (the rest
/// finish in the background). 503 `notEnoughShards` below that.
pub async fn store(
    state: &Rc<CoreState>,
    intake: Intake,
    options: StoreOptions,
) -> Result<Stored, ApiError> {
    let StoreOptions {
        epochs,
        deletable,
        revive,
    } = options;
    let Intake {
        source,
        reservation,
    } = intake;
    let n = state.n();
    let blob_id = *source.blob_id();
    let size = source.layout().blob_bytes;
    let end_epoch = state.shared.epoch().saturating_add(epochs);
    let quorum = write_quorum(n);
    // The home core's record, not a cache: whether the blob is deletable may have changed.
    match state.metadata_record(&blob_id).await? {
        Some(known) => {
            let known_deletable = known.flags & FLAG_DELETABLE != 0;
            // A permanent store of a deletable blob makes it permanent: stored again.
            if known.end_epoch >= end_epoch && (deletable || !known_deletable) {
                let confirmed = stored_shards(state, &blob_id, quorum).await;
                if confirmed >= quorum {
                    register(state, &blob_id, size, known.end_epoch, known_deletable).await?;
                    return Ok(Stored {
                        blob_id,
                        size,
                        kind: "alreadyCertified",
                        end_epoch: known.end_epoch,
                        deletable: known_deletable,
                        confirmed,
                        failed: Vec::new(),
                        pending: Vec::new(),
                    });
                }
            }
        }
        None if deletable && !revive => {
            if let Some(until) = state.deleted(&blob_id).await? {
                return Err(blob_deleted(&blob_id, until));
            }
        }
        None => {}
    }
    let encoded = Rc::new(source);
    let stored_at = std::time::Instant::now();
    let batch = batch_bytes(state, encoded.layout());
    let me = state.shared.view().me.name.clone();
    // Owned futures: the stores still under way when the answer goes out finish in the
    // background (bounded by the peer client's deadlines and retries).
    let mut stores: FuturesUnordered<_> = state
        .shared
        .view()
        .committee
        .members
        .iter()
        .map(|member| {
            let (state, encoded, member) = (state.clone(), encoded.clone(), member.clone());
            let here = member.name == me;
            async move {
                // This node's answer says whether the blob stays deletable (merged with any
                // earlier store of it).
                let result = if here {
                    store_here(&state, &encoded, batch, end_epoch, deletable, revive)
                        .await
                        .map(Some)
                        .map_err(|e| e.to_string())
                } else {
                    store_on_peer(&state, &member, &encoded, batch, epochs, deletable)
                        .await
                        .map(|()| None)
                        .map_err(|e| e.to_string())
                };
                (member, result)
            }
        })
        .collect();
    let mut tally = Tally::new(n, &me);
    let mut stored_deletable = deletable;
    while let Some((member, result)) = stores.next().await {
        match result {
            Ok(here_deletable) => {
                tally.confirmed_by(&member.name, member.shards.len());
                stored_deletable = here_deletable.unwrap_or(stored_deletable);
            }
            Err(message) => {
                tracing::warn!(blob = %blob_id, node = %member.name, %message, "a node did not store its slivers; sync will bring them");
                tally.failed_by(&member.name, &message);
            }
        }
        if tally.done() {
            break;
        }
    }
    let view = state.shared.view();
    let pending = tally.pending(view.committee.members.iter().map(|m| m.name.as_str()));
    if !stores.is_empty() {
        finish_in_background(state, blob_id, stores, reservation);
    }
    let (confirmed, failed) = (tally.confirmed(), tally.failed().to_vec());
    if !tally.reached() {
        return Err(ApiError::unavailable(
            "notEnoughShards",
            format!(
                "only {confirmed} of {n} shards confirmed blob {blob_id}; a write needs {quorum}. \
                 Failed: {}",
                failed.join("; ")
            ),
        ));
    }
    tracing::debug!(blob = %blob_id, seconds = stored_at.elapsed().as_secs_f64(), "stored on the write quorum");
    register(state, &blob_id, size, end_epoch, stored_deletable).await?;
    Ok(Stored {
        blob_id,
        size,
        kind: "newlyCreated",
        end_epoch,
        deletable: stored_deletable,
        confirmed,
        failed,
        pending,
    })
}

/// Lets the stores still under way finish on this core's executor after the answer went out,
/// holding the encoding's memory reservation until the last one ends. Bounded: each store ends
/// within the peer client's deadlines and retries; what fails is logged, and healing brings
/// those nodes their slivers. `floe_publish_background_stores` counts them.
fn finish_in_background<F>(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    mut stores: FuturesUnordered<F>,
    reservation: BufferReservation,
) where
    F: std::future::Future<Output = (Member, Result<Option<bool>, String>)> + 'static,
{
    let metrics = state.shared.metrics.clone();
    metrics.publish_background.inc_by(stores.len() as i64);
    crate::task::spawn_detached("publish_background", async move {
        let _reservation = reservation;
        while let Some((member, result)) = stores.next().await {
            metrics.publish_background.dec();
            if let Err(message) = result {
                tracing::warn!(blob = %blob_id, node = %member.name, %message, "a node did not store its slivers after the answer; sync will bring them");
            }
        }
    });
}

/// Blobs up to this size are encoded in memory at once; larger ones (and bodies of unknown
/// length) are spooled to disk and encoded in strips (`spool`). Why: in memory a blob costs
/// about 5.5x its size while it is encoded, which is the fastest way for small blobs and
/// bounded here; the spool keeps a big one's memory independent of its size.
pub const MEMORY_BLOB_BYTES_MAX: u64 = 32 << 20;

/// Takes a blob's bytes from `body` (which says it holds `declared` bytes, if it says) and
/// encodes them: in memory (a declared length of at most [`MEMORY_BLOB_BYTES_MAX`] that fits
/// the core's buffer budget with its encoding), else through the spool. 413 only above the
/// code's limit at the committee's n; 507 when the spool's disk cannot take it; 503 while
/// other requests hold the memory it needs. The intake holds the memory reservation the rest
/// of the store runs under.
pub async fn take_in(
    state: &Rc<CoreState>,
    declared: Option<u64>,
    body: &mut impl BodySource,
) -> Result<Intake, ApiError> {
    registry_writable(state)?;
    let n = state.n();
    let config = EncodingConfig::new(n as u16).expect("the committee's n is valid");
    let code_max = config.blob_bytes_max();
    let too_large = |err: ApiError| {
        if err.status != StatusCode::PAYLOAD_TOO_LARGE {
            return err;
        }
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            err.code,
            format!(
                "{}: the largest blob is {code_max} bytes (the code's limit at n = {n})",
                err.message
            ),
        )
    };
    if let Some(bytes) = declared.filter(|b| *b > code_max) {
        return Err(too_large(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bodyTooLarge",
            format!("the body declares {bytes} bytes"),
        )));
    }
    let in_memory = state
        .shared
        .memory_blob_bytes_max()
        .min(MEMORY_BLOB_BYTES_MAX);
    if let Some(bytes) = declared.filter(|b| *b <= in_memory) {
        let layout = config.layout(bytes).map_err(|e| {
            too_large(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "bodyTooLarge",
                e.to_string(),
            ))
        })?;
        // The body and its encoded slivers live as long as the request.
        let reservation = reserve(state, bytes + layout.encoded_bytes_total())?;
        let body = collect_source(body, bytes).await?;
        if (body.len() as u64) < bytes {
            return Err(ApiError::bad_request(
                "incompleteBody",
                format!(
                    "the body ended after {} of the {bytes} bytes it declared",
                    body.len()
                ),
            ));
        }
        state
            .shared
            .metrics
            .received_bytes
            .inc_by(body.len() as u64);
        let encoded = glommio::executor()
            .spawn_blocking(move || floe_codec::encode(&config, &body))
            .await
            .map_err(|e| {
                too_large(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bodyTooLarge",
                    e.to_string(),
                ))
            })?;
        return Ok(Intake {
            source: Source::Memory(encoded),
            reservation,
        });
    }
    // Spooled: memory for the largest layout this body may have, and a batch per member.
    let largest = config
        .layout(declared.unwrap_or(code_max))
        .expect("within the code's limit");
    let members = state.shared.view().committee.members.len() as u64;
    let plan = Plan::for_budget(state.shared.config.limits.buffer_bytes_per_core);
    let memory = plan.memory_bytes(&largest) + members * batch_bytes(state, &largest) as u64;
    let reservation = reserve(state, memory)?;
    let mut spooled = Spooled::create(&state.shared.spool_dir, &state.shared.spool, plan)?;
    if let Some(bytes) = declared {
        // Refused before the body is read if the disk cannot take it.
        spooled.promise(&config.layout(bytes).expect("within the code's limit"))?;
    }
    let started = std::time::Instant::now();
    let received = spooled
        .receive(&config, body, declared.unwrap_or(code_max))
        .await
        .map_err(too_large)?;
    if declared.is_some_and(|d| d != received) {
        return Err(ApiError::bad_request(
            "incompleteBody",
            format!(
                "the body ended after {received} of the {} bytes it declared",
                declared.unwrap_or(0)
            ),
        ));
    }
    state.shared.metrics.received_bytes.inc_by(received);
    let layout = config.layout(received).expect("within the code's limit");
    spooled.promise(&layout)?;
    let spooled_in = started.elapsed();
    spooled.encode(layout).await?;
    tracing::info!(
        blob = %spooled.blob_id(),
        bytes = received,
        receive_seconds = spooled_in.as_secs_f64(),
        encode_seconds = (started.elapsed() - spooled_in).as_secs_f64(),
        "spooled and encoded a big blob"
    );
    Ok(Intake {
        source: Source::Spooled(spooled),
        reservation,
    })
}

/// Bytes of slivers read and sent (or stored) at once per node a blob is published to: at
/// most [`BATCH_BYTES_MAX`], at least one sliver pair, and small enough that a batch per
/// committee member takes at most a quarter of the core's buffer budget.
fn batch_bytes(state: &CoreState, layout: &floe_codec::BlobLayout) -> usize {
    let members = state.shared.view().committee.members.len().max(1);
    let budget = state.shared.config.limits.buffer_bytes_per_core as usize;
    let pair = layout.primary_sliver_bytes() + layout.secondary_sliver_bytes() + 32;
    (budget / (4 * members)).min(BATCH_BYTES_MAX).max(pair)
}

/// The sliver pairs of `shards` in groups of at most `batch` bytes (at least one pair each).
fn pair_batches(source: &Source, shards: &[u16], batch: usize) -> Vec<Vec<(u16, u16)>> {
    let layout = source.layout();
    let n = layout.config.n_shards();
    let pair_bytes = layout.primary_sliver_bytes() + layout.secondary_sliver_bytes();
    let per_batch = (batch / pair_bytes).max(1);
    shards
        .chunks(per_batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&shard| {
                    (
                        shard,
                        source.blob_id().pair_for_shard(shard.into(), n) as u16,
                    )
                })
                .collect()
        })
        .collect()
}

/// The slivers of `pairs` (shard, pair): primary and secondary of each, as BCS bodies.
async fn read_pairs(
    source: &Rc<Source>,
    pairs: &[(u16, u16)],
) -> Result<Vec<(u16, u16, SliverKind, Vec<u8>)>, ApiError> {
    let n = source.layout().config.n_shards();
    let wanted: Vec<(u16, u16, SliverKind)> = pairs
        .iter()
        .flat_map(|&(shard, pair)| {
            [SliverKind::Primary, SliverKind::Secondary].map(|kind| (shard, pair, kind))
        })
        .collect();
    let bodies = source
        .slivers(
            wanted
                .iter()
                .map(|&(_, pair, kind)| (kind, sliver_index(kind, pair, n)))
                .collect(),
        )
        .await?;
    Ok(wanted
        .into_iter()
        .zip(bodies)
        .map(|((shard, pair, kind), body)| (shard, pair, kind, body))
        .collect())
}

/// Stores this node's sliver pairs and then metadata of an encoded blob (no verification: this
/// node encoded them), `batch` bytes of slivers at a time. Returns whether the blob is
/// deletable as stored.
///
/// Slivers first, metadata last. Why: the metadata record is what makes a blob visible here
/// (listed, readable, learned by peers); a node killed in between leaves only slivers that no
/// metadata names, never a blob that is listed but cannot be read (found by the crash loop,
/// issue 18). Peers get the metadata first: they verify each sliver against it.
async fn store_here(
    state: &Rc<CoreState>,
    source: &Rc<Source>,
    batch: usize,
    end_epoch: u32,
    deletable: bool,
    revive: bool,
) -> Result<bool, ApiError> {
    let blob_id = *source.blob_id();
    // The slivers live at least as long as the metadata they will be stored under (a store
    // never shortens a lifetime; a later extension reaches the slivers through the metadata).
    let sliver_end_epoch = match state.metadata_record(&blob_id).await? {
        Some(found) => found.end_epoch.max(end_epoch),
        None => end_epoch,
    };
    for pairs in pair_batches(source, &state.shared.view().me.shards, batch) {
        let mut per_core: Vec<Vec<Record>> = (0..state.shared.owners.cores())
            .map(|_| Vec::new())
            .collect();
        for (shard, _, kind, body) in read_pairs(source, &pairs).await? {
            per_core[state.shared.owners.core_of_shard(shard)].push(Record {
                key: Key {
                    blob_id: blob_id.0,
                    kind: record_kind(kind),
                    shard,
                },
                end_epoch: sliver_end_epoch,
                data: Bytes::from(body),
            });
        }
        store_per_core(state, per_core).await?;
    }
    let (_, deletable) = state
        .store_metadata(
            &blob_id,
            Bytes::from(encode_metadata(source.metadata())),
            source.metadata().clone(),
            *source.layout(),
            end_epoch,
            deletable,
            revive,
        )
        .await?;
    Ok(deletable)
}

/// Sends a peer the blob's metadata, then its sliver pairs in batches of at most `batch`
/// bytes.
async fn store_on_peer(
    state: &Rc<CoreState>,
    member: &Member,
    source: &Rc<Source>,
    batch: usize,
    epochs: u32,
    deletable: bool,
) -> Result<(), PeerError> {
    let blob_id = *source.blob_id();
    let metadata = Bytes::from(encode_metadata(source.metadata()));
    let path = match deletable {
        true => format!("/v1/blobs/{blob_id}/metadata?epochs={epochs}&deletable=true"),
        false => format!("/v1/blobs/{blob_id}/metadata?epochs={epochs}"),
    };
    let put = |path, body| PeerRequest {
        method: Method::PUT,
        path,
        body: Some(body),
        limit: ACK_BYTES_MAX,
        patience: Patience::Transfer,
    };
    peer_request(state, member, put(&path, metadata))
        .await?
        .ok_body(member)?;
    let path = format!("/v1/blobs/{blob_id}/slivers");
    for pairs in pair_batches(source, &member.shards, batch) {
        let slivers = read_pairs(source, &pairs)
            .await
            .map_err(|e| PeerError::Local(e.to_string()))?;
        let body = encode_sliver_batch(
            slivers
                .iter()
                .map(|(_, pair, kind, body)| (*pair, *kind, body.as_slice())),
        );
        drop(slivers);
        peer_request(state, member, put(&path, Bytes::from(body)))
            .await?
            .ok_body(member)?;
    }
    Ok(())
}

/// Shards whose node holds both slivers of the blob, over the whole committee (nodes that do
/// not answer count for nothing).
async fn stored_shards(state: &Rc<CoreState>, blob_id: &BlobId, quorum: usize) -> usize {
    let n = state.n();
    let me = &state.shared.view().me.name;
    let view = state.shared.view();
    let mut counts: FuturesUnordered<_> = view
        .committee
        .members
        .iter()
        .map(|member| async move {
            if &member.name == me {
                let held = crate::state::held(state, blob_id).await.unwrap_or_default();
                let has = |kind| held.iter().filter(|h| h.kind == kind).count();
                return has(RecordKind::Primary).min(has(RecordKind::Secondary));
            }
            let path = format!("/v1/blobs/{blob_id}/status");
            let asked = PeerRequest::get(&path, LISTING_BYTES_MAX, Patience::Lookup);
            let Ok(answer) = peer_request(state, member, asked).await else {
                return 0;
            };
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
                return 0;
            };
            let pairs = |key: &str| -> Vec<u64> {
                status[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                    .unwrap_or_default()
            };
            let secondary = pairs("secondaryPairs");
            // Only pairs of shards the committee gives this member count.
            pairs("primaryPairs")
                .into_iter()
                .filter(|p| secondary.contains(p) && (*p as usize) < n)
                .filter(|p| {
                    let shard = blob_id.shard_for_pair(*p as usize, n) as u16;
                    member.shards.binary_search(&shard).is_ok()
                })
                .count()
        })
        .collect();
    // Enough is enough: a hung node is not waited for once the others make the quorum.
    let mut total = 0;
    while let Some(count) = counts.next().await {
        total += count;
        if total >= quorum {
            break;
        }
    }
    total
}

/// 503 at once while the registry (etcd) cannot take a write: nothing is stored that could
/// not be registered.
pub(crate) fn registry_writable(state: &CoreState) -> Result<(), ApiError> {
    match state.shared.control.as_ref().and_then(|c| c.unavailable()) {
        None => Ok(()),
        Some(why) => Err(ApiError::unavailable(
            "registryUnavailable",
            format!("{why}: stores and deletions wait for it (reads go on); retry later"),
        )),
    }
}

/// Records a blob stored on the write quorum in the registry (nodes on etcd): 503 if etcd
/// does not take it (the blob is stored, and a retry of the same store registers it); 409
/// `blobDeleted` if the registry holds the blob deleted (a deletion registered before this
/// deletable store: every node follows the registry and deletes what this store left).
async fn register(
    state: &CoreState,
    blob_id: &BlobId,
    size: u64,
    end_epoch: u32,
    deletable: bool,
) -> Result<(), ApiError> {
    let Some(control) = &state.shared.control else {
        return Ok(());
    };
    let record = floe_control::BlobRecord {
        size,
        end_epoch,
        state: if deletable {
            floe_control::BlobState::Deletable
        } else {
            floe_control::BlobState::Permanent
        },
    };
    let merged = control.register(*blob_id, record).await.map_err(|why| {
        ApiError::unavailable(
            "registryUnavailable",
            format!(
                "blob {blob_id} is stored but not registered ({why}); store it again once etcd \
                 answers"
            ),
        )
    })?;
    if merged.state == floe_control::BlobState::Deleted {
        return Err(blob_deleted(blob_id, merged.end_epoch));
    }
    Ok(())
}

/// `DELETE /v1/blobs/{id}`: deletes a deletable blob on this node, then on every peer. A blob
/// stored permanent anywhere answers 409 (where this node holds it permanent, before anything
/// is deleted); peers that cannot be reached learn of the deletion through sync.
pub async fn delete(state: &Rc<CoreState>, blob_id: BlobId) -> Result<Response<Body>, ApiError> {
    registry_writable(state)?;
    let me = &state.shared.view().me.name;
    let known_end = state
        .metadata_record(&blob_id)
        .await?
        .map_or(0, |found| found.end_epoch);
    // On etcd the registry decides: a permanent blob is refused before anything is deleted,
    // and the deletion is registered first, so that every node follows it even if this node
    // stops halfway or a node that holds the blob does not answer (the nodes' answers below
    // only hasten it). Also for a blob the registry never took (what a store that failed
    // before its write quorum left on some nodes).
    let registry = match &state.shared.control {
        Some(control) => {
            let unavailable = |why: String| {
                ApiError::unavailable(
                    "registryUnavailable",
                    format!("blob {blob_id} is not deleted: the registry does not answer ({why})"),
                )
            };
            let registered = control.lookup(blob_id).await.map_err(unavailable)?;
            if registered.is_some_and(|r| r.state == floe_control::BlobState::Permanent) {
                return Err(not_deletable(&blob_id, "the registry"));
            }
            let end_epoch = registered
                .map_or(known_end, |r| r.end_epoch.max(known_end))
                .max(state.shared.epoch());
            let merged = control
                .register(blob_id, deletion(end_epoch))
                .await
                .map_err(unavailable)?;
            if merged.state == floe_control::BlobState::Permanent {
                return Err(not_deletable(&blob_id, "the registry"));
            }
            Some(registered.is_some())
        }
        None => None,
    };
    let here = state.delete_here(&blob_id, known_end).await?;
    let view = state.shared.view();
    let Some(mut tally) = DeleteTally::new(me, view.me.shards.len(), state.n(), here, registry)
    else {
        return Err(not_deletable(&blob_id, me));
    };
    let path = format!("/v1/blobs/{blob_id}/metadata?endEpoch={}", tally.end_epoch);
    let peers = view.peers().map(|member| {
        let path = &path;
        async move {
            let asked = PeerRequest {
                method: Method::DELETE,
                path,
                body: None,
                limit: ACK_BYTES_MAX,
                patience: Patience::Lookup,
            };
            (member, peer_request(state, member, asked).await)
        }
    });
    for (member, answer) in futures::future::join_all(peers).await {
        let answer = match answer {
            Ok(answer) if answer.status == StatusCode::OK => DeleteAnswer::Deleted {
                end_epoch: serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v["endEpoch"].as_u64())
                    .and_then(|e| u32::try_from(e).ok())
                    .unwrap_or(0),
            },
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => DeleteAnswer::Unknown,
            Ok(answer) if answer.status == StatusCode::CONFLICT => DeleteAnswer::Permanent,
            Ok(answer) => {
                DeleteAnswer::Failed(format!("{}: {}", answer.status, answer.error_message()))
            }
            Err(message) => DeleteAnswer::Failed(message.to_string()),
        };
        tally.answer(&member.name, member.shards.len(), answer);
    }
    let verdict = tally.verdict();
    let (deleted, failed) = (&mut tally.deleted, &tally.failed);
    let end_epoch = match verdict {
        DeleteVerdict::Permanent => {
            let mut err = not_deletable(&blob_id, &tally.permanent.join(", "));
            if !deleted.is_empty() {
                err.message.push_str(&format!(
                    "; {} deleted it and get it back from the permanent copy through sync",
                    deleted.join(", ")
                ));
            }
            return Err(err);
        }
        DeleteVerdict::NotFound => {
            return Err(ApiError::not_found(
                "blobNotFound",
                format!("no node of the committee knows blob {blob_id}"),
            ))
        }
        DeleteVerdict::TooFew { shards, quorum } => {
            if here == Deleted::Unknown {
                // Remembered here too, so that sync never brings the blob back.
                state.delete_here(&blob_id, tally.end_epoch.max(1)).await?;
            }
            return Err(ApiError::unavailable(
                "notEnoughShards",
                format!(
                    "blob {blob_id} was deleted on {} ({shards} shards), but a deletion needs \
                     nodes holding {quorum}; the others learn of it through sync, and until \
                     then a store through them may succeed: delete it again. Did not answer: {}",
                    deleted.join(", "),
                    failed.join("; ")
                ),
            ));
        }
        DeleteVerdict::Unavailable => {
            return Err(ApiError::unavailable(
                "notEnoughNodes",
                format!(
                    "blob {blob_id} is unknown to the nodes that answered; {} did not: {}",
                    failed.len(),
                    failed.join("; ")
                ),
            ))
        }
        DeleteVerdict::Deleted {
            end_epoch,
            remember_here,
        } => {
            if remember_here {
                // Remember the deletion here too, so that sync never brings the blob back.
                state.delete_here(&blob_id, end_epoch).await?;
                deleted.insert(0, me.clone());
            }
            if let Some(control) = &state.shared.control {
                // The registry's record lives as long as the nodes' tombstones: registered
                // first with what this node knew, it could expire (and let a store racing
                // this deletion register a live record the nodes had deleted) before them.
                if let Err(why) = control.register(blob_id, deletion(end_epoch)).await {
                    tracing::warn!(blob = %blob_id, %why, "the deletion's end epoch is not registered; the first registration stands");
                }
            }
            end_epoch
        }
    };
    for name in failed {
        tracing::warn!(blob = %blob_id, node = %name, "a node did not confirm a deletion; sync will bring it");
    }
    Ok(json_response(
        StatusCode::OK,
        json!({
            "deleted": {
                "blobId": blob_id.to_string(),
                "endEpoch": end_epoch,
                "nodesDeleted": deleted,
                "failedNodes": failed,
            }
        }),
    ))
}

/// A registry record of a deletion kept until `end_epoch`.
fn deletion(end_epoch: u32) -> floe_control::BlobRecord {
    floe_control::BlobRecord {
        size: 0,
        end_epoch,
        state: floe_control::BlobState::Deleted,
    }
}
