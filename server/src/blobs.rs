//! The user API (`api.md`, "Users"): the publisher (`PUT /v1/blobs`) and the aggregator
//! (`GET|HEAD /v1/blobs/{id}`), served by every node.
//!
//! The publisher encodes the blob (on glommio's blocking pool, which runs the codec's rayon
//! work on every core), stores this node's sliver pairs itself and sends every other node its
//! metadata and its pairs as one batch per peer (bounded in bytes, retried with back-off), and
//! answers once the nodes that confirmed hold at least `n - f` shards (2f+1 when n = 3f+1).
//!
//! The aggregator reads the systematic primary slivers that cover the requested bytes: from
//! this node's own stores (verified when they were stored; their checksums hold, so no second
//! Reed-Solomon check) or from the peers holding them (each one verified against the metadata,
//! a peer that lies is skipped and counted). If any is missing it decodes from any `k_p`
//! verified primary slivers. Whole blobs are kept in a per-core cache ([`BlobCache`]), so a hot
//! blob costs no network, decoding or hashing; blobs are immutable, so the cache is never stale.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use floe_codec::{
    byte_range_rows, decode_metadata, decode_primary_verified, decode_sliver_batch,
    encode_metadata, encode_sliver_batch, sliver_header, verify_sliver, BlobId, BlobLayout,
    BlobMetadata, EncodedBlob, EncodingConfig, SliverKind,
};
use floe_storage::format::{RecordKind, FLAG_DELETABLE};
use floe_storage::mapped::MappedFile;
use floe_storage::store::Key;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::api::{
    blob_deleted, json_response, not_deletable, octets, read_body, record_kind, reserve,
    sliver_index, store_per_core, Body, CachedMetadata, CoreState,
};
use crate::config::Member;
use crate::error::ApiError;
use crate::metrics::PeerFault;
use crate::owner::{Deleted, Record};
use crate::peer::Answer;

/// Bytes of slivers sent to one peer in one request. Why: large enough that a 64 MiB blob
/// takes a handful of requests per peer, small enough that the peer's body limit and memory
/// budget are never a concern and a retry repeats little.
const BATCH_BYTES_MAX: usize = 16 << 20;

/// Attempts per request to a peer, and the wait before the second (doubling after).
const ATTEMPTS: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_millis(200);

/// `Cache-Control` of blob reads. Why: a blob ID names its bytes forever.
const CACHE_CONTROL_IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Verified whole blobs by ID with their end epoch, least recently used evicted first, bounded
/// in bytes. An entry past its end epoch is dropped when it is next looked up.
///
/// Blobs of at least [`SPILL_BYTES_MIN`] are kept in files rather than heap buffers: a
/// response body that is a view of one leaves with `sendfile(2)`, as slivers do, instead of
/// being copied into the socket (that copy was half of a hot 1 MiB read's CPU time). The file
/// is an unnamed one in the cache directory ([`MappedFile::private_copy_in`]; in the page
/// cache, in large folios where the file system has them, which `sendfile` walks faster than
/// shared memory's small pages), else a sealed memory file ([`MappedFile::sealed_copy`]),
/// else the heap.
pub struct BlobCache {
    entries: lru::LruCache<[u8; 32], Entry>,
    bytes: u64,
    limit: u64,
    /// Where the files go (`None`: memory files only).
    dir: Option<std::path::PathBuf>,
    /// Entries kept in files (each holds a file descriptor).
    files: usize,
}

struct Entry {
    blob: Bytes,
    end_epoch: u32,
    in_file: bool,
}

/// Blobs at least this large are cached in memory files. Why: below it the copy into the
/// socket costs less than the request around it.
pub const SPILL_BYTES_MIN: usize = 64 * 1024;

/// Most entries in memory files per core. Why: each holds a file descriptor; the rest are
/// cached on the heap.
pub const SPILL_FILES_MAX: usize = 256;

impl BlobCache {
    pub fn new(limit: u64, dir: Option<std::path::PathBuf>) -> Self {
        Self {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            limit,
            dir,
            files: 0,
        }
    }

    fn get(&mut self, blob_id: &BlobId, epoch: u32) -> Option<Bytes> {
        let entry = self.entries.get(&blob_id.0)?;
        if entry.end_epoch < epoch {
            self.remove(blob_id);
            return None;
        }
        Some(entry.blob.clone())
    }

    /// Whether a blob of `size` bytes would be kept: not if it is larger than a quarter of the
    /// cache (one huge blob would evict every hot small one).
    fn keeps(&self, size: u64) -> bool {
        size <= self.limit / 4
    }

