//! Sync: learning what peers know, in the background on core 0.
//!
//! Every `sync_interval_seconds`:
//! 1. **Learn**: page through each peer's list of blobs (`GET /v1/blobs?after=`); metadata
//!    this node lacks is fetched from that peer, verified against the blob ID and stored, so
//!    that every node keeps every blob's metadata (a node that was down during a store, or
//!    whose disk was wiped, learns what it missed). A later end epoch a peer lists is taken
//!    (lifetimes only grow, so every node converges on the latest extension). Deletions
//!    travel the same way: each node keeps the greater of its own and the peer's
//!    [`BlobState`] (deletable < deleted < permanent), so every node ends in the same state
//!    whatever order it hears things in, and a peer can delete only what was stored deletable.
//! 2. **Heal**: [`crate::heal`].
//!
//! Progress is in `/metrics` (`floe_sync_*`, `floe_heal_*`) and `/v1/health` (`sync`).

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floe_codec::{metadata_bcs_bytes_max, BlobId};
use floe_storage::format::FLAG_DELETABLE;

use crate::config::Member;
use crate::http::error::ApiError;
use crate::owner::{BlobState, Deleted};
use crate::peer_client::{
    checked_metadata, peer_fault, peer_request, Patience, PeerError, PeerRequest, LISTING_BYTES_MAX,
};
use crate::state::{CoreState, BLOB_DELETED};

/// What `/v1/health` reports of sync (atomics: written on core 0, read on any).
#[derive(Default)]
pub struct SyncStatus {
    pub last_run_unix_seconds: AtomicU64,
    pub blobs_known: AtomicU64,
    pub missing_slivers: AtomicU64,
    pub healed_slivers: AtomicU64,
    pub heal_failures: AtomicU64,
}

impl SyncStatus {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "lastRunUnixSeconds": get(&self.last_run_unix_seconds),
            "blobsKnown": get(&self.blobs_known),
            "missingSlivers": get(&self.missing_slivers),
            "healedSlivers": get(&self.healed_slivers),
            "healFailures": get(&self.heal_failures),
        })
    }
}

/// Blobs listed per page, here and from peers.
const PAGE: u32 = 1000;

/// Runs sync rounds until the node stops (the task is dropped). A committee of one has no
/// one to sync with.
pub async fn run(state: Rc<CoreState>) {
    let interval = state.shared.config.sync_interval_seconds;
    if interval == 0 || state.shared.committee.members.len() < 2 {
        return;
    }
    loop {
        glommio::timer::sleep(Duration::from_secs(interval)).await;
        round(&state).await;
    }
}

