//! The node (peer) API (`api.md`, "Nodes"): what peers call to store and fetch metadata,
//! slivers and recovery symbols, to list blobs and to delete one on this node. Every sliver
//! and metadata body is verified against the blob ID before it is stored.
//!
//! Boundary: handlers return a response or an [`ApiError`]; they reach storage through
//! [`CoreState`] and never call peers.

use std::rc::Rc;

use bytes::Bytes;
use floe_codec::{
    decode_metadata, decode_sliver, decode_sliver_batch, encode_recovery_symbols,
    encode_sliver_batch, sliver_header, BlobId, RecoverySymbol, SliverKind, SYMBOL_BYTES_MAX,
};
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::store::Key;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::budget::{read_body, reserve};
use crate::http::body::{json_response, octets, Body};
use crate::http::error::ApiError;
use crate::metrics::ReasonLabel;
use crate::owner::{BlobState, Deleted, Record};
use crate::protocol::ShardPage;
use crate::state::{
    held, list_metadata, load_sliver, not_deletable, record_kind, sliver_index, store_per_core,
    CachedMetadata, CoreState,
};

/// 400 `pairOutOfRange` unless `pair < n`; `what` names the parameter.
pub(crate) fn check_pair(pair: u16, n: usize, what: &str) -> Result<(), ApiError> {
    if usize::from(pair) >= n {
        return Err(ApiError::bad_request(
            "pairOutOfRange",
            format!("{what} {pair} is out of range: the committee has n = {n} shards"),
        ));
    }
    Ok(())
}

