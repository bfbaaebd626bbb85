//! Shard migration at an epoch change (nodes on etcd), on core 0.
//!
//! When an epoch begins whose committee gives a shard to another node (`floe committee
//! propose`), the new owner pulls the shard from its previous owner in bulk: pages of
//! `GET /v1/shards/{shard}/slivers` (up to 16 MiB, both slivers of each blob), every sliver
//! verified against the blob's metadata before it is stored, so the move costs about one
//! shard of traffic. Progress (slivers, bytes, the last blob) is reported to the control plane
//! after each page, and a restarted node resumes from it. When the pull ends (or the previous
//! owner cannot be reached), what is still missing (blobs stored while the shard moved, or
//! everything when the previous owner is gone) is rebuilt from recovery symbols (`heal`);
//! then the move is reported done. The previous owner drops a shard it gave away only once
//! the move is done: whatever the view says a node neither holds nor still gives away leaves
//! its index (the records are reclaimed) whenever the view changes and at every open (the
//! records reappear with the index until reclaimed), so a giver that was down when its move
//! finished drops the shard when it returns.
//!
//! Meanwhile writes of the new epoch go to the new owner (the publisher follows the view),
//! reads ask the previous owner for a moving shard (`View::read_holder`), and healing leaves
//! moving shards to this module.
//!
//! Invariant: a sliver is stored only after it verified against its blob's metadata; a shard
//! is dropped only after its new owner reported the move done.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use floe_codec::{sliver_header, BlobId, SliverKind};
use floe_control::MoveProgress;
use futures::StreamExt;

use crate::config::Member;
use crate::control::{ControlPlane, View};
use crate::node_api::{verify_stored_sliver, SHARD_PAGE_BYTES_MAX};
use crate::owner::{Op, Record};
use crate::peer_client::{peer_fault, peer_request, Patience, PeerRequest};
use crate::protocol::shard_page;
use crate::state::{record_kind, sliver_index, store_per_core, CoreState};

/// Blobs asked for per page (the page also stops at [`SHARD_PAGE_BYTES_MAX`]).
const PAGE_BLOBS: u32 = 1000;

/// Shards pulled at once. Why: each pull is a sequence of large requests to one node; a few
/// at once keep the network busy without starving reads.
const PULLS_AT_ONCE: usize = 4;

/// Failed requests in a row after which the previous owner counts as gone (and the rest of
/// the shard is rebuilt from recovery symbols). Each already retried with back-off.
const FAILURES_GIVE_UP: u32 = 3;

/// How long a move that stopped waits before it resumes. Why: what stopped it (etcd, a peer,
/// slivers not rebuildable yet) takes seconds to change.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Moves shards into this node and drops those it gave away, as the view says, until the
/// node stops.
pub async fn run(state: Rc<CoreState>, control: Arc<ControlPlane>) {
    // The blobs to pull are the ones whose metadata this node keeps: wait for the registry's
    // first batch (a new node reads it whole).
    while state.shared.sync.registry_revision.load(Ordering::Acquire) == 0 {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
    let mut seen: Option<Arc<View>> = None;
    let mut dropped: HashSet<(u32, u16)> = HashSet::new();
    loop {
        let stopped = std::cell::Cell::new(false);
        let view = state.shared.view();
        let epoch = view.epoch();
        // Whenever the view changes (a new epoch, a restart) or a move out of here finishes,
        // what this node no longer serves leaves its index: also shards whose move finished
        // while it was down.
        let confirmed: Vec<u16> = view
            .moved_out()
            .into_iter()
            .filter(|shard| dropped.insert((epoch, *shard)))
            .collect();
        if !confirmed.is_empty() || !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &view)) {
            let records = forget_unserved(&state, &view).await;
            for shard in &confirmed {
                state.shared.metrics.migration_dropped_shards.inc();
                tracing::info!(shard, "migration: dropped a shard its new owner confirmed");
            }
            if records > 0 {
                tracing::info!(
                    records,
                    "migration: records of shards this node no longer serves left its index"
                );
            }
            seen = Some(view.clone());
        }
        let incoming = view.moving_in();
        if !incoming.is_empty() {
            futures::stream::iter(incoming)
                .for_each_concurrent(PULLS_AT_ONCE, |(shard, from)| {
                    let (state, control) = (&state, &control);
                    let stopped = &stopped;
                    async move {
                        if let Err(message) = pull(state, control, epoch, shard, &from).await {
                            tracing::warn!(shard, from = %from.name, %message, "migration: the move stopped; it resumes");
                            stopped.set(true);
                        }
                    }
                })
                .await;
        }
        let pause = if stopped.get() {
            RETRY_PAUSE
        } else {
            Duration::from_millis(500)
        };
        glommio::timer::sleep(pause).await;
    }
}

