//! The user API's reads (`api.md`, "Users"): `GET|HEAD /v1/blobs/{id}`, served by every node.
//!
//! The aggregator reads the systematic primary slivers that cover the requested bytes: from
//! this node's own stores (verified when they were stored; their checksums hold, so no second
//! Reed-Solomon check) or from the peers holding them (each one verified against the metadata,
//! a peer that lies is skipped and counted). If any is missing it decodes from any `k_p`
//! verified primary slivers. Whole blobs are kept in a per-core cache
//! ([`crate::blob_cache::BlobCache`]), so a hot blob costs no network, decoding or hashing;
//! blobs are immutable, so the cache is never stale.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};

use bytes::{Bytes, BytesMut};
use floe_codec::{
    byte_range_rows, decode_primary_verified, decode_sliver_batch, sliver_header, verify_sliver,
    BlobId, BlobLayout, BlobMetadata, SliverKind,
};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::blob_cache::{fill_or_wait, Fill};
use crate::budget::reserve;
use crate::config::Member;
use crate::control::View;
use crate::http::body::Body;
use crate::http::error::ApiError;
use crate::peer_client::{checked_metadata, peer_fault, peer_request, Patience, PeerRequest};
use crate::recover::recover_slivers;
use crate::state::{CachedMetadata, CoreState};

/// The header that tells a reader until which epoch this node keeps the blob.
pub const END_EPOCH_HEADER: &str = "x-floe-end-epoch";

/// `Cache-Control` of blob reads. Why: a blob ID names its bytes forever.
const CACHE_CONTROL_IMMUTABLE: &str = "public, max-age=31536000, immutable";

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
    let (_, metadata, layout) = metadata_from_peers(state, blob_id).await?;
    Ok(Rc::new(CachedMetadata {
        metadata,
        layout,
        end_epoch: 0,
        deletable: false,
    }))
}

/// A blob's metadata from the peers (its BCS body, checked against the blob ID): every peer
/// asked at once, the first that verifies wins.
pub(crate) async fn metadata_from_peers(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
) -> Result<(Bytes, BlobMetadata, BlobLayout), ApiError> {
    let n = state.n();
    let path = format!("/v1/blobs/{blob_id}/metadata");
    let mut silent = Vec::new();
    let limit = floe_codec::metadata_bcs_bytes_max(n);
    // Every peer at once; the first metadata that verifies wins (the rest are dropped).
    let view = state.shared.view();
    let mut asks: FuturesUnordered<_> = view
        .peers()
        .map(|member| {
            let path = &path;
            async move {
                let asked = PeerRequest::get(path, limit, Patience::Lookup);
                let answer = peer_request(state, member, asked).await;
                (member, answer.and_then(|a| a.ok_body(member)))
            }
        })
        .collect();
    while let Some((member, answer)) = asks.next().await {
        let body = match answer {
            Ok(body) => body,
            Err(err) if err.is_not_found() => continue,
            Err(err) => {
                silent.push(format!("{} ({err})", member.name));
                continue;
            }
        };
        match checked_metadata(&body, blob_id, n) {
            Ok((metadata, layout)) => return Ok((body, metadata, layout)),
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
pub(crate) fn parse_range(
    value: Option<&HeaderValue>,
    size: u64,
) -> Result<Option<(u64, u64)>, ApiError> {
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
    let located = locate(state, &blob_id).await?;
    let (size, end_epoch) = (located.size, located.end_epoch);
    let range = match parse_range(headers.get(header::RANGE), size) {
        Ok(range) => range,
        Err(err) => {
            let mut response = with_headers(crate::http::body::error_response(&err));
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            );
            return Ok(response);
        }
    };
    let (start, end) = range.unwrap_or((0, size));
    let body: Body = if head {
        Body::default()
    } else {
        blob_body(state, &blob_id, located, range).await?
    };
    state.shared.metrics.sent_bytes.inc_by(end - start);
    let mut response = with_headers(Response::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if end_epoch > 0 {
        h.insert(END_EPOCH_HEADER, HeaderValue::from(end_epoch));
    }
    if let Some((start, end)) = range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)).expect("ASCII"),
        );
    }
    Ok(response)
}