    /// Keeps `blob` if it [`keeps`](Self::keeps) its size; returns the bytes to serve (the
    /// cached copy if one was made).
    fn insert(&mut self, blob_id: &BlobId, blob: Bytes, end_epoch: u32) -> Bytes {
        let size = blob.len() as u64;
        if !self.keeps(size) {
            return blob;
        }
        self.remove(blob_id);
        let mut entry = Entry {
            blob,
            end_epoch,
            in_file: false,
        };
        if entry.blob.len() >= SPILL_BYTES_MIN && self.files < SPILL_FILES_MAX {
            let in_dir = self
                .dir
                .as_deref()
                .map(|dir| MappedFile::private_copy_in(dir, &entry.blob));
            let made = match in_dir {
                Some(Ok(made)) => Ok(made),
                // No O_TMPFILE there, or a full disk: memory.
                _ => MappedFile::sealed_copy(&entry.blob),
            };
            match made {
                Ok(mapped) => {
                    entry.blob = mapped.into_bytes();
                    entry.in_file = true;
                    self.files += 1;
                }
                Err(err) => {
                    tracing::debug!(%err, "could not cache a blob in a file; kept on the heap")
                }
            }
        }
        let served = entry.blob.clone();
        self.entries.put(blob_id.0, entry);
        self.bytes += size;
        while self.bytes > self.limit {
            match self.entries.pop_lru() {
                Some((_, old)) => self.forget(&old),
                None => break,
            }
        }
        served
    }

    fn forget(&mut self, entry: &Entry) {
        self.bytes -= entry.blob.len() as u64;
        self.files -= usize::from(entry.in_file);
    }

    /// Forgets every blob.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.files = 0;
    }

    /// Forgets a blob (expired or deleted).
    pub fn remove(&mut self, blob_id: &BlobId) {
        if let Some(old) = self.entries.pop(&blob_id.0) {
            self.forget(&old);
        }
    }
}

/// Shards that must confirm a write: `n - f` (2f + 1 when n = 3f + 1).
pub fn write_quorum(n: usize) -> usize {
    n - (n - 1) / 3
}

/// Counts a peer's failure or lie in `floe_peer_faults_total`.
pub(crate) fn peer_fault(state: &CoreState, peer: &str, kind: &'static str) {
    state
        .shared
        .metrics
        .peer_faults
        .get_or_create(&PeerFault {
            peer: peer.to_string(),
            kind,
        })
        .inc();
}