/// Drops from every core's index the shards `view` says this node neither holds nor still
/// gives away; returns how many records went.
async fn forget_unserved(state: &Rc<CoreState>, view: &View) -> usize {
    let forget = view.unserved();
    let mut records = 0;
    for core in 0..state.shared.owners.cores() {
        let forget = forget.clone();
        match state
            .call(core, |reply| Op::ForgetShards { forget, reply })
            .await
        {
            Ok(dropped) => records += dropped,
            Err(err) => tracing::warn!(core, %err, "migration: could not drop stale shards"),
        }
    }
    records
}

/// Pulls `shard` from `from` into this node, then rebuilds what is missing, reporting
/// progress; ends when the move is done, or the epoch changed.
async fn pull(
    state: &Rc<CoreState>,
    control: &Arc<ControlPlane>,
    epoch: u32,
    shard: u16,
    from: &Member,
) -> Result<(), String> {
    let me = state.shared.view().me.name.clone();
    let mut progress = control
        .progress(epoch, shard)
        .await?
        .unwrap_or_else(|| MoveProgress {
            from: from.name.clone(),
            to: me.clone(),
            ..Default::default()
        });
    if progress.done {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let n = state.n();
    let mut after: Option<BlobId> = progress.after.as_deref().and_then(|a| a.parse().ok());
    let mut failures = 0;
    loop {
        if state.shared.epoch() != epoch {
            return Ok(());
        }
        let path = match &after {
            Some(after) => format!("/v1/shards/{shard}/slivers?limit={PAGE_BLOBS}&after={after}"),
            None => format!("/v1/shards/{shard}/slivers?limit={PAGE_BLOBS}"),
        };
        // A page stops after the blob that crosses the cap: room for one more blob's slivers.
        let sliver_max = floe_codec::sliver_bcs_bytes_max(n, floe_codec::SYMBOL_BYTES_MAX);
        let limit = SHARD_PAGE_BYTES_MAX + 33 + 2 * (sliver_max + 37);
        let asked = PeerRequest::get(&path, limit, Patience::Transfer);
        let body = match peer_request(state, from, asked)
            .await
            .and_then(|answer| answer.ok_body(from))
        {
            Ok(body) => body,
            Err(err) => {
                failures += 1;
                if failures < FAILURES_GIVE_UP {
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                tracing::warn!(shard, from = %from.name, %err, "migration: the previous owner does not answer; rebuilding the rest from recovery symbols");
                break;
            }
        };
        failures = 0;
        let (next, slivers) = match shard_page(&body) {
            Ok(page) => page,
            Err(message) => {
                peer_fault(state, &from.name, "bad_shard_page");
                tracing::warn!(shard, from = %from.name, %message, "migration: a malformed page; rebuilding the rest from recovery symbols");
                break;
            }
        };
        let (stored, bytes) = store_page(state, shard, &from.name, slivers).await?;
        progress.slivers += stored;
        progress.bytes += bytes;
        state.shared.metrics.migration_bytes.inc_by(bytes);
        progress.after = next.map(|n| BlobId(n).to_string());
        control
            .report_progress(epoch, shard, progress.clone())
            .await?;
        match next {
            Some(next) => after = Some(BlobId(next)),
            None => break,
        }
    }
    if state.shared.epoch() != epoch {
        return Ok(());
    }
    // Every registered blob known here first (else its slivers were skipped in the pages and
    // would be missed below); if not, the pull starts again once this node caught up.
    let pending = control.cursor.pending_count().map_err(|e| e.to_string())?;
    let applied = state.shared.sync.registry_revision.load(Ordering::Acquire);
    if !crate::protocol::caught_up(pending, applied, control.watched_revision()) {
        return Err(format!(
            "this node has not applied the registry up to date yet ({pending} blobs pending); \
             the move pulls again once it has"
        ));
    }
    // Blobs stored while the shard moved (the previous owner's page had passed them), slivers
    // it lacked, or everything if it is gone.
    let (rebuilt, failed) = crate::heal::heal_shard(state, shard)
        .await
        .map_err(|e| e.to_string())?;
    progress.recovered += rebuilt;
    // A blob the registry does not hold live (a store that failed before its write quorum, or
    // one deleted or expired meanwhile) may never be rebuildable: it does not hold the move.
    let mut blocking = 0;
    for blob in &failed {
        let record = control.lookup(BlobId(*blob)).await?;
        if crate::protocol::blocks_move(record.as_ref(), state.shared.epoch()) {
            blocking += 1;
        }
    }
    if blocking > 0 {
        control
            .report_progress(epoch, shard, progress.clone())
            .await?;
        return Err(format!(
            "slivers of {blocking} registered blobs could not be rebuilt yet; the move stays open"
        ));
    }
    if !failed.is_empty() {
        tracing::info!(
            shard,
            blobs = failed.len(),
            "migration: slivers of blobs the registry does not hold could not be rebuilt; not waited for"
        );
    }
    progress.done = true;
    control
        .report_progress(epoch, shard, progress.clone())
        .await?;
    tracing::info!(
        shard,
        from = %from.name,
        slivers = progress.slivers,
        bytes = progress.bytes,
        recovered = progress.recovered,
        seconds = started.elapsed().as_secs_f64(),
        "migration: shard moved"
    );
    Ok(())
}

/// Verifies a page's slivers against their blobs' metadata and stores them; returns how many
/// were stored and their bytes. A sliver that fails is skipped (and counted against the
/// peer): it is rebuilt from recovery symbols at the end.
async fn store_page(
    state: &Rc<CoreState>,
    shard: u16,
    from: &str,
    slivers: Vec<([u8; 32], SliverKind, bytes::Bytes)>,
) -> Result<(u64, u64), String> {
    let n = state.n();
    let mut records = Vec::with_capacity(slivers.len());
    let mut bytes = 0u64;
    for (blob, kind, sliver) in slivers {
        let blob_id = BlobId(blob);
        let Some(known) = state.metadata(&blob_id).await.map_err(|e| e.to_string())? else {
            // Not known here (yet): healing brings it with its metadata.
            continue;
        };
        let pair = blob_id.pair_for_shard(shard.into(), n) as u16;
        let index = sliver_index(kind, pair, n);
        let verified = sliver_header(&sliver)
            .is_ok_and(|header| usize::from(header.index) == index)
            && verify_stored_sliver(state, &known, kind, &sliver).is_ok();
        if !verified {
            peer_fault(state, from, "bad_sliver");
            tracing::warn!(blob = %blob_id, shard, %kind, from, "migration: a pulled sliver fails verification; skipped");
            continue;
        }
        bytes += sliver.len() as u64;
        records.push(Record {
            key: floe_storage::store::Key {
                blob_id: blob,
                kind: record_kind(kind),
                shard,
            },
            end_epoch: known.end_epoch,
            data: sliver,
        });
    }
    let stored = records.len() as u64;
    let mut per_core: Vec<Vec<Record>> = (0..state.shared.owners.cores())
        .map(|_| Vec::new())
        .collect();
    per_core[state.shared.owners.core_of_shard(shard)] = records;
    store_per_core(state, per_core)
        .await
        .map_err(|e| e.to_string())?;
    Ok((stored, bytes))
}