/// A blob found for reading: whole in this core's cache, or its verified metadata.
pub struct Located {
    cached: Option<Bytes>,
    known: Option<Rc<CachedMetadata>>,
    pub size: u64,
    /// This node's end epoch of the blob (0: known from a peer only).
    pub end_epoch: u32,
}

/// Finds a blob to read: 404 `blobNotFound` if no node knows it.
pub async fn locate(state: &Rc<CoreState>, blob_id: &BlobId) -> Result<Located, ApiError> {
    let epoch = state.shared.epoch();
    state.forget_changed();
    let cached = state.blob_cache.borrow_mut().get(blob_id, epoch);
    let known = match &cached {
        Some(_) => None,
        None => Some(find_metadata(state, blob_id).await?),
    };
    let end_epoch = match &known {
        Some(known) => known.end_epoch,
        None => state.blob_cache.borrow().end_epoch(blob_id).unwrap_or(0),
    };
    let size = match (&cached, &known) {
        (Some(blob), _) => blob.len() as u64,
        (None, Some(known)) => known.metadata.blob_bytes(),
        (None, None) => unreachable!("one of the two is set"),
    };
    Ok(Located {
        cached,
        known,
        size,
        end_epoch,
    })
}

/// The bytes of `range` of a located blob (all of it for `None`) as a response body: from
/// the cache, read whole (filling the cache with a whole blob it keeps), or streamed for reads
/// over [`STREAM_FROM_BYTES`].
pub async fn blob_body(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    located: Located,
    range: Option<(u64, u64)>,
) -> Result<Body, ApiError> {
    let blob_id = *blob_id;
    let epoch = state.shared.epoch();
    let size = located.size;
    let (start, end) = range.unwrap_or((0, size));
    // Reads larger than this leave as a stream (memory per request bounded); smaller ones are
    // gathered whole, and whole blobs the cache keeps go through it.
    let whole_max = STREAM_FROM_BYTES.min(state.shared.config.limits.buffer_bytes_per_core / 4);
    Ok({
        match (located.cached, located.known) {
            (Some(blob), _) => {
                state.shared.metrics.blob_cache_hits.inc();
                Body::from(blob.slice(start as usize..end as usize))
            }
            // Only with this node's own metadata is the end epoch known (0 = from a peer):
            // such a whole blob is cached, and concurrent reads of it wait for one fill.
            (None, Some(known))
                if range.is_none()
                    && known.end_epoch >= epoch
                    && state.blob_cache.borrow().keeps(size)
                    && size <= state.shared.config.limits.buffer_bytes_per_core / 4 =>
            {
                Body::from(match fill_or_wait(state, &blob_id, epoch).await {
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
                })
            }
            (None, Some(known)) if end - start <= whole_max => {
                let _reservation = reserve(state, end - start)?;
                Body::from(read_range(state, &blob_id, &known, start, end).await?)
            }
            (None, Some(known)) => {
                if range.is_none() {
                    state.shared.metrics.blob_cache_skipped.inc();
                }
                stream_range(state, blob_id, known, start, end).await?
            }
            (None, None) => unreachable!("one of the two is set"),
        }
    })
}

/// Reads of more bytes than this stream. Why: below it a whole read costs one allocation and
/// answers faster; above it, memory per request stays bounded whatever the blob's size.
const STREAM_FROM_BYTES: u64 = 16 << 20;

/// Bytes of rows a streamed answer reads at once, at most (at least one row; at most a 64th of
/// the core's buffer budget). Why: a few rows keep the disk and the socket busy; more would
/// only cut the number of streams a core can serve at once (each reserves three groups).
const STREAM_GROUP_BYTES_MAX: u64 = 8 << 20;