/// Sends one request to a peer, retrying transport failures and 5xx answers (except 507, a
/// full disk) with back-off. Any other answer is returned as it is.
pub(crate) async fn peer_request(
    state: &CoreState,
    member: &Member,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    limit: usize,
) -> Result<Answer, String> {
    let mut wait = BACKOFF_FIRST;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match state
            .peers
            .request(&member.address, method.clone(), path, body.clone(), limit)
            .await
        {
            Ok(answer)
                if answer.status.is_server_error()
                    && answer.status != StatusCode::INSUFFICIENT_STORAGE =>
            {
                last = format!("{} ({})", answer.status, answer.error_message());
            }
            Ok(answer) => return Ok(answer),
            Err(err) => {
                peer_fault(state, &member.name, "unreachable");
                last = err.to_string();
            }
        }
        if attempt < ATTEMPTS {
            glommio::timer::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(last)
}

/// `PUT /v1/blobs?epochs=N`.
pub async fn publish(
    state: &Rc<CoreState>,
    epochs: u32,
    deletable: bool,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let n = state.n();
    let config = EncodingConfig::new(n as u16).expect("the committee's n is valid");
    let limit = config
        .blob_bytes_max()
        .min(state.shared.config.limits.body_bytes_max);
    let (body, _reservation) = read_body(state, request, limit).await?;
    let layout = config
        .layout(body.len() as u64)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bodyTooLarge", e.to_string()))?;
    // The encoded slivers live as long as the request: count them against this core's memory.
    let _encoded_reservation = reserve(state, layout.encoded_bytes_total())?;
    let encoded = glommio::executor()
        .spawn_blocking(move || floe_codec::encode(&config, &body))
        .await
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bodyTooLarge", e.to_string()))?;
    let blob_id = *encoded.blob_id();
    let size = encoded.layout().blob_bytes;
    let end_epoch = state
        .shared
        .committee
        .current_epoch()
        .saturating_add(epochs);
    let quorum = write_quorum(n);
    let answer = |kind: &str, end_epoch: u32, deletable: bool, confirmed: usize| {
        json!({
            kind: {
                "blobId": blob_id.to_string(),
                "size": size,
                "encodingType": "RS2",
                "endEpoch": end_epoch,
                "deletable": deletable,
                "shardsConfirmed": confirmed,
                "blobObject": {
                    "blobId": blob_id.to_string(),
                    "size": size,
                    "encodingType": "RS2",
                    "deletable": deletable,
                    "storage": {"endEpoch": end_epoch},
                },
            }
        })
    };
    // The home core's record, not a cache: whether the blob is deletable may have changed.
    match state.metadata_record(&blob_id).await? {
        Some(known) => {
            let known_deletable = known.flags & FLAG_DELETABLE != 0;
            // A permanent store of a deletable blob makes it permanent: stored again.
            if known.end_epoch >= end_epoch && (deletable || !known_deletable) {
                let confirmed = stored_shards(state, &blob_id).await;
                if confirmed >= quorum {
                    return Ok(json_response(
                        StatusCode::OK,
                        answer(
                            "alreadyCertified",
                            known.end_epoch,
                            known_deletable,
                            confirmed,
                        ),
                    ));
                }
            }
        }
        None if deletable => {
            if let Some(until) = state.deleted(&blob_id).await? {
                return Err(blob_deleted(&blob_id, until));
            }
        }
        None => {}
    }
    let encoded = Rc::new(encoded);
    let me = &state.shared.me.name;
    let stores = state.shared.committee.members.iter().map(|member| {
        let encoded = encoded.clone();
        async move {
            // This node's answer says whether the blob stays deletable (merged with any
            // earlier store of it).
            let result = if &member.name == me {
                store_here(state, &encoded, end_epoch, deletable)
                    .await
                    .map(Some)
                    .map_err(|e| e.message)
            } else {
                store_on_peer(state, member, &encoded, epochs, deletable)
                    .await
                    .map(|()| None)
            };
            (member, result)
        }
    });
    let mut confirmed = 0;
    let mut failed = Vec::new();
    let mut stored_deletable = deletable;
    for (member, result) in futures::future::join_all(stores).await {
        match result {
            Ok(here_deletable) => {
                confirmed += member.shards.len();
                stored_deletable = here_deletable.unwrap_or(stored_deletable);
            }
            Err(message) => {
                tracing::warn!(blob = %blob_id, node = %member.name, %message, "a node did not store its slivers; sync will bring them");
                failed.push(format!("{} ({message})", member.name));
            }
        }
    }
    if confirmed < quorum {
        return Err(ApiError::unavailable(
            "notEnoughShards",
            format!(
                "only {confirmed} of {n} shards confirmed blob {blob_id}; a write needs {quorum}. \
                 Failed: {}",
                failed.join("; ")
            ),
        ));
    }
    let mut body = answer("newlyCreated", end_epoch, stored_deletable, confirmed);
    if !failed.is_empty() {
        body["newlyCreated"]["failedNodes"] = json!(failed);
    }
    Ok(json_response(StatusCode::OK, body))
}

/// Stores this node's metadata and sliver pairs of an encoded blob (no verification: this
/// node encoded them). Returns whether the blob is deletable as stored.
async fn store_here(
    state: &Rc<CoreState>,
    encoded: &EncodedBlob,
    end_epoch: u32,
    deletable: bool,
) -> Result<bool, ApiError> {
    let n = state.n();
    let blob_id = *encoded.blob_id();
    let (end_epoch, deletable) = state
        .store_metadata(
            &blob_id,
            Bytes::from(encode_metadata(encoded.metadata())),
            encoded.metadata().clone(),
            *encoded.layout(),
            end_epoch,
            deletable,
        )
        .await?;
    let mut per_core: Vec<Vec<Record>> = (0..state.shared.owners.cores())
        .map(|_| Vec::new())
        .collect();
    for &shard in &state.shared.me.shards {
        let pair = blob_id.pair_for_shard(shard.into(), n) as u16;
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            let body = encoded.sliver_bcs(kind, sliver_index(kind, pair, n));
            per_core[state.shared.owners.core_of_shard(shard)].push(Record {
                key: Key {
                    blob_id: blob_id.0,
                    kind: record_kind(kind),
                    shard,
                },
                end_epoch,
                data: Bytes::from(body),
            });
        }
    }
    store_per_core(state, per_core).await?;
    Ok(deletable)
}

/// Sends a peer the blob's metadata, then its sliver pairs in batches of at most
/// [`BATCH_BYTES_MAX`].
async fn store_on_peer(
    state: &Rc<CoreState>,
    member: &Member,
    encoded: &EncodedBlob,
    epochs: u32,
    deletable: bool,
) -> Result<(), String> {
    let n = state.n();
    let blob_id = *encoded.blob_id();
    let expect_ok = |answer: Answer| {
        if answer.status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{}: {}", answer.status, answer.error_message()))
        }
    };
    let metadata = Bytes::from(encode_metadata(encoded.metadata()));
    let path = match deletable {
        true => format!("/v1/blobs/{blob_id}/metadata?epochs={epochs}&deletable=true"),
        false => format!("/v1/blobs/{blob_id}/metadata?epochs={epochs}"),
    };
    expect_ok(peer_request(state, member, Method::PUT, &path, Some(metadata), 1 << 16).await?)?;
    let path = format!("/v1/blobs/{blob_id}/slivers");
    let mut batch: Vec<(u16, SliverKind, Vec<u8>)> = Vec::new();
    let mut batch_bytes = 0;
    let shards = &member.shards;
    for (i, &shard) in shards.iter().enumerate() {
        let pair = blob_id.pair_for_shard(shard.into(), n) as u16;
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            let body = encoded.sliver_bcs(kind, sliver_index(kind, pair, n));
            batch_bytes += body.len();
            batch.push((pair, kind, body));
        }
        if batch_bytes >= BATCH_BYTES_MAX || i + 1 == shards.len() {
            let body = encode_sliver_batch(batch.iter().map(|(p, k, b)| (*p, *k, b.as_slice())));
            batch.clear();
            batch_bytes = 0;
            let answer = peer_request(
                state,
                member,
                Method::PUT,
                &path,
                Some(Bytes::from(body)),
                1 << 16,
            )
            .await?;
            expect_ok(answer)?;
        }
    }
    Ok(())
}

