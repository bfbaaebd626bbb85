//! Self-healing, in the background on core 0 after each sync round ([`crate::sync`]).
//!
//! For every known blob, each core lists the slivers of its shards that are missing (never
//! received, lost with a disk, or dropped by the scrubber as corrupt), and they are rebuilt from
//! recovery symbols, a blob's missing slivers of one kind together: this node's own symbols
//! first, then peers' in turn, each asked once for all the slivers still short
//! (`targetPairs=`: it expands each of its slivers once for all of them) and for no more
//! symbols than they still need, so the traffic is about one sliver (plus Merkle proofs) per
//! rebuilt sliver. Secondary slivers first: a primary sliver needs 2f + 1 symbols, and once a
//! pair's secondary sliver is back, this node's own symbol counts towards them
//! ([`crate::protocol::heal_plan`]). At most `heal_concurrency` blobs at once, so that serving
//! reads is not starved.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use floe_codec::{encode_sliver, BlobId, Sliver, SliverKind};
use floe_storage::format::RecordKind;
use floe_storage::store::Key;
use futures::StreamExt;

use crate::http::error::ApiError;
use crate::metrics::ResultLabel;
use crate::owner::{BlobState, Op, Record};
use crate::protocol::heal_plan;
use crate::recover::recover_slivers;
use crate::state::{sliver_index, CoreState};

/// Blobs listed per page of this node's own list.
const PAGE: usize = 1000;

/// The shards this node holds, by the core that stores them.
fn shards_by_core(state: &CoreState) -> Vec<Vec<u16>> {
    let cores = state.shared.owners.cores();
    let mut shards_of_core: Vec<Vec<u16>> = vec![Vec::new(); cores];
    let view = state.shared.view();
    // A shard moving here is pulled from its previous owner (`migrate`), not rebuilt.
    for &shard in view.me.shards.iter().filter(|s| view.settled(**s)) {
        shards_of_core[state.shared.owners.core_of_shard(shard)].push(shard);
    }
    shards_of_core
}

/// The slivers of `blobs` this node should hold but lacks: (blob, shard, kind).
async fn missing_of(
    state: &Rc<CoreState>,
    shards_of_core: &[Vec<u16>],
    blobs: Vec<[u8; 32]>,
) -> Result<Vec<([u8; 32], u16, RecordKind)>, ApiError> {
    let mut missing = Vec::new();
    for (core, shards) in shards_of_core.iter().enumerate() {
        if shards.is_empty() || blobs.is_empty() {
            continue;
        }
        let (blobs, shards) = (blobs.clone(), shards.clone());
        let found = state
            .call(core, |reply| Op::Missing {
                blobs,
                shards,
                reply,
            })
            .await?;
        missing.extend(found);
    }
    Ok(missing)
}

/// Finds the slivers this node lacks, of every blob it knows, and rebuilds them. Returns how
/// many blobs still lack some.
pub(crate) async fn heal(state: &Rc<CoreState>) -> Result<usize, ApiError> {
    let shards_of_core = shards_by_core(state);
    let epoch = state.shared.epoch();
    let mut after = None;
    let mut known = 0u64;
    let mut missing = Vec::new();
    loop {
        let page = crate::state::list_metadata(state, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.blob_id);
        let stored = page.iter().filter(|l| l.state != BlobState::Deleted);
        known += stored.clone().count() as u64;
        let blobs: Vec<[u8; 32]> = stored
            .filter(|l| l.end_epoch >= epoch)
            .map(|l| l.blob_id)
            .collect();
        missing.extend(missing_of(state, &shards_of_core, blobs).await?);
        if page.len() < PAGE {
            break;
        }
    }
    let metrics = &state.shared.metrics;
    let status = &state.shared.sync;
    status.blobs_known.store(known, Ordering::Relaxed);
    status
        .missing_slivers
        .store(missing.len() as u64, Ordering::Relaxed);
    metrics.sync_blobs_known.set(known as i64);
    metrics.heal_missing_slivers.set(missing.len() as i64);
    let (_, failed) = rebuild_missing(state, missing).await;
    Ok(failed.len())
}

/// Rebuilds the slivers of `blobs` (just learned) this node lacks.
pub(crate) async fn heal_blobs(
    state: &Rc<CoreState>,
    blobs: Vec<[u8; 32]>,
) -> Result<(), ApiError> {
    let missing = missing_of(state, &shards_by_core(state), blobs).await?;
    state
        .shared
        .sync
        .missing_slivers
        .fetch_add(missing.len() as u64, Ordering::Relaxed);
    state
        .shared
        .metrics
        .heal_missing_slivers
        .inc_by(missing.len() as i64);
    rebuild_missing(state, missing).await;
    Ok(())
}