/// Chunks a streamed answer keeps ready ahead of the socket. Why: the next row is read while
/// the last goes out; a slow reader holds at most this many.
const STREAM_CHUNKS_AHEAD: usize = 2;

/// Streams blob bytes `[start, end)`: the covering systematic rows, a group at a time (see
/// [`STREAM_GROUP_BYTES_MAX`]), each chunk a row's bytes (a
/// view of the mapped segment for this node's own slivers, sent with `sendfile`). The first
/// group is read before the answer starts, so that a read that cannot be served gets its
/// error status; a later failure ends the stream abruptly. A row that cannot be had is
/// recovered on its own ([`crate::recover`]), so memory stays bounded whatever the blob.
async fn stream_range(
    state: &Rc<CoreState>,
    blob_id: BlobId,
    known: Rc<CachedMetadata>,
    start: u64,
    end: u64,
) -> Result<Body, ApiError> {
    let layout = known.layout;
    let spans = byte_range_rows(&layout, start, end)
        .map_err(|e| ApiError::bad_request("invalidRange", e.to_string()))?;
    let budget = state.shared.config.limits.buffer_bytes_per_core;
    let row_bytes = layout.primary_sliver_bytes() as u64;
    let group_bytes = (budget / 64).min(STREAM_GROUP_BYTES_MAX).max(row_bytes);
    let rows_per_group = (group_bytes / row_bytes).max(1) as usize;
    let reservation = reserve(state, (STREAM_CHUNKS_AHEAD as u64 + 1) * group_bytes)?;
    let groups: Vec<Vec<floe_codec::RowSpan>> =
        spans.chunks(rows_per_group).map(<[_]>::to_vec).collect();
    let first = read_group(state, &blob_id, &known, &groups[0]).await?;
    let (mut chunks, body) = futures::channel::mpsc::channel(STREAM_CHUNKS_AHEAD);
    let state = state.clone();
    crate::task::spawn_detached("stream_producer", async move {
        let _reservation = reservation;
        if crate::task::failpoint("stream_producer_panics") {
            panic!("failpoint stream_producer_panics");
        }
        let mut next = Some(Ok(first));
        let mut rest = groups.into_iter().skip(1);
        loop {
            let group = match next.take() {
                Some(group) => group,
                None => match rest.next() {
                    Some(spans) => read_group(&state, &blob_id, &known, &spans).await,
                    None => return,
                },
            };
            match group {
                Ok(pieces) => {
                    for piece in pieces {
                        if futures::SinkExt::send(&mut chunks, Ok(piece))
                            .await
                            .is_err()
                        {
                            return; // the client went away
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(blob = %blob_id, %err, "a streamed read failed midway; the answer is cut");
                    let failure = std::io::Error::other(err.to_string());
                    let _ = futures::SinkExt::send(&mut chunks, Err(failure)).await;
                    return;
                }
            }
        }
    });
    Ok(Body::Stream(body))
}

/// The bytes of `spans` (consecutive rows of one group), a piece per row.
async fn read_group(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    spans: &[floe_codec::RowSpan],
) -> Result<Vec<Bytes>, ApiError> {
    let wanted: Vec<usize> = spans.iter().map(|s| s.row_index).collect();
    let (mut rows, failures) = gather_rows(state, blob_id, known, &wanted, false).await?;
    let missing: Vec<u16> = wanted
        .iter()
        .filter(|r| !rows.contains_key(r))
        .map(|&r| r as u16)
        .collect();
    if !missing.is_empty() {
        // A systematic row that could not be read is recovered on its own from recovery
        // symbols (primary sliver i is row i: about one sliver of traffic), not by decoding
        // the whole blob: memory stays one row per missing row.
        state.shared.metrics.recovered_reads.inc();
        let spread = usize::from(missing[0]);
        let recovered =
            recover_slivers(state, blob_id, known, SliverKind::Primary, &missing, spread).await;
        for (&row, recovered) in missing.iter().zip(recovered) {
            match recovered {
                Ok(data) => {
                    rows.insert(usize::from(row), Bytes::from(data));
                }
                Err(message) => {
                    return Err(ApiError::unavailable(
                        "notEnoughSlivers",
                        format!(
                            "systematic sliver {row} of blob {blob_id} could not be read ({}) \
                             nor recovered: {message}",
                            failures.join("; ")
                        ),
                    ))
                }
            }
        }
    }
    Ok(spans
        .iter()
        .map(|span| rows[&span.row_index].slice(span.start_bytes..span.end_bytes))
        .collect())
}

/// Primary slivers by index, each verified (or this node's own).
type Rows = HashMap<usize, Bytes>;

/// Reads blob bytes `[start, end)`: the systematic rows that cover them, or, if any of those
/// cannot be had (or come too slowly), a decode from any `k_p` primary slivers.
///
/// A disk that fails under the copy of this node's rows poisons their pages
/// (`floe_storage::fault`); a second pass finds those rows lost in the store and decodes
/// from the others.
async fn read_range(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    start: u64,
    end: u64,
) -> Result<Bytes, ApiError> {
    match read_range_once(state, blob_id, known, start, end).await {
        Err(err) if err.code == DISK_READ_FAILED => {
            read_range_once(state, blob_id, known, start, end).await
        }
        read => read,
    }
}

async fn read_range_once(
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
    let (rows, failures) = gather_rows(state, blob_id, known, &wanted, true).await?;
    if wanted.iter().all(|r| rows.contains_key(r)) {
        if let [span] = spans.as_slice() {
            // One row: a view of it (for this node's own slivers, of the mapped file).
            return Ok(rows[&span.row_index].slice(span.start_bytes..span.end_bytes));
        }
        // This node's rows are views of mapped segments: copying them touches their pages.
        let copied = floe_storage::fault::guarded(|| {
            let mut out = BytesMut::with_capacity((end - start) as usize);
            for span in &spans {
                out.extend_from_slice(&rows[&span.row_index][span.start_bytes..span.end_bytes]);
            }
            out.freeze()
        });
        return copied.map_err(|e| mapped_read_failed(blob_id, e));
    }
    // Some systematic row is missing: any k_p primary slivers decode the blob.
    let k_p = layout.config.n_primary_source();
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
    tracing::info!(blob = %blob_id, "systematic slivers missing or slow; decoding from {} primary slivers", rows.len());
    let slivers: Vec<(usize, &[u8])> = rows.iter().map(|(i, b)| (*i, b.as_ref())).collect();
    let decoded =
        floe_storage::fault::guarded(|| decode_primary_verified(&known.metadata, &slivers))
            .map_err(|e| mapped_read_failed(blob_id, e))?;
    let blob = decoded.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "decodeFailed",
            e.to_string(),
        )
    })?;
    Ok(Bytes::from(blob).slice(start as usize..end as usize))
}