/// Shards whose node holds both slivers of the blob, over the whole committee (nodes that do
/// not answer count for nothing).
async fn stored_shards(state: &Rc<CoreState>, blob_id: &BlobId) -> usize {
    let n = state.n();
    let me = &state.shared.me.name;
    let counts = state
        .shared
        .committee
        .members
        .iter()
        .map(|member| async move {
            if &member.name == me {
                let held = crate::api::held(state, blob_id).await.unwrap_or_default();
                let has = |kind| held.iter().filter(|h| h.kind == kind).count();
                return has(RecordKind::Primary).min(has(RecordKind::Secondary));
            }
            let path = format!("/v1/blobs/{blob_id}/status");
            let Ok(answer) = state
                .peers
                .request(&member.address, Method::GET, &path, None, 1 << 20)
                .await
            else {
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
        });
    futures::future::join_all(counts).await.into_iter().sum()
}

/// Verified metadata for a read: this node's own, or a peer's checked against the blob ID.
async fn find_metadata(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
) -> Result<Rc<CachedMetadata>, ApiError> {
    if let Some(known) = state.metadata(blob_id).await? {
        return Ok(known);
    }
    // Deleted here: peers that did not hear of it yet must not bring it back.
    if state.deleted(blob_id).await?.is_some() {
        return Err(ApiError::not_found(
            "blobNotFound",
            format!("blob {blob_id} was deleted"),
        ));
    }
    let n = state.n();
    let path = format!("/v1/blobs/{blob_id}/metadata");
    let mut silent = Vec::new();
    let limit = 16 + n * 66;
    for member in &state.shared.committee.members {
        if member.name == state.shared.me.name {
            continue;
        }
        let answer = match state
            .peers
            .request(&member.address, Method::GET, &path, None, limit)
            .await
        {
            Ok(answer) => answer,
            Err(err) => {
                peer_fault(state, &member.name, "unreachable");
                silent.push(format!("{} ({err})", member.name));
                continue;
            }
        };
        if answer.status != StatusCode::OK {
            if answer.status != StatusCode::NOT_FOUND {
                silent.push(format!("{} ({})", member.name, answer.status));
            }
            continue;
        }
        let checked = checked_metadata(&answer.body, blob_id, n);
        match checked {
            Ok((metadata, layout)) => {
                return Ok(Rc::new(CachedMetadata {
                    metadata,
                    layout,
                    end_epoch: 0,
                    deletable: false,
                }))
            }
            Err(message) => {
                peer_fault(state, &member.name, "bad_metadata");
                tracing::warn!(peer = %member.name, blob = %blob_id, %message, "a peer sent metadata that fails verification; skipped");
            }
        }
    }
    if silent.is_empty() {
        Err(ApiError::not_found(
            "blobNotFound",
            format!("no node of the committee knows blob {blob_id}"),
        ))
    } else {
        Err(ApiError::unavailable(
            "notEnoughNodes",
            format!(
                "blob {blob_id} is unknown to the nodes that answered; {} did not: {}",
                silent.len(),
                silent.join("; ")
            ),
        ))
    }
}

/// The byte range a `Range` header asks for, `None` for the whole blob. Headers that are not
/// a single `bytes=` range are ignored (RFC 9110 lets a server serve the whole representation).
fn parse_range(value: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let number = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "rangeNotSatisfiable",
            format!("the range {text:?} lies outside the blob of {size} bytes"),
        )
    };
    match (number(first), number(last), first.is_empty()) {
        // `-n`: the last n bytes.
        (None, Some(suffix), true) => {
            if suffix == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            Ok(Some((size - suffix.min(size), size)))
        }
        (Some(start), end, false) => {
            if !last.is_empty() && end.is_none() {
                return Ok(None);
            }
            if start >= size {
                return Err(unsatisfiable());
            }
            let end = end.map_or(size, |e| e.saturating_add(1).min(size));
            if end <= start {
                return Ok(None);
            }
            Ok(Some((start, end)))
        }
        _ => Ok(None),
    }
}