/// The shard holding `pair`, if this node holds it (`serving`: or gave it away this epoch and
/// still serves it, for reads).
pub(crate) fn shard_of(
    state: &CoreState,
    blob_id: &BlobId,
    pair: u16,
    serving: bool,
) -> Result<u16, ApiError> {
    let n = state.n();
    check_pair(pair, n, "sliver pair index")?;
    let shard = blob_id.shard_for_pair(pair.into(), n) as u16;
    let view = state.shared.view();
    let held = if serving {
        view.serves(shard)
    } else {
        view.owned[usize::from(shard)]
    };
    if !held {
        let view = state.shared.view();
        let owner = view.holder(shard);
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

pub(crate) async fn put_metadata(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    epochs: u32,
    deletable: bool,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    let format_max = floe_codec::metadata_bcs_bytes_max(n) as u64;
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
    let end_epoch = state.shared.epoch().saturating_add(epochs);
    let (end_epoch, deletable) = state
        .store_metadata(
            &blob_id, body, metadata, layout, end_epoch, deletable, false,
        )
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

/// `DELETE /v1/blobs/{id}/metadata?endEpoch=E`: deletes the blob on this node only.
pub(crate) async fn delete_metadata(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    end_epoch: u32,
) -> Result<Response<Body>, ApiError> {
    let (deleted, end_epoch) = match state.delete_here(&blob_id, end_epoch).await? {
        Deleted::Now { end_epoch } => ("now", end_epoch),
        Deleted::Before { end_epoch } => ("before", end_epoch),
        Deleted::Permanent => return Err(not_deletable(&blob_id, &state.shared.view().me.name)),
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

pub(crate) async fn get_metadata(
    state: &Rc<CoreState>,
    blob_id: BlobId,
) -> Result<Response<Body>, ApiError> {
    match state.metadata_record(&blob_id).await? {
        // Past its end epoch it is gone, whether or not the sweep dropped it yet: a reader
        // elsewhere must not bring an expired blob back through this node's metadata.
        Some(found) if found.end_epoch >= state.shared.epoch() => {
            state
                .shared
                .metrics
                .sent_bytes
                .inc_by(found.data.len() as u64);
            Ok(octets(found.data))
        }
        _ => Err(ApiError::not_found(
            "blobNotFound",
            format!("this node has no metadata for blob {blob_id}"),
        )),
    }
}

pub(crate) async fn put_sliver(
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
    let format_max = floe_codec::sliver_bcs_bytes_max(symbols, SYMBOL_BYTES_MAX) as u64;
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

pub(crate) async fn get_sliver(
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

pub(crate) async fn status(
    state: &Rc<CoreState>,
    blob_id: BlobId,
) -> Result<Response<Body>, ApiError> {
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

pub(crate) async fn recovery_symbols(
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
    let estimate = (target_pairs.len()
        * per_target
        * floe_codec::recovery_symbol_bytes_max(known.layout.symbol_bytes))
        as u64;
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
    let mut sources: Vec<u16> = held(state, blob_id)
        .await?
        .into_iter()
        .filter(|h| h.kind == record_kind(source_kind))
        .map(|h| h.shard)
        .collect();
    let target_shards: Vec<u16> = target_pairs
        .iter()
        .map(|&pair| blob_id.shard_for_pair(pair.into(), n) as u16)
        .collect();
    crate::protocol::order_sources(&mut sources, &target_shards);
    let mut symbols = Vec::with_capacity(limit.min(sources.len()) * targets.len());
    let mut used = 0;
    for source in sources {
        if used == limit {
            break;
        }
        let Some(bytes) = load_sliver(state, blob_id, source, source_kind).await? else {
            continue;
        };
        // Stored slivers were verified on arrival and passed their checksum on this read; the
        // expansion checks the root again anyway, and a failure means skip, never send.
        let Some(expanded) = crate::protocol::expand_source(
            &known.metadata,
            &known.layout,
            target_kind,
            crate::protocol::sliver_of_shard(blob_id, source, source_kind, n),
            &bytes,
            &targets,
        ) else {
            continue;
        };
        used += 1;
        symbols.extend(expanded);
    }
    Ok(symbols)
}

/// `PUT /v1/blobs/{id}/slivers`: a batch of slivers, each checked like a single PUT; if any
/// fails, nothing is stored. Stored with one commit per owning core.
/// Verifies a sliver as stored (header and data) against its blob's metadata, with this
/// core's scratch: it re-encodes to the metadata's root for its index and kind.
pub(crate) fn verify_stored_sliver(
    state: &CoreState,
    known: &CachedMetadata,
    kind: SliverKind,
    sliver: &[u8],
) -> Result<(), String> {
    let header = sliver_header(sliver).map_err(|e| e.to_string())?;
    floe_codec::verify_sliver(
        &known.metadata,
        &known.layout,
        kind,
        header.index.into(),
        header.symbol_bytes.into(),
        &sliver[header.data],
        &mut state.scratch.borrow_mut(),
    )
    .map_err(|e| e.to_string())
}

pub(crate) async fn put_slivers(
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
        let shard = shard_of(state, &blob_id, entry.pair, false)?;
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
        verify_stored_sliver(state, &known, kind, sliver)
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

/// `GET /v1/blobs/{id}/slivers?kind=&pairs=`: the listed slivers this node holds, as a batch.
pub(crate) async fn get_slivers(
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
        if !state.shared.view().serves(shard) {
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

/// `GET /v1/blobs?after=&limit=`: `{"blobs": [{"blobId", "endEpoch", "deletable"} or
/// {"blobId", "endEpoch", "deleted": true}], "next": ID|null}`.
pub use crate::protocol::SHARD_PAGE_BYTES_MAX;

/// `GET /v1/shards/{shard}/slivers?after=ID&limit=L`: the slivers of `shard` this node holds
/// for up to `limit` blobs after `after` (live blobs, in blob ID order). The body: one byte,
/// 1 if more may follow (then the 32-byte blob ID to continue after) or 0; then frames of blob
/// ID, kind (0 primary, 1 secondary), little-endian length and the sliver as stored. 404
/// `shardNotHeld` for a shard it neither holds nor gave away this epoch.
pub(crate) async fn shard_slivers(
    state: &Rc<CoreState>,
    shard: u16,
    after: Option<BlobId>,
    limit: u32,
) -> Result<Response<Body>, ApiError> {
    if usize::from(shard) >= state.n() || !state.shared.view().serves(shard) {
        return Err(ApiError::not_found(
            "shardNotHeld",
            format!("this node neither holds shard {shard} nor gave it away this epoch"),
        ));
    }
    let _reservation = reserve(state, SHARD_PAGE_BYTES_MAX as u64)?;
    let epoch = state.shared.epoch();
    let page = list_metadata(state, after.map(|id| id.0), limit as usize).await?;
    let mut built = ShardPage::new(page.len() == limit as usize);
    for listed in &page {
        if !built.visit(listed.blob_id) {
            break;
        }
        if listed.state == BlobState::Deleted || listed.end_epoch < epoch {
            continue;
        }
        let blob_id = BlobId(listed.blob_id);
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            if let Some(sliver) = load_sliver(state, &blob_id, shard, kind).await? {
                built.push(listed.blob_id, kind, &sliver);
            }
        }
    }
    let body = built.finish();
    state.shared.metrics.sent_bytes.inc_by(body.len() as u64);
    Ok(octets(Bytes::from(body)))
}

pub(crate) async fn list_blobs(
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