const DISK_READ_FAILED: &str = "diskReadFailed";

/// A read whose mapped slivers the disk failed to deliver (`floe_storage::fault`): the
/// records are healed; a retry decodes from the others.
fn mapped_read_failed(blob_id: &BlobId, err: std::io::Error) -> ApiError {
    ApiError::unavailable(
        DISK_READ_FAILED,
        format!("reading blob {blob_id}: {err}; its slivers are being healed, retry"),
    )
}

/// The least time a read waits for the peers holding its systematic rows before it also asks
/// the others (hedging). Why: a healthy peer on a LAN answers a small batch in well under a
/// millisecond; a hung one never does, and a client should not wait a peer deadline for it.
const HEDGE_AFTER_MIN: Duration = Duration::from_millis(150);

/// The transfer rate below which a batch counts as slow for hedging: the wait grows with the
/// bytes asked for, so that a large read from healthy peers is not fetched twice.
const HEDGE_BYTES_PER_SECOND: f64 = 100e6;

/// Verified primary slivers of a blob: every one of `wanted`, or, when some of those are
/// missing or their peers are slow (no answer after the hedge delay) and `may_decode`, enough
/// others to decode from (`k_p` in all). This node's own slivers are read first; peers are asked with one batch
/// request each, all at once; requests still under way when enough is in are dropped.
/// Failures are described in the second value.
async fn gather_rows(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    wanted: &[usize],
    may_decode: bool,
) -> Result<(Rows, Vec<String>), ApiError> {
    let n = state.n();
    let view = state.shared.view();
    let k_p = known.layout.config.n_primary_source();
    let mut rows = Rows::new();
    let mut failures = Vec::new();
    let remote = local_rows(state, blob_id, wanted, &mut rows).await?;
    let mut asked: HashSet<usize> = wanted.iter().copied().collect();
    // Members with a request under way (the slow ones, when the hedge fires).
    let mut waiting: HashSet<&str> = HashSet::new();
    let mut fetches = FuturesUnordered::new();
    for (member, pairs) in by_member(&view, state.n(), blob_id, &remote) {
        waiting.insert(member.name.as_str());
        fetches.push(fetch_from(state, blob_id, known, member, pairs));
    }
    let expected = remote.len() * known.layout.primary_sliver_bytes();
    let hedge_after =
        HEDGE_AFTER_MIN + Duration::from_secs_f64(expected as f64 / HEDGE_BYTES_PER_SECOND);
    let mut hedge = Some(Box::pin(glommio::timer::sleep(hedge_after)));
    loop {
        if wanted.iter().all(|r| rows.contains_key(r)) {
            break;
        }
        if hedge.is_none() && rows.len() >= k_p {
            break;
        }
        let widen = match (fetches.is_empty(), hedge.as_mut()) {
            (true, None) => break,
            // Nothing to decode with: wait for what was asked.
            (true, Some(_)) if !may_decode => break,
            (false, Some(_)) if !may_decode => {
                let done = fetches.next().await.expect("not empty");
                waiting.remove(done.0.name.as_str());
                merge(state, blob_id, done, &mut rows, &mut failures);
                false
            }
            // Every answer is in and some wanted row is missing: decode.
            (true, Some(_)) => true,
            (false, None) => {
                let done = fetches.next().await.expect("not empty");
                waiting.remove(done.0.name.as_str());
                merge(state, blob_id, done, &mut rows, &mut failures);
                false
            }
            (false, Some(timer)) => match select(fetches.next(), timer).await {
                Either::Left((done, _)) => {
                    let done = done.expect("not empty");
                    waiting.remove(done.0.name.as_str());
                    merge(state, blob_id, done, &mut rows, &mut failures);
                    false
                }
                Either::Right(_) => {
                    state.shared.metrics.hedged_reads.inc();
                    true
                }
            },
        };
        if widen {
            hedge = None;
            // Every other primary sliver: this node's own, and those of the members not
            // waited on (a slow member is not asked again).
            let others: Vec<usize> = (0..n)
                .filter(|i| !asked.contains(i) && !rows.contains_key(i))
                .collect();
            asked.extend(others.iter().copied());
            let remote = local_rows(state, blob_id, &others, &mut rows).await?;
            for (member, pairs) in by_member(&view, state.n(), blob_id, &remote) {
                if waiting.insert(member.name.as_str()) {
                    fetches.push(fetch_from(state, blob_id, known, member, pairs));
                }
            }
        }
    }
    Ok((rows, failures))
}