/// `GET|HEAD /v1/blobs/{id}`.
pub async fn read(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    head: bool,
    request: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let etag = format!("\"{blob_id}\"");
    let headers = request.headers();
    let with_headers = |mut response: Response<Body>| {
        let h = response.headers_mut();
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&etag).expect("base64 is a valid header"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL_IMMUTABLE),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        response
    };
    let matches_etag = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches_etag {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(with_headers(response));
    }
    let epoch = state.shared.committee.current_epoch();
    state.forget_deleted();
    let cached = state.blob_cache.borrow_mut().get(&blob_id, epoch);
    let known = match &cached {
        Some(_) => None,
        None => Some(find_metadata(state, &blob_id).await?),
    };
    let size = match (&cached, &known) {
        (Some(blob), _) => blob.len() as u64,
        (None, Some(known)) => known.metadata.blob_bytes(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let range = match parse_range(headers.get(header::RANGE), size) {
        Ok(range) => range,
        Err(err) => {
            let mut response = with_headers(crate::api::error_response(&err));
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            );
            return Ok(response);
        }
    };
    let (start, end) = range.unwrap_or((0, size));
    let body = if head {
        Bytes::new()
    } else {
        match (cached, known) {
            (Some(blob), _) => {
                state.shared.metrics.blob_cache_hits.inc();
                blob.slice(start as usize..end as usize)
            }
            // Only with this node's own metadata is the end epoch known (0 = from a peer):
            // such a whole blob is cached, and concurrent reads of it wait for one fill.
            (None, Some(known))
                if range.is_none()
                    && known.end_epoch >= epoch
                    && state.blob_cache.borrow().keeps(size) =>
            {
                match fill_or_wait(state, &blob_id, epoch).await {
                    Fill::Cached(blob) => {
                        state.shared.metrics.blob_cache_hits.inc();
                        blob
                    }
                    Fill::Mine(_filling) => {
                        let _reservation = reserve(state, end - start)?;
                        let bytes = read_range(state, &blob_id, &known, start, end).await?;
                        state.shared.metrics.blob_cache_fills.inc();
                        let mut cache = state.blob_cache.borrow_mut();
                        cache.insert(&blob_id, bytes, known.end_epoch)
                    }
                }
            }
            (None, Some(known)) => {
                let _reservation = reserve(state, end - start)?;
                read_range(state, &blob_id, &known, start, end).await?
            }
            (None, None) => unreachable!("one of the two is set"),
        }
    };
    state.shared.metrics.sent_bytes.inc_by(body.len() as u64);
    let mut response = with_headers(octets(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Some((start, end)) = range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)).expect("ASCII"),
        );
    }
    Ok(response)
}

