//! Recovering slivers from recovery symbols, for healing (which stores them, [`crate::heal`])
//! and for reads around a missing systematic sliver ([`crate::aggregator`]): this node's own
//! symbols first (no traffic), then each peer in turn, asked once for all of the slivers
//! still short (`targetPairs=`: it expands each of its slivers once for all of them) and for
//! no more symbols than they still need, so the traffic is about one sliver (plus Merkle
//! proofs) per recovered sliver. Every symbol is verified before it counts; a peer that sends
//! one that fails is counted and skipped.
//!
//! Boundary: returns the recovered slivers' data (verified against the metadata by
//! `floe_codec::recover_sliver`); storing them is the caller's.

use std::rc::Rc;

use floe_codec::{decode_recovery_symbols, BlobId, SliverKind};
use hyper::StatusCode;

use crate::config::Member;
use crate::node_api::local_recovery_symbols;
use crate::peer_client::{peer_fault, peer_request, Patience, PeerRequest};
use crate::protocol::{Offered, Recovery};
use crate::state::{CachedMetadata, CoreState};

/// Most bytes of symbols one recovery request asks a peer for. Why: one request per blob and
/// kind at n = 100 for blobs up to 64 MiB (a helper expands its slivers once per request),
/// and still a sixteenth of the default per-core body budget.
const REQUEST_BYTES_MAX: usize = 64 << 20;

/// One request for recovery symbols: the slivers (`slots` of the recovery) of `kind` of a blob,
/// `want` symbols each.
struct Asked<'a> {
    blob_id: &'a BlobId,
    known: &'a CachedMetadata,
    kind: SliverKind,
    slots: &'a [usize],
    pairs: &'a [u16],
    want: usize,
}

/// Asks `member` for symbols for `asked` and offers them to `recovery` ([`Recovery::offer`]);
/// a symbol that fails, or that was not asked for, is counted against the peer and skipped.
async fn ask_for_symbols(
    state: &Rc<CoreState>,
    member: &Member,
    asked: &Asked<'_>,
    recovery: &mut Recovery,
) {
    let (blob_id, known, kind) = (asked.blob_id, asked.known, asked.kind);
    let pairs: Vec<u16> = asked.slots.iter().map(|&slot| asked.pairs[slot]).collect();
    let path = format!(
        "/v1/blobs/{blob_id}/recoverySymbols?targetPairs={}&targetKind={kind}&limit={}",
        crate::http::route::format_pair_list(&pairs),
        asked.want
    );
    let limit = asked.slots.len()
        * asked.want
        * floe_codec::recovery_symbol_bytes_max(known.layout.symbol_bytes)
        + 16;
    let request = PeerRequest::get(&path, limit, Patience::Transfer);
    let Ok(answer) = peer_request(state, member, request).await else {
        return;
    };
    state
        .shared
        .metrics
        .heal_fetched_bytes
        .inc_by(answer.body.len() as u64);
    if answer.status != StatusCode::OK {
        return;
    }
    let Ok(received) = decode_recovery_symbols(&answer.body) else {
        peer_fault(state, &member.name, "bad_symbol");
        return;
    };
    for symbol in received {
        if recovery.offer(asked.slots, symbol, &known.metadata, &known.layout) == Offered::Bad {
            peer_fault(state, &member.name, "bad_symbol");
            tracing::warn!(peer = %member.name, blob = %blob_id, "sync: a peer sent a recovery symbol that fails verification; skipped");
        }
    }
}

/// Recovers the slivers of `kind` of `pairs` of one blob: each one's data, or why it could not
/// be had. `spread` picks the first peer asked (callers vary it to spread the load).
pub(crate) async fn recover_slivers(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    known: &CachedMetadata,
    kind: SliverKind,
    pairs: &[u16],
    spread: usize,
) -> Vec<Result<Vec<u8>, String>> {
    let n = state.n();
    let mut recovery = Recovery::new(kind, pairs, n, &known.layout);
    // This node's own slivers of the other kind cost no traffic.
    match local_recovery_symbols(state, blob_id, known, pairs, kind, None).await {
        Ok(symbols) => recovery.add_own(symbols),
        Err(err) => return pairs.iter().map(|_| Err(err.message.clone())).collect(),
    }
    let members = &state.shared.view().committee.members;
    let start = spread % members.len();
    for member in members.iter().cycle().skip(start).take(members.len()) {
        let short = recovery.short();
        if short.is_empty() {
            break;
        }
        let want = recovery.want(&short);
        if member.name == state.shared.view().me.name {
            continue;
        }
        // Requests of at most REQUEST_BYTES_MAX of answer each.
        let per_target = want * floe_codec::recovery_symbol_bytes_max(known.layout.symbol_bytes);
        let per_request = (REQUEST_BYTES_MAX / per_target).max(1);
        for chunk in short.chunks(per_request) {
            let asked = Asked {
                blob_id,
                known,
                kind,
                slots: chunk,
                pairs,
                want,
            };
            ask_for_symbols(state, member, &asked, &mut recovery).await;
        }
    }
    recovery.finish(&known.metadata)
}