/// Adds this node's own primary slivers among `indices` to `rows`; returns the indices other
/// nodes hold.
async fn local_rows(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    indices: &[usize],
    rows: &mut Rows,
) -> Result<Vec<usize>, ApiError> {
    let n = state.n();
    let view = state.shared.view();
    let mut remote = Vec::new();
    for &index in indices {
        let shard = blob_id.shard_for_pair(index, n) as u16;
        if !view.serves(shard) {
            remote.push(index);
            continue;
        }
        let Some(bytes) =
            crate::state::load_sliver(state, blob_id, shard, SliverKind::Primary).await?
        else {
            // A shard given away and dropped here: its new owner has it.
            if !view.owned[usize::from(shard)] {
                remote.push(index);
            }
            continue;
        };
        let header = floe_storage::fault::guarded(|| sliver_header(&bytes).ok());
        if let Ok(Some(header)) = header {
            rows.insert(index, bytes.slice(header.data));
        }
    }
    Ok(remote)
}

/// `indices` grouped by the committee member holding each.
fn by_member<'a>(
    view: &'a View,
    n: usize,
    blob_id: &BlobId,
    indices: &[usize],
) -> Vec<(&'a Member, Vec<u16>)> {
    let mut grouped: Vec<(&Member, Vec<u16>)> = Vec::new();
    for &index in indices {
        let shard = blob_id.shard_for_pair(index, n) as u16;
        // While a shard moves, its previous owner is asked (it has every sliver until the
        // move is done); a shard this node serves was read locally.
        let Some(member) = view.read_holder(shard).filter(|m| m.name != view.me.name) else {
            continue;
        };
        match grouped.iter_mut().find(|(m, _)| m.name == member.name) {
            Some((_, pairs)) => pairs.push(index as u16),
            None => grouped.push((member, vec![index as u16])),
        }
    }
    grouped
}