/// `DELETE /v1/blobs/{id}`: deletes a deletable blob on this node, then on every peer. A blob
/// stored permanent anywhere answers 409 (where this node holds it permanent, before anything
/// is deleted); peers that cannot be reached learn of the deletion through sync.
pub async fn delete(state: &Rc<CoreState>, blob_id: BlobId) -> Result<Response<Body>, ApiError> {
    let me = &state.shared.me.name;
    let known_end = state
        .metadata_record(&blob_id)
        .await?
        .map_or(0, |found| found.end_epoch);
    let here = state.delete_here(&blob_id, known_end).await?;
    let mut end_epoch = match here {
        Deleted::Now { end_epoch } | Deleted::Before { end_epoch } => end_epoch,
        Deleted::Permanent => return Err(not_deletable(&blob_id, me)),
        Deleted::Unknown => 0,
    };
    let path = format!("/v1/blobs/{blob_id}/metadata?endEpoch={end_epoch}");
    let peers = state
        .shared
        .committee
        .members
        .iter()
        .filter(|member| &member.name != me)
        .map(|member| {
            let path = &path;
            async move {
                let answer = peer_request(state, member, Method::DELETE, path, None, 1 << 16).await;
                (member, answer)
            }
        });
    let mut deleted = Vec::new();
    let mut permanent = Vec::new();
    let mut failed = Vec::new();
    if here != Deleted::Unknown {
        deleted.push(me.clone());
    }
    for (member, answer) in futures::future::join_all(peers).await {
        match answer {
            Ok(answer) if answer.status == StatusCode::OK => {
                let their_end = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v["endEpoch"].as_u64())
                    .and_then(|e| u32::try_from(e).ok())
                    .unwrap_or(0);
                end_epoch = end_epoch.max(their_end);
                deleted.push(member.name.clone());
            }
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => {}
            Ok(answer) if answer.status == StatusCode::CONFLICT => {
                permanent.push(member.name.clone())
            }
            Ok(answer) => failed.push(format!(
                "{} ({}: {})",
                member.name,
                answer.status,
                answer.error_message()
            )),
            Err(message) => failed.push(format!("{} ({message})", member.name)),
        }
    }
    if !permanent.is_empty() {
        let mut err = not_deletable(&blob_id, &permanent.join(", "));
        if !deleted.is_empty() {
            err.message.push_str(&format!(
                "; {} deleted it and get it back from the permanent copy through sync",
                deleted.join(", ")
            ));
        }
        return Err(err);
    }
    if deleted.is_empty() {
        return Err(if failed.is_empty() {
            ApiError::not_found(
                "blobNotFound",
                format!("no node of the committee knows blob {blob_id}"),
            )
        } else {
            ApiError::unavailable(
                "notEnoughNodes",
                format!(
                    "blob {blob_id} is unknown to the nodes that answered; {} did not: {}",
                    failed.len(),
                    failed.join("; ")
                ),
            )
        });
    }
    if here == Deleted::Unknown {
        // Remember the deletion here too, so that sync never brings the blob back.
        state.delete_here(&blob_id, end_epoch.max(1)).await?;
        deleted.insert(0, me.clone());
    }
    for name in &failed {
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

/// What a whole-blob read that missed the cache does.
enum Fill {
    /// Another request filled the cache meanwhile.
    Cached(Bytes),
    /// This request fills it; others wait until the guard is dropped.
    Mine(Filling),
}

/// A blob being read into this core's cache; dropping it (filled, failed or cancelled) wakes
/// the requests waiting for it.
pub(crate) struct Filling {
    state: Rc<CoreState>,
    blob_id: [u8; 32],
}

impl Drop for Filling {
    fn drop(&mut self) {
        if let Some(done) = self.state.filling.borrow_mut().remove(&self.blob_id) {
            done.notify(usize::MAX);
        }
    }
}

/// Waits while another request of this core reads the same blob into the cache, so that a
/// burst of reads of a blob not yet cached gathers and decodes it once, not once per request
/// (each would hold the whole blob in memory: a burst of large ones would run the core out of
/// its body budget). If that read fails, the next waiter tries.
async fn fill_or_wait(state: &Rc<CoreState>, blob_id: &BlobId, epoch: u32) -> Fill {
    loop {
        if let Some(blob) = state.blob_cache.borrow_mut().get(blob_id, epoch) {
            return Fill::Cached(blob);
        }
        let pending = state.filling.borrow().get(&blob_id.0).cloned();
        match pending {
            Some(done) => {
                let listener = done.listen();
                if state.filling.borrow().contains_key(&blob_id.0) {
                    listener.await;
                }
            }
            None => {
                let done = Rc::new(event_listener::Event::new());
                state.filling.borrow_mut().insert(blob_id.0, done);
                return Fill::Mine(Filling {
                    state: state.clone(),
                    blob_id: blob_id.0,
                });
            }
        }
    }
}

/// Primary slivers by index, each verified (or this node's own).
type Rows = HashMap<usize, Bytes>;

/// Reads blob bytes `[start, end)`: the systematic rows that cover them, or, if any of those
/// cannot be had, a decode from any `k_p` primary slivers.
async fn read_range(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    start: u64,
    end: u64,
) -> Result<Bytes, ApiError> {
    let layout = &known.layout;
    let spans = byte_range_rows(layout, start, end)
        .map_err(|e| ApiError::bad_request("invalidRange", e.to_string()))?;
    let wanted: Vec<usize> = spans.iter().map(|s| s.row_index).collect();
    let mut rows = Rows::new();
    let mut failures = Vec::new();
    fetch_rows(state, blob_id, known, &wanted, &mut rows, &mut failures).await?;
    if wanted.iter().all(|r| rows.contains_key(r)) {
        if let [span] = spans.as_slice() {
            // One row: a view of it (for this node's own slivers, of the mapped file).
            return Ok(rows[&span.row_index].slice(span.start_bytes..span.end_bytes));
        }
        let mut out = BytesMut::with_capacity((end - start) as usize);
        for span in &spans {
            out.extend_from_slice(&rows[&span.row_index][span.start_bytes..span.end_bytes]);
        }
        return Ok(out.freeze());
    }
    // Some systematic row is missing: any k_p primary slivers decode the blob.
    let n = layout.config.n_shards();
    let k_p = layout.config.n_primary_source();
    let others: Vec<usize> = (0..n)
        .filter(|i| !rows.contains_key(i) && !wanted.contains(i))
        .collect();
    fetch_rows(state, blob_id, known, &others, &mut rows, &mut failures).await?;
    if rows.len() < k_p {
        return Err(ApiError::unavailable(
            "notEnoughSlivers",
            format!(
                "only {} verified primary slivers of blob {blob_id} could be read; decoding needs \
                 {k_p}. {}",
                rows.len(),
                failures.join("; ")
            ),
        ));
    }
    tracing::info!(blob = %blob_id, "systematic slivers missing; decoding from {} primary slivers", rows.len());
    let slivers: Vec<(usize, &[u8])> = rows.iter().map(|(i, b)| (*i, b.as_ref())).collect();
    let blob = decode_primary_verified(&known.metadata, &slivers).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "decodeFailed",
            e.to_string(),
        )
    })?;
    Ok(Bytes::from(blob).slice(start as usize..end as usize))
}

