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

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floe_codec::{metadata_bcs_bytes_max, BlobId};
use floe_storage::format::FLAG_DELETABLE;

use crate::config::Member;
use crate::control::ControlPlane;
use crate::http::error::ApiError;
use crate::owner::{BlobState, Deleted};
use crate::peer_client::{
    checked_metadata, peer_fault, peer_request, Patience, PeerError, PeerRequest, LISTING_BYTES_MAX,
};
use crate::protocol::{self, Known};
use crate::state::{CoreState, BLOB_DELETED};
use floe_control::BlobRecord;
use futures::StreamExt;

/// What `/v1/health` reports of sync (atomics: written on core 0, read on any).
#[derive(Default)]
pub struct SyncStatus {
    pub last_run_unix_seconds: AtomicU64,
    /// The registry revision applied up to (nodes on etcd; 0 before the first batch).
    pub registry_revision: AtomicU64,
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
            "registryRevision": get(&self.registry_revision),
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
/// one to sync with. On etcd, the registry takes the place of listing peers.
pub async fn run(state: Rc<CoreState>) {
    if let Some(control) = state.shared.control.clone() {
        return follow_registry(state, control).await;
    }
    let interval = state.shared.config.sync_interval_seconds;
    if interval == 0 {
        return;
    }
    if state.shared.view().committee.members.len() < 2 {
        return heal_retired(&state, interval).await;
    }
    loop {
        glommio::timer::sleep(Duration::from_secs(interval)).await;
        round(&state).await;
    }
}

/// A committee of one: every `interval` seconds, if a data directory was retired or replaced
/// since, heals its shards from the node's own other shards (until nothing is left to heal).
async fn heal_retired(state: &Rc<CoreState>, interval: u64) {
    let retired = &state.shared.retired;
    loop {
        glommio::timer::sleep(Duration::from_secs(interval)).await;
        if !retired.heal_wanted.swap(false, Ordering::AcqRel) {
            continue;
        }
        match crate::heal::heal(state).await {
            Ok(0) => tracing::info!("healed the shards of retired or replaced data directories"),
            Ok(left) => {
                tracing::warn!(left, "some slivers could not be rebuilt yet; trying again");
                retired.want_heal();
            }
            Err(err) => {
                tracing::warn!(%err, "healing stopped early; trying again");
                retired.want_heal();
            }
        }
        state
            .shared
            .sync
            .last_run_unix_seconds
            .store(now_unix_seconds(), Ordering::Relaxed);
    }
}

/// One round: learn from every peer at once (a hung peer costs the round one lookup
/// deadline, not one per peer), then heal.
pub async fn round(state: &Rc<CoreState>) {
    let view = state.shared.view();
    let learning = view.peers().map(|member| async move {
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

/// Registry records applied at once. Why: each new blob costs a metadata fetch from peers;
/// this many in flight keep a catching-up node busy without flooding its peers.
const APPLY_CONCURRENCY: usize = 32;

/// Pending blobs retried per round. Why: bounded work per round, whatever the backlog.
const PENDING_PER_ROUND: usize = 1000;

/// Applies the registry's records as the control plane hands them over (in revision order),
/// saving the revision after each batch; heals blobs learned on the way; every
/// `sync_interval_seconds` retries the pending blobs and heals what is missing.
async fn follow_registry(state: Rc<CoreState>, control: Arc<ControlPlane>) {
    let Some(mut batches) = control.take_batches() else {
        return;
    };
    let migration = glommio::spawn_local(crate::migrate::run(state.clone(), control.clone()));
    let (to_heal, mut healing) = futures::channel::mpsc::unbounded::<Vec<[u8; 32]>>();
    let healer = {
        let state = state.clone();
        glommio::spawn_local(async move {
            while let Some(blobs) = healing.next().await {
                if let Err(err) = crate::heal::heal_blobs(&state, blobs).await {
                    tracing::debug!(%err, "sync: healing new blobs stopped early");
                }
            }
        })
    };
    let rounds = {
        let (state, control) = (state.clone(), control.clone());
        glommio::spawn_local(async move {
            let interval = state.shared.config.sync_interval_seconds;
            if interval == 0 {
                return;
            }
            loop {
                glommio::timer::sleep(Duration::from_secs(interval)).await;
                retry_pending(&state, &control).await;
                if let Err(err) = crate::heal::heal(&state).await {
                    tracing::warn!(%err, "sync: healing stopped early");
                }
                state
                    .shared
                    .sync
                    .last_run_unix_seconds
                    .store(now_unix_seconds(), Ordering::Relaxed);
            }
        })
    };
    if let Ok(revision) = control.cursor.revision() {
        state
            .shared
            .sync
            .registry_revision
            .store(revision, Ordering::Release);
    }
    match control.cursor.pending_count() {
        Ok(count) => {
            state.shared.metrics.registry_pending.set(count as i64);
        }
        Err(err) => tracing::warn!(%err, "sync: reading the pending blobs"),
    }
    while let Some(batch) = batches.next().await {
        let records = batch.blobs.len() as u64;
        let latest = protocol::latest_per_blob(batch.blobs);
        let (pending, learned, applied) = apply_records(&state, latest).await;
        // A record applied supersedes the blob's older pending one (retried, it would undo
        // what came after it).
        let superseded = applied
            .into_iter()
            .filter(|id| !pending.iter().any(|(p, _)| p == id))
            .collect();
        save(&state, &control, batch.revision, pending, superseded).await;
        state.shared.metrics.registry_records.inc_by(records);
        if let Some(revision) = batch.revision {
            state
                .shared
                .metrics
                .registry_revision
                .set(i64::try_from(revision).unwrap_or(i64::MAX));
            state
                .shared
                .sync
                .registry_revision
                .store(revision, Ordering::Release);
        }
        if !learned.is_empty() {
            let _ = to_heal.unbounded_send(learned);
        }
    }
    drop((healer, rounds, migration));
}

/// Applies registry records; returns those whose metadata no peer gave (pending, with their
/// record), the blobs learned (to heal), and every blob applied (done or learned).
#[allow(clippy::type_complexity)]
async fn apply_records(
    state: &Rc<CoreState>,
    blobs: Vec<(BlobId, BlobRecord)>,
) -> (Vec<([u8; 32], Vec<u8>)>, Vec<[u8; 32]>, Vec<[u8; 32]>) {
    let pending = RefCell::new(Vec::new());
    let learned = RefCell::new(Vec::new());
    let applied = RefCell::new(Vec::new());
    futures::stream::iter(blobs)
        .for_each_concurrent(APPLY_CONCURRENCY, |(id, record)| {
            let (pending, learned, applied) = (&pending, &learned, &applied);
            async move {
                match apply_record(state, &id, record).await {
                    Ok(Applied::Done) => applied.borrow_mut().push(id.0),
                    Ok(Applied::Learned) => {
                        learned.borrow_mut().push(id.0);
                        applied.borrow_mut().push(id.0);
                    }
                    Ok(Applied::Pending) | Err(_) => pending.borrow_mut().push((
                        id.0,
                        serde_json::to_vec(&record).expect("records serialize"),
                    )),
                }
            }
        })
        .await;
    (
        pending.into_inner(),
        learned.into_inner(),
        applied.into_inner(),
    )
}

/// What applying one registry record did.
enum Applied {
    Done,
    /// Metadata fetched and stored: its slivers are to be healed.
    Learned,
    /// No peer gave its metadata yet.
    Pending,
}

async fn apply_record(
    state: &Rc<CoreState>,
    id: &BlobId,
    record: BlobRecord,
) -> Result<Applied, ApiError> {
    let theirs = match record.state {
        floe_control::BlobState::Deletable => BlobState::Deletable,
        floe_control::BlobState::Deleted => BlobState::Deleted,
        floe_control::BlobState::Permanent => BlobState::Permanent,
    };
    if merge_known(state, id, theirs, record.end_epoch, "registry", true).await? == Merge::Done {
        return Ok(Applied::Done);
    }
    let (body, metadata, layout) = match crate::aggregator::metadata_from_peers(state, id).await {
        Ok(found) => found,
        Err(err) => {
            tracing::debug!(blob = %id, %err, "sync: no peer gave the metadata of a registered blob yet");
            return Ok(Applied::Pending);
        }
    };
    state
        .shared
        .metrics
        .heal_fetched_bytes
        .inc_by(body.len() as u64);
    let deletable = theirs == BlobState::Deletable;
    match state
        .store_metadata(
            id,
            body,
            metadata,
            layout,
            record.end_epoch,
            deletable,
            // The registry's word is the latest: a live record after a deletion is a new life
            // (the registry took a store once its deletion expired there).
            true,
        )
        .await
    {
        Ok(_) => {
            state.shared.metrics.sync_blobs_learned.inc();
            Ok(Applied::Learned)
        }
        // Deleted here meanwhile.
        Err(err) if err.code == BLOB_DELETED => Ok(Applied::Done),
        Err(err) => Err(err),
    }
}

/// Saves the revision with the pending blobs (and those resolved) in one commit, on the
/// blocking pool; retried until it holds (a revision not saved would be applied again after
/// a restart, which is harmless; a pending blob lost would not be).
async fn save(
    state: &Rc<CoreState>,
    control: &Arc<ControlPlane>,
    revision: Option<u64>,
    pending: Vec<([u8; 32], Vec<u8>)>,
    resolved: Vec<[u8; 32]>,
) {
    if revision.is_none() && pending.is_empty() && resolved.is_empty() {
        return;
    }
    let change = pending.len() as i64 - resolved.len() as i64;
    let pending = Arc::new(pending);
    let resolved = Arc::new(resolved);
    loop {
        let (cursor, pending, resolved) =
            (control.cursor.clone(), pending.clone(), resolved.clone());
        let saved = glommio::executor()
            .spawn_blocking(move || {
                cursor.advance(floe_storage::cursor::Advance {
                    revision,
                    pending: &pending,
                    resolved: &resolved,
                })
            })
            .await;
        match saved {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%err, "sync: could not save the registry revision; retrying");
                glommio::timer::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    state.shared.metrics.registry_pending.inc_by(change);
}

/// Tries the pending blobs again (a page of them per round).
async fn retry_pending(state: &Rc<CoreState>, control: &Arc<ControlPlane>) {
    let cursor = control.cursor.clone();
    let page = glommio::executor()
        .spawn_blocking(move || cursor.pending(None, PENDING_PER_ROUND))
        .await;
    let page = match page {
        Ok(page) if !page.is_empty() => page,
        Ok(_) => return,
        Err(err) => {
            tracing::warn!(%err, "sync: reading the pending blobs");
            return;
        }
    };
    let blobs: Vec<(BlobId, BlobRecord)> = page
        .iter()
        .filter_map(|(id, record)| Some((BlobId(*id), serde_json::from_slice(record).ok()?)))
        .collect();
    let (still, learned, _) = apply_records(state, blobs).await;
    let resolved: Vec<[u8; 32]> = page
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !still.iter().any(|(s, _)| s == id))
        .collect();
    save(state, control, None, Vec::new(), resolved).await;
    if !learned.is_empty() {
        if let Err(err) = crate::heal::heal_blobs(state, learned).await {
            tracing::debug!(%err, "sync: healing new blobs stopped early");
        }
    }
}

fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
            let theirs = if entry["deleted"].as_bool() == Some(true) {
                BlobState::Deleted
            } else if entry["deletable"].as_bool() == Some(true) {
                BlobState::Deletable
            } else {
                BlobState::Permanent
            };
            if merge_known(state, &id, theirs, end_epoch, &member.name, false).await? == Merge::Done
            {
                continue;
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

/// What [`merge_known`] left to do.
#[derive(Debug, PartialEq, Eq)]
enum Merge {
    Done,
    /// The blob is new here: its metadata is to be fetched.
    Fetch,
}

/// Merges what a peer or the registry says of a blob into this node's state
/// ([`protocol::merge`]): a deletion, a later end epoch, permanence; [`Merge::Fetch`] for a
/// blob this node does not know; nothing for what is past its end epoch
/// ([`protocol::stale`]: but a deletion of a blob held here). From the `registry`, whose records come in revision order
/// (and a blob's pending one is dropped once a later one is applied), a live record is the
/// latest word on the blob: a tombstone here does not stop it (the registry took a store after
/// its deletion expired there; the deterministic simulation found nodes that kept refusing it).
async fn merge_known(
    state: &Rc<CoreState>,
    id: &BlobId,
    theirs: BlobState,
    end_epoch: u32,
    source: &str,
    registry: bool,
) -> Result<Merge, ApiError> {
    let epoch = state.shared.epoch();
    // Past its end whatever is held here: no lookup (most of what an expired listing holds).
    if protocol::stale(theirs, end_epoch, epoch, true) {
        return Ok(Merge::Done);
    }
    let known = state.metadata(id).await?;
    if protocol::stale(theirs, end_epoch, epoch, known.is_some()) {
        return Ok(Merge::Done);
    }
    let tombstone = match known {
        Some(_) => None,
        None if registry && theirs != BlobState::Deleted => None,
        None => state.deleted(id).await?,
    };
    let as_known = |end_epoch, deletable| Known {
        end_epoch,
        deletable,
    };
    let cached = known.as_ref().map(|k| as_known(k.end_epoch, k.deletable));
    match protocol::merge(theirs, end_epoch, cached, tombstone) {
        protocol::Merge::Done => Ok(Merge::Done),
        protocol::Merge::Fetch => Ok(Merge::Fetch),
        protocol::Merge::Delete { end_epoch } => {
            // The home core keeps a permanent blob (from the registry too: a permanent store
            // under way registers after the deletion it raced, and wins there).
            let outcome = state.delete_here(id, end_epoch).await?;
            if matches!(outcome, Deleted::Now { .. }) && known.is_some() {
                tracing::info!(blob = %id, source, "sync: deleted a blob a peer deleted");
            }
            Ok(Merge::Done)
        }
        protocol::Merge::Update { .. } => {
            // The home core's record, not this core's cache, says what is stored: merged again
            // against it (the owner keeps the greater of each).
            let (Some(known), Some(found)) = (known, state.metadata_record(id).await?) else {
                return Ok(Merge::Done);
            };
            let stored = as_known(found.end_epoch, found.flags & FLAG_DELETABLE != 0);
            if let protocol::Merge::Update {
                end_epoch,
                deletable,
            } = protocol::merge(theirs, end_epoch, Some(stored), None)
            {
                state
                    .store_metadata(
                        id,
                        found.data,
                        known.metadata.clone(),
                        known.layout,
                        end_epoch,
                        deletable,
                        false,
                    )
                    .await?;
                state.shared.metrics.sync_blobs_updated.inc();
            }
            Ok(Merge::Done)
        }
    }
}