/// What one peer's batch gave: its member, and the verified slivers or why there are none.
type Fetched<'a> = (&'a Member, Result<Vec<(usize, Result<Bytes, ()>)>, String>);

/// Asks `member` for the primary slivers `pairs` in one batch and verifies each.
async fn fetch_from<'a>(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    member: &'a Member,
    pairs: Vec<u16>,
) -> Fetched<'a> {
    let path = format!(
        "/v1/blobs/{blob_id}/slivers?kind=primary&pairs={}",
        crate::http::route::format_pair_list(&pairs)
    );
    let layout = &known.layout;
    let sliver_bytes = floe_codec::sliver_bcs_bytes_max(
        SliverKind::Primary.n_symbols(layout),
        layout.symbol_bytes,
    );
    let limit = floe_codec::sliver_batch_bytes_max(pairs.len(), sliver_bytes);
    let asked = PeerRequest::get(&path, limit, Patience::Transfer);
    let body = match peer_request(state, member, asked).await {
        Ok(answer) => match answer.ok_body(member) {
            Ok(body) => body,
            Err(err) => return (member, Err(err.to_string())),
        },
        Err(err) => return (member, Err(err.to_string())),
    };
    let Ok(entries) = decode_sliver_batch(&body) else {
        peer_fault(state, &member.name, "bad_sliver");
        return (member, Err("a malformed sliver batch".into()));
    };
    let candidates: Vec<(usize, Bytes)> = entries
        .into_iter()
        .filter(|e| e.kind == SliverKind::Primary && pairs.contains(&e.pair))
        .map(|e| (usize::from(e.pair), body.slice(e.body)))
        .collect();
    (member, Ok(verify_primaries(state, known, candidates).await))
}

/// Adds what one peer's batch gave to `rows`; failures and lies are described and counted.
fn merge(
    state: &CoreState,
    blob_id: &BlobId,
    (member, fetched): Fetched<'_>,
    rows: &mut Rows,
    failures: &mut Vec<String>,
) {
    let verified = match fetched {
        Ok(verified) => verified,
        Err(message) => {
            failures.push(format!("{}: {message}", member.name));
            return;
        }
    };
    for (index, verified) in verified {
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
}