/// Adds the primary slivers `indices` to `rows`: this node's own first, then one batch
/// request per peer holding some, all peers at once. Failures are described in `failures`.
async fn fetch_rows(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    indices: &[usize],
    rows: &mut Rows,
    failures: &mut Vec<String>,
) -> Result<(), ApiError> {
    let n = state.n();
    let mut per_member: HashMap<&str, Vec<u16>> = HashMap::new();
    for &index in indices {
        let shard = blob_id.shard_for_pair(index, n) as u16;
        if state.shared.owned[usize::from(shard)] {
            let Some(bytes) =
                crate::api::load_sliver(state, blob_id, shard, SliverKind::Primary).await?
            else {
                continue;
            };
            if let Ok(header) = sliver_header(&bytes) {
                rows.insert(index, bytes.slice(header.data));
            }
            continue;
        }
        if let Some(member) = state
            .shared
            .committee
            .members
            .iter()
            .find(|m| m.shards.binary_search(&shard).is_ok())
        {
            per_member
                .entry(&member.name)
                .or_default()
                .push(index as u16);
        }
    }
    let sliver_bytes = known.layout.primary_sliver_bytes();
    let fetches = per_member.into_iter().map(|(name, pairs)| async move {
        let member = state
            .shared
            .committee
            .member(name)
            .expect("grouped by committee members");
        let path = format!(
            "/v1/blobs/{blob_id}/slivers?kind=primary&pairs={}",
            crate::route::format_pair_list(&pairs)
        );
        let limit = 16 + pairs.len() * (sliver_bytes + 16);
        let answer = peer_request(state, member, Method::GET, &path, None, limit).await;
        (member, pairs, answer)
    });
    for (member, pairs, answer) in futures::future::join_all(fetches).await {
        let answer = match answer {
            Ok(answer) if answer.status == StatusCode::OK => answer,
            Ok(answer) => {
                failures.push(format!("{}: {}", member.name, answer.error_message()));
                continue;
            }
            Err(message) => {
                failures.push(format!("{}: {message}", member.name));
                continue;
            }
        };
        let Ok(entries) = decode_sliver_batch(&answer.body) else {
            peer_fault(state, &member.name, "bad_sliver");
            failures.push(format!("{}: a malformed sliver batch", member.name));
            continue;
        };
        let mut candidates = Vec::new();
        for entry in entries {
            let index = usize::from(entry.pair);
            if entry.kind != SliverKind::Primary || !pairs.contains(&entry.pair) {
                continue;
            }
            let body = answer.body.slice(entry.body);
            candidates.push((index, body));
        }
        for (index, verified) in verify_primaries(state, known, candidates).await {
            match verified {
                Ok(data) => {
                    rows.insert(index, data);
                }
                Err(()) => {
                    peer_fault(state, &member.name, "bad_sliver");
                    tracing::warn!(peer = %member.name, blob = %blob_id, sliver = index, "a peer sent a primary sliver that fails verification; skipped");
                    failures.push(format!(
                        "{}: sliver {index} failed verification",
                        member.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Peer slivers at least this many bytes in all are verified off the executor. Why: below it
/// handing them over costs more than it saves.
const VERIFY_OFFLOAD_BYTES_MIN: usize = 256 * 1024;

/// Verifies primary slivers (index, BCS body) from a peer against the metadata: the data of
/// each that holds, in the same order. Large sets go to glommio's blocking pool and are
/// spread over every core with rayon (a verification is a Reed-Solomon re-encode of the
/// sliver: the cost of a cold read), so the core that serves the read keeps serving.
async fn verify_primaries(
    state: &Rc<CoreState>,
    known: &CachedMetadata,
    slivers: Vec<(usize, Bytes)>,
) -> Vec<(usize, Result<Bytes, ()>)> {
    fn verify_one(
        metadata: &BlobMetadata,
        layout: &BlobLayout,
        index: usize,
        body: &Bytes,
        scratch: &mut floe_codec::VerifyScratch,
    ) -> Result<Bytes, ()> {
        let header = sliver_header(body).map_err(|_| ())?;
        let data = &body[header.data.clone()];
        let holds = usize::from(header.index) == index
            && verify_sliver(
                metadata,
                layout,
                SliverKind::Primary,
                index,
                header.symbol_bytes.into(),
                data,
                scratch,
            )
            .is_ok();
        holds.then(|| body.slice(header.data)).ok_or(())
    }
    let bytes: usize = slivers.iter().map(|(_, b)| b.len()).sum();
    if bytes < VERIFY_OFFLOAD_BYTES_MIN {
        let mut scratch = state.scratch.borrow_mut();
        return slivers
            .into_iter()
            .map(|(index, body)| {
                let verified =
                    verify_one(&known.metadata, &known.layout, index, &body, &mut scratch);
                (index, verified)
            })
            .collect();
    }
    let (metadata, layout) = (known.metadata.clone(), known.layout);
    glommio::executor()
        .spawn_blocking(move || {
            use rayon::prelude::*;
            slivers
                .into_par_iter()
                .map_init(
                    floe_codec::VerifyScratch::default,
                    |scratch, (index, body)| {
                        (index, verify_one(&metadata, &layout, index, &body, scratch))
                    },
                )
                .collect()
        })
        .await
}

/// Metadata from a peer, decoded and verified against the blob ID, with its layout.
pub(crate) fn checked_metadata(
    body: &[u8],
    blob_id: &BlobId,
    n: usize,
) -> Result<(BlobMetadata, BlobLayout), String> {
    let metadata = decode_metadata(body).map_err(|e| e.to_string())?;
    metadata.verify(blob_id, n).map_err(|e| e.to_string())?;
    let layout = metadata.layout().map_err(|e| e.to_string())?;
    Ok((metadata, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let h = |t: &str| HeaderValue::from_str(t).unwrap();
        let r = |t: &str, size| parse_range(Some(&h(t)), size);
        assert_eq!(r("bytes=0-0", 10), Ok(Some((0, 1))));
        assert_eq!(r("bytes=9-", 10), Ok(Some((9, 10))));
        assert_eq!(r("bytes=-3", 10), Ok(Some((7, 10))));
        assert_eq!(r("bytes=-30", 10), Ok(Some((0, 10))));
        assert_eq!(r("bytes=2-100", 10), Ok(Some((2, 10))));
        assert_eq!(r("bytes=10-", 10).unwrap_err().status, 416);
        assert_eq!(r("bytes=-0", 10).unwrap_err().status, 416);
        assert_eq!(r("bytes=0-0", 0).unwrap_err().status, 416);
        // Not a single byte range: the whole blob.
        assert_eq!(r("bytes=5-2", 10), Ok(None));
        assert_eq!(r("bytes=0-1,4-5", 10), Ok(None));
        assert_eq!(r("items=0-1", 10), Ok(None));
        assert_eq!(r("bytes=x-1", 10), Ok(None));
        assert_eq!(parse_range(None, 10), Ok(None));
    }

    #[test]
    fn the_cache_is_bounded_and_skips_huge_blobs() {
        let mut cache = BlobCache::new(100, None);
        let id = |b: u8| BlobId([b; 32]);
        cache.insert(&id(1), Bytes::from(vec![0; 20]), 9);
        cache.insert(&id(2), Bytes::from(vec![0; 20]), 9);
        cache.insert(&id(3), Bytes::from(vec![0; 26]), 9);
        assert!(cache.get(&id(3), 5).is_none(), "over a quarter: not kept");
        for b in 3..10 {
            assert!(cache.get(&id(1), 5).is_some());
            cache.insert(&id(b), Bytes::from(vec![0; 25]), 9);
        }
        assert!(cache.bytes <= 100);
        assert!(cache.get(&id(1), 5).is_some(), "recently used survives");
        assert!(
            cache.get(&id(2), 5).is_none(),
            "least recently used went first"
        );
        assert!(cache.get(&id(1), 10).is_none(), "expired: dropped");
        assert!(cache.get(&id(1), 5).is_none());
        assert_eq!(write_quorum(10), 7);
        assert_eq!(write_quorum(1000), 667);
        assert_eq!(write_quorum(4), 3);
    }

    #[test]
    fn large_cached_blobs_live_in_files_that_sendfile_can_send() {
        let dir = tempfile::tempdir().unwrap();
        let in_dir = dir.path().canonicalize().unwrap().display().to_string();
        check_file_cache(
            BlobCache::new(1 << 30, Some(dir.path().to_path_buf())),
            &in_dir,
        );
        check_file_cache(BlobCache::new(1 << 30, None), "/memfd:floe-cache");
        // A directory that cannot hold files: memory files instead.
        let missing = Some("/nonexistent/floe".into());
        check_file_cache(BlobCache::new(1 << 30, missing), "/memfd:floe-cache");
    }

    /// Checks the cache's files, which must be files whose path starts with `expect_at`.
    fn check_file_cache(mut cache: BlobCache, expect_at: &str) {
        use floe_storage::mapped::file_region;
        let id = |i: usize| {
            BlobId(
                [(i % 256) as u8, (i / 256) as u8, 1, 1, 1, 1, 1, 1]
                    .repeat(4)
                    .try_into()
                    .unwrap(),
            )
        };
        let big: Vec<u8> = (0..SPILL_BYTES_MIN as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        let served = cache.insert(&id(0), Bytes::from(big.clone()), 9);
        assert_eq!(&served[..], &big[..]);
        let (mapped, _) = file_region(&served[10..20]).expect("a view of a file");
        let fd = std::os::fd::AsRawFd::as_raw_fd(mapped.file());
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(
            path.display().to_string().starts_with(expect_at),
            "{path:?} is not in {expect_at}"
        );
        assert!(cache.get(&id(0), 5).unwrap() == big);
        let small = cache.insert(&id(1), Bytes::from(vec![7; 100]), 9);
        assert!(
            file_region(&small).is_none(),
            "small blobs stay on the heap"
        );
        for i in 2..SPILL_FILES_MAX + 10 {
            cache.insert(&id(i), Bytes::from(big.clone()), 9);
        }
        assert_eq!(cache.files, SPILL_FILES_MAX, "file descriptors are bounded");
        let last = cache.get(&id(SPILL_FILES_MAX + 9), 5).unwrap();
        assert!(
            last == big && file_region(&last).is_none(),
            "past the bound: heap"
        );
        cache.remove(&id(0));
        assert_eq!(cache.files, SPILL_FILES_MAX - 1);
        cache.clear();
        assert_eq!((cache.files, cache.bytes), (0, 0));
    }
}