/// One round: learn from every peer at once (a hung peer costs the round one lookup
/// deadline, not one per peer), then heal.
pub async fn round(state: &Rc<CoreState>) {
    let learning = state.shared.peers().map(|member| async move {
        if let Err(err) = learn_from(state, member).await {
            tracing::debug!(peer = %member.name, %err, "sync: could not learn from the peer");
        }
    });
    futures::future::join_all(learning).await;
    if let Err(err) = crate::heal::heal(state).await {
        tracing::warn!(%err, "sync: healing stopped early");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    state
        .shared
        .sync
        .last_run_unix_seconds
        .store(now, Ordering::Relaxed);
}

/// Why learning from a peer stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("asking the peer: {0}")]
    Peer(#[from] PeerError),
    #[error("its listing is not JSON: {0}")]
    Listing(#[from] serde_json::Error),
    #[error("storing here: {0}")]
    Local(#[from] ApiError),
}

/// Fetches, verifies and stores the metadata of every blob `member` lists that this node lacks.
async fn learn_from(state: &Rc<CoreState>, member: &Member) -> Result<(), SyncError> {
    let n = state.n();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(id) => format!("/v1/blobs?limit={PAGE}&after={id}"),
            None => format!("/v1/blobs?limit={PAGE}"),
        };
        let asked = PeerRequest::get(&path, LISTING_BYTES_MAX, Patience::Lookup);
        let body = peer_request(state, member, asked).await?.ok_body(member)?;
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        for entry in page["blobs"].as_array().into_iter().flatten() {
            let (Some(id), Some(end_epoch)) = (
                entry["blobId"]
                    .as_str()
                    .and_then(|t| t.parse::<BlobId>().ok()),
                entry["endEpoch"]
                    .as_u64()
                    .and_then(|e| u32::try_from(e).ok()),
            ) else {
                continue;
            };
            if end_epoch < state.shared.committee.current_epoch() {
                continue;
            }
            let theirs = if entry["deleted"].as_bool() == Some(true) {
                BlobState::Deleted
            } else if entry["deletable"].as_bool() == Some(true) {
                BlobState::Deletable
            } else {
                BlobState::Permanent
            };
            let known = state.metadata(&id).await?;
            match (theirs, known) {
                (BlobState::Deleted, known) => {
                    // The home core keeps a permanent blob; a blob never heard of is
                    // remembered as deleted, so that a peer that missed it cannot bring it back.
                    let remembered = match known {
                        Some(_) => false,
                        None => state.deleted(&id).await?.is_some(),
                    };
                    if !remembered {
                        let outcome = state.delete_here(&id, end_epoch).await?;
                        if matches!(outcome, Deleted::Now { .. }) && known.is_some() {
                            tracing::info!(blob = %id, peer = %member.name, "sync: deleted a blob a peer deleted");
                        }
                    }
                    continue;
                }
                (theirs, Some(known)) => {
                    // Known here: take a later end epoch (an extension stored elsewhere), and
                    // a permanent store made elsewhere. The home core's record, not this
                    // core's cache, says what is stored; the merge keeps the greater of each.
                    if end_epoch > known.end_epoch
                        || (theirs == BlobState::Permanent && known.deletable)
                    {
                        if let Some(found) = state.metadata_record(&id).await? {
                            let stored_deletable = found.flags & FLAG_DELETABLE != 0;
                            let permanent_now = theirs == BlobState::Permanent && stored_deletable;
                            if end_epoch > found.end_epoch || permanent_now {
                                state
                                    .store_metadata(
                                        &id,
                                        found.data,
                                        known.metadata.clone(),
                                        known.layout,
                                        end_epoch,
                                        theirs != BlobState::Permanent,
                                        false,
                                    )
                                    .await?;
                                state.shared.metrics.sync_blobs_updated.inc();
                            }
                        }
                    }
                    continue;
                }
                (BlobState::Deletable, None) => {
                    if state.deleted(&id).await?.is_some() {
                        continue;
                    }
                }
                // Permanent overrides a deletion: learnt below.
                (BlobState::Permanent, None) => {}
            }
            let path = format!("/v1/blobs/{id}/metadata");
            let asked = PeerRequest::get(&path, metadata_bcs_bytes_max(n), Patience::Lookup);
            let answer = peer_request(state, member, asked).await?;
            let Ok(body) = answer.ok_body(member) else {
                continue;
            };
            state
                .shared
                .metrics
                .heal_fetched_bytes
                .inc_by(body.len() as u64);
            let (metadata, layout) = match checked_metadata(&body, &id, n) {
                Ok(checked) => checked,
                Err(message) => {
                    peer_fault(state, &member.name, "bad_metadata");
                    tracing::warn!(peer = %member.name, blob = %id, %message, "sync: a peer's metadata fails verification; skipped");
                    continue;
                }
            };
            let deletable = theirs == BlobState::Deletable;
            match state
                .store_metadata(&id, body, metadata, layout, end_epoch, deletable, false)
                .await
            {
                Ok(_) => {
                    state.shared.metrics.sync_blobs_learned.inc();
                }
                // Deleted here meanwhile.
                Err(err) if err.code == BLOB_DELETED => {}
                Err(err) => return Err(err.into()),
            }
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(()),
        }
    }
}