/// Rebuilds `missing` slivers, counting each outcome.
/// Returns how many were rebuilt, and the blobs some of whose slivers could not be (yet).
async fn rebuild_missing(
    state: &Rc<CoreState>,
    missing: Vec<([u8; 32], u16, RecordKind)>,
) -> (u64, Vec<[u8; 32]>) {
    let rebuilt = std::cell::Cell::new(0u64);
    let failed = std::cell::RefCell::new(std::collections::BTreeSet::new());
    if missing.is_empty() {
        return (0, Vec::new());
    }
    let status = &state.shared.sync;
    tracing::info!(slivers = missing.len(), "sync: rebuilding missing slivers");
    // One rebuild per blob and kind, secondary slivers first (`protocol::heal_plan` says why);
    // all of a phase's rebuilds end before the next phase starts.
    let plan = heal_plan(missing);
    let concurrency = state.shared.config.heal_concurrency;
    for kind in [SliverKind::Secondary, SliverKind::Primary] {
        let of_phase: Vec<([u8; 32], Vec<u16>)> = plan
            .iter()
            .filter(|group| group.kind == kind)
            .map(|group| (group.blob_id, group.shards.clone()))
            .collect();
        futures::stream::iter(of_phase)
            .for_each_concurrent(concurrency, |(blob, shards)| {
                let (rebuilt, failed) = (&rebuilt, &failed);
                async move {
                let blob_id = BlobId(blob);
                for (shard, result) in rebuild(state, &blob_id, &shards, kind).await {
                    let label = ResultLabel {
                        result: if result.is_ok() { "ok" } else { "failed" },
                    };
                    state.shared.metrics.heal_slivers.get_or_create(&label).inc();
                    match result {
                        Ok(()) => {
                            rebuilt.set(rebuilt.get() + 1);
                            status.healed_slivers.fetch_add(1, Ordering::Relaxed);
                            status.missing_slivers.fetch_sub(1, Ordering::Relaxed);
                            state.shared.metrics.heal_missing_slivers.dec();
                        }
                        Err(message) => {
                            failed.borrow_mut().insert(blob);
                            status.heal_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(blob = %blob_id, shard, %kind, %message, "sync: could not rebuild a sliver yet");
                        }
                    }
                }
                }
            })
            .await;
    }
    (rebuilt.get(), failed.into_inner().into_iter().collect())
}

/// Rebuilds what this node lacks of `shard` (every live blob it knows) from recovery
/// symbols: the end of a shard's move (stragglers stored while it moved, or everything when
/// the previous owner is gone). Returns how many slivers were rebuilt, and the blobs some of
/// whose slivers could not be.
pub(crate) async fn heal_shard(
    state: &Rc<CoreState>,
    shard: u16,
) -> Result<(u64, Vec<[u8; 32]>), ApiError> {
    let cores = state.shared.owners.cores();
    let mut shards_of_core: Vec<Vec<u16>> = vec![Vec::new(); cores];
    shards_of_core[state.shared.owners.core_of_shard(shard)].push(shard);
    let epoch = state.shared.epoch();
    let (mut rebuilt, mut failed) = (0, Vec::new());
    let mut after = None;
    loop {
        let page = crate::state::list_metadata(state, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.blob_id);
        let blobs: Vec<[u8; 32]> = page
            .iter()
            .filter(|l| l.state != BlobState::Deleted && l.end_epoch >= epoch)
            .map(|l| l.blob_id)
            .collect();
        let missing = missing_of(state, &shards_of_core, blobs).await?;
        let (r, f) = rebuild_missing(state, missing).await;
        rebuilt += r;
        failed.extend(f);
        if page.len() < PAGE {
            break;
        }
    }
    Ok((rebuilt, failed))
}

/// Rebuilds the slivers of `kind` of `shards` of one blob from recovery symbols
/// ([`crate::recover`]) and stores them. Returns each shard's outcome.
async fn rebuild(
    state: &Rc<CoreState>,
    blob_id: &BlobId,
    shards: &[u16],
    kind: SliverKind,
) -> Vec<(u16, Result<(), String>)> {
    let all_failed = |message: String| shards.iter().map(|s| (*s, Err(message.clone()))).collect();
    let known = match state.metadata(blob_id).await {
        Ok(Some(known)) => known,
        Ok(None) => return all_failed("the metadata is gone".into()),
        Err(err) => return all_failed(err.message),
    };
    let n = state.n();
    let pairs: Vec<u16> = shards
        .iter()
        .map(|&shard| blob_id.pair_for_shard(shard.into(), n) as u16)
        .collect();
    // Start at a different peer for each blob, spreading the load.
    let spread = usize::from(shards[0]) + usize::from(blob_id.0[0]);
    let recovered = recover_slivers(state, blob_id, &known, kind, &pairs, spread).await;
    let mut outcomes = Vec::with_capacity(shards.len());
    let mut per_core: Vec<Vec<Record>> = (0..state.shared.owners.cores())
        .map(|_| Vec::new())
        .collect();
    let mut rebuilt = Vec::new();
    for ((&shard, &pair), recovered) in shards.iter().zip(&pairs).zip(recovered) {
        let data = match recovered {
            Ok(data) => data,
            Err(message) => {
                outcomes.push((shard, Err(message)));
                continue;
            }
        };
        let sliver = Sliver {
            kind,
            index: sliver_index(kind, pair, n) as u16,
            symbol_bytes: known.layout.symbol_bytes as u16,
            data,
        };
        state
            .shared
            .metrics
            .heal_rebuilt_bytes
            .inc_by(sliver.data.len() as u64);
        per_core[state.shared.owners.core_of_shard(shard)].push(Record {
            key: Key {
                blob_id: blob_id.0,
                kind: crate::state::record_kind(kind),
                shard,
            },
            end_epoch: known.end_epoch,
            data: Bytes::from(encode_sliver(&sliver)),
        });
        rebuilt.push(shard);
    }
    let stored = crate::state::store_per_core(state, per_core)
        .await
        .map_err(|e| e.message);
    outcomes.extend(rebuilt.into_iter().map(|shard| (shard, stored.clone())));
    outcomes
}
