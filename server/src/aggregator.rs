//! The user API's reads (`api.md`, "Users"): `GET|HEAD /v1/blobs/{id}`, served by every node.
//!
//! The aggregator reads the systematic primary slivers that cover the requested bytes: from
//! this node's own stores (verified when they were stored; their checksums hold, so no second
//! Reed-Solomon check) or from the peers holding them (each one verified against the metadata,
//! a peer that lies is skipped and counted). If any is missing it decodes from any `k_p`
//! verified primary slivers. Whole blobs are kept in a per-core cache
//! ([`crate::blob_cache::BlobCache`]), so a hot blob costs no network, decoding or hashing;
//! blobs are immutable, so the cache is never stale.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use floe_codec::{
    byte_range_rows, decode_primary_verified, decode_sliver_batch, sliver_header, verify_sliver,
    BlobId, BlobLayout, BlobMetadata, SliverKind,
};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::blob_cache::{fill_or_wait, Fill};
use crate::budget::reserve;
use crate::http::body::{octets, Body};
use crate::http::error::ApiError;
use crate::peer_client::{checked_metadata, peer_fault, peer_request};
use crate::state::{CachedMetadata, CoreState};

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
            let mut response = with_headers(crate::http::body::error_response(&err));
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
                crate::state::load_sliver(state, blob_id, shard, SliverKind::Primary).await?
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
            crate::http::route::format_pair_list(&pairs)
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
