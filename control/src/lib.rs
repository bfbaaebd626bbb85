//! floe's control plane in etcd (issue 17): the committee of each epoch, the current epoch,
//! and the blob registry, stored under a prefix (default `/floe/`), through a well-kept client
//! (`etcd-client`, tokio and tonic).
//!
//! Keys (values are JSON):
//!
//! ```text
//! {prefix}epoch                   {"epoch": E, "startedUnixSeconds": T}
//! {prefix}committee/{E:010}       the committee of epoch E (n, nodes, addresses, shards)
//! {prefix}blobs/{blob ID}         {"size": B, "endEpoch": E, "state": "permanent"|"deletable"|"deleted"}
//! {prefix}leader/...              the election of the node that advances epochs (etcd's election API)
//! {prefix}moves/{E:010}           the shards that change owner at the start of epoch E
//! {prefix}progress/{E:010}/{S:05} how far the move of shard S into epoch E got (its new owner writes it)
//! ```
//!
//! The registry is an ordered log of events by etcd's own revisions: every change of a blob's
//! record is a put at a new revision, and nodes watch `{prefix}blobs/` from the last revision
//! they applied; a node too far behind (etcd compacted its revision) pages through the whole
//! registry at one pinned revision instead ([`Control::blobs_page`]).
//!
//! Invariants: the first epoch is written once, with its committee, in one transaction that
//! holds only if no epoch exists (`create_revision == 0`); a committee record is never
//! rewritten once its epoch began; an epoch advances only by compare-and-swap on the epoch
//! key's revision (so two advancers cannot both advance it); a blob's record only grows (end
//! epoch) and rises (deletable < deleted < permanent), merged by compare-and-swap.
//! Boundary: every etcd call runs on the caller's tokio runtime (the node's cores reach it
//! through a runtime thread of its own); errors are typed ([`ControlError`]), each with what to
//! do.

pub mod namespace;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use etcd_client;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The prefix every key lives under unless configured otherwise.
pub const PREFIX_DEFAULT: &str = "/floe/";

/// Why a control-plane call failed.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("etcd at {endpoints} cannot be reached ({message}). Fix: start etcd, or name its client URLs with --etcd")]
    Unreachable { endpoints: String, message: String },
    #[error("the control plane under {prefix} already holds epoch {epoch}: a committee is initialised once (propose a change instead)")]
    AlreadyInitialized { prefix: String, epoch: u64 },
    #[error("no committee under {prefix} yet. Fix: floe committee init FILE --etcd URL")]
    NotInitialized { prefix: String },
    #[error("{key} in etcd is not what floe writes: {message}")]
    Corrupt { key: String, message: String },
    #[error("the proposal is refused: {0}")]
    Proposal(String),
    #[error("{key} changed under every attempt to update it; try again")]
    Contended { key: String },
    #[error(
        "etcd compacted its history past revision {revision}; read the whole registry instead"
    )]
    Compacted { revision: i64 },
    #[error("etcd failed: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// One member of a committee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub name: String,
    pub address: String,
    /// Sorted.
    pub shards: Vec<u16>,
}

/// The committee of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitteeRecord {
    pub n_shards: u16,
    pub epoch_seconds: u64,
    pub genesis_unix_seconds: u64,
    pub members: Vec<MemberRecord>,
}

/// The current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    pub epoch: u64,
    pub started_unix_seconds: u64,
}

/// A blob's state in the registry. Ordered: a record only rises (a permanent store of a
/// deletable blob makes it permanent; a deletion is final for a deletable blob).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BlobState {
    Deletable,
    Deleted,
    Permanent,
}

/// A certified blob as the registry knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobRecord {
    pub size: u64,
    pub end_epoch: u32,
    pub state: BlobState,
}

impl BlobRecord {
    /// The record that says both: the later end epoch, the higher state.
    pub fn merge(self, other: BlobRecord) -> BlobRecord {
        BlobRecord {
            size: self.size.max(other.size),
            end_epoch: self.end_epoch.max(other.end_epoch),
            state: self.state.max(other.state),
        }
    }
}

/// A shard that changes owner at an epoch change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    pub shard: u16,
    pub from: String,
    pub to: String,
}

/// The shards that change owner when an epoch begins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MovePlan {
    pub epoch: u64,
    pub moves: Vec<Move>,
}

/// How far one shard's move got, as its new owner reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveProgress {
    pub from: String,
    pub to: String,
    /// Slivers pulled from the previous owner (verified and stored).
    pub slivers: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Slivers rebuilt from recovery symbols instead (the previous owner lacked them or was gone).
    pub recovered: u64,
    /// The last blob pulled, to resume from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The new owner holds every sliver of the shard; the previous owner may drop it.
    pub done: bool,
}

/// The moves of an epoch and how far each got.
#[derive(Clone, Debug, Default)]
pub struct MoveStatus {
    pub plan: MovePlan,
    /// By shard, for the moves that reported.
    pub progress: std::collections::BTreeMap<u16, MoveProgress>,
}

impl MoveStatus {
    /// Every move finished (true when there are none).
    pub fn done(&self) -> bool {
        self.plan
            .moves
            .iter()
            .all(|m| self.progress.get(&m.shard).is_some_and(|p| p.done))
    }
}

/// The moves between two committees: each shard whose owner changes.
pub fn moves_between(before: &CommitteeRecord, after: &CommitteeRecord) -> Vec<Move> {
    let owner = |committee: &CommitteeRecord, shard: u16| {
        committee
            .members
            .iter()
            .find(|m| m.shards.contains(&shard))
            .map(|m| m.name.clone())
    };
    (0..after.n_shards)
        .filter_map(|shard| {
            let (from, to) = (owner(before, shard)?, owner(after, shard)?);
            (from != to).then_some(Move { shard, from, to })
        })
        .collect()
}

/// One page of the registry read at one revision.
pub struct BlobsPage {
    /// (blob ID text, record), in key order.
    pub blobs: Vec<(String, BlobRecord)>,
    /// The revision the page was read at (pass it again for the next page).
    pub revision: i64,
    /// Whether more follow the last one.
    pub more: bool,
    /// How many keys the page's range held from its start (this page's included).
    pub left: u64,
}

/// Keys above which a range of the registry is read as 64 narrower ranges. Why: etcd counts
/// the keys of a page's whole range (measured at 1M keys: 0.5 s a page over all of them,
/// 0.02 s over a 64th), so pages stay cheap only over ranges of this order.
pub const SPLIT_ABOVE: u64 = 20_000;

/// Characters of blob ID prefix a scan splits ranges to at most (64^3 = 262,144 ranges:
/// bounded work for registries of billions).
pub const SPLIT_DEPTH: usize = 3;

/// A scan of the whole registry at one revision, page by page, splitting ranges that hold
/// more than [`SPLIT_ABOVE`] keys by blob ID prefix (see [`Control::blobs_page`]).
pub struct RegistryScan {
    ranges: Vec<String>,
    current: Option<(String, Option<String>)>,
    at: Option<i64>,
    page: i64,
}

impl RegistryScan {
    /// A scan in pages of `page` records.
    pub fn new(page: i64) -> Self {
        Self {
            ranges: vec![String::new()],
            current: None,
            at: None,
            page,
        }
    }

    /// The revision the scan reads at (after its first page).
    pub fn revision(&self) -> Option<i64> {
        self.at
    }

    /// The next page (possibly empty), `None` at the end.
    pub async fn next(
        &mut self,
        control: &mut Control,
    ) -> Result<Option<Vec<(String, BlobRecord)>>, ControlError> {
        loop {
            let (within, after) = match self.current.take() {
                Some(current) => current,
                None => match self.ranges.pop() {
                    Some(within) => (within, None),
                    None => return Ok(None),
                },
            };
            let page = control
                .blobs_page(&within, after.as_deref(), self.page, self.at)
                .await?;
            self.at = Some(page.revision);
            if after.is_none() && page.left > SPLIT_ABOVE && within.len() < SPLIT_DEPTH {
                let narrower = BLOB_ID_FIRST_CHARS.chars().rev();
                self.ranges.extend(narrower.map(|c| format!("{within}{c}")));
                continue;
            }
            if page.more {
                let last = page.blobs.last().map(|(id, _)| id.clone());
                self.current = Some((within, last));
            }
            return Ok(Some(page.blobs));
        }
    }
}

/// The characters a blob ID's text starts with (URL-safe base64), in key order: the ranges a
/// full read of the registry splits into.
pub const BLOB_ID_FIRST_CHARS: &str =
    "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// The end of the key range of every key starting with `prefix` (etcd's "prefix end").
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Attempts of a compare-and-swap before giving up. Why: each failure means another writer
/// changed the key in between; more than this many in a row is contention to report.
const CAS_ATTEMPTS: usize = 16;

/// A connection to the control plane.
#[derive(Clone)]
pub struct Control {
    client: Client,
    prefix: String,
}

impl Control {
    /// Connects to one of the etcd members at `endpoints` (client URLs), keys under `prefix`;
    /// fails once none answers (each given `timeout`).
    ///
    /// One member at a time, starting after the one the previous call used: a client balanced
    /// over every member keeps sending some calls to a dead one (each failing), while a client
    /// of one member fails as a whole when that member dies, and the caller connects again,
    /// to the next.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, ControlError> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let first = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..endpoints.len() {
            let endpoint = &endpoints[(first + i) % endpoints.len()];
            match Self::connect_one(endpoint, timeout).await {
                Ok(client) => {
                    let prefix = if prefix.ends_with('/') {
                        prefix.to_string()
                    } else {
                        format!("{prefix}/")
                    };
                    return Ok(Self { client, prefix });
                }
                Err(message) => failures.push(format!("{endpoint}: {message}")),
            }
        }
        Err(ControlError::Unreachable {
            endpoints: endpoints.join(","),
            message: if failures.is_empty() {
                "no endpoint given".into()
            } else {
                failures.join("; ")
            },
        })
    }

    async fn connect_one(endpoint: &str, timeout: Duration) -> Result<Client, String> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let mut client = tokio::time::timeout(timeout, Client::connect([endpoint], Some(options)))
            .await
            .map_err(|_| format!("no answer in {} s", timeout.as_secs()))?
            .map_err(|e| e.to_string())?;
        // A round trip: a client connects lazily.
        client.status().await.map_err(|e| e.to_string())?;
        Ok(client)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client, for watches and elections.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    pub fn committee_key(&self, epoch: u64) -> String {
        format!("{}committee/{epoch:010}", self.prefix)
    }

    pub fn moves_key(&self, epoch: u64) -> String {
        format!("{}moves/{epoch:010}", self.prefix)
    }

    pub fn progress_prefix(&self, epoch: u64) -> String {
        format!("{}progress/{epoch:010}/", self.prefix)
    }

    /// Where every move's progress lives (all epochs).
    pub fn progress_root(&self) -> String {
        format!("{}progress/", self.prefix)
    }

    /// Where every blob's record lives.
    pub fn blobs_prefix(&self) -> String {
        format!("{}blobs/", self.prefix)
    }

    /// The election of the node that advances epochs.
    pub fn leader_election(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// The blob ID text of a registry key.
    pub fn blob_of_key<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.blobs_prefix().as_str())
    }

    /// Writes `committee` as epoch `first`'s, and `first` as the current epoch, in one
    /// transaction that holds only if no epoch exists yet.
    pub async fn init(
        &mut self,
        committee: &CommitteeRecord,
        first: u64,
        now_unix_seconds: u64,
    ) -> Result<(), ControlError> {
        let epoch = EpochRecord {
            epoch: first,
            started_unix_seconds: now_unix_seconds,
        };
        let json = |value: serde_json::Result<Vec<u8>>| value.expect("records serialize");
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.epoch_key(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    self.committee_key(first),
                    json(serde_json::to_vec(committee)),
                    None,
                ),
                TxnOp::put(self.epoch_key(), json(serde_json::to_vec(&epoch)), None),
            ]);
        let answer = self.client.txn(txn).await?;
        if answer.succeeded() {
            return Ok(());
        }
        let current = self.current_epoch().await?;
        Err(ControlError::AlreadyInitialized {
            prefix: self.prefix.clone(),
            epoch: current.map_or(0, |e| e.epoch),
        })
    }

    /// The current epoch, if the control plane was initialised.
    pub async fn current_epoch(&mut self) -> Result<Option<EpochRecord>, ControlError> {
        let key = self.epoch_key();
        self.get_json(&key).await
    }

    /// The committee of `epoch`.
    pub async fn committee(&mut self, epoch: u64) -> Result<Option<CommitteeRecord>, ControlError> {
        let key = self.committee_key(epoch);
        self.get_json(&key).await
    }

    /// The current epoch and its committee: [`ControlError::NotInitialized`] before `init`.
    pub async fn current(&mut self) -> Result<(EpochRecord, CommitteeRecord), ControlError> {
        let not_initialized = ControlError::NotInitialized {
            prefix: self.prefix.clone(),
        };
        let epoch = self.current_epoch().await?.ok_or(not_initialized)?;
        let key = self.committee_key(epoch.epoch);
        let committee = self
            .committee(epoch.epoch)
            .await?
            .ok_or(ControlError::Corrupt {
                key,
                message: format!("epoch {} has no committee", epoch.epoch),
            })?;
        Ok((epoch, committee))
    }

    /// The current epoch with its key's modification revision (for [`Control::advance`]).
    pub async fn current_epoch_at(&mut self) -> Result<Option<(EpochRecord, i64)>, ControlError> {
        let key = self.epoch_key();
        let answer = self.client.get(key.as_str(), None).await?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(None);
        };
        let record = serde_json::from_slice(kv.value()).map_err(|e| ControlError::Corrupt {
            key,
            message: e.to_string(),
        })?;
        Ok(Some((record, kv.mod_revision())))
    }

    /// Makes `seen.epoch + 1` the current epoch, if the epoch key is still at `seen_revision`
    /// (and, with `fence`, the key `fence.0` still has create revision `fence.1`: the caller
    /// still leads). Its committee is the one proposed for it, or else the current one again.
    /// Returns whether this call advanced it.
    pub async fn advance(
        &mut self,
        seen: EpochRecord,
        seen_revision: i64,
        fence: Option<(Vec<u8>, i64)>,
        now_unix_seconds: u64,
    ) -> Result<bool, ControlError> {
        let next = seen.epoch + 1;
        let proposed = self.committee(next).await?;
        let mut when = vec![Compare::mod_revision(
            self.epoch_key(),
            CompareOp::Equal,
            seen_revision,
        )];
        if let Some((key, revision)) = fence {
            when.push(Compare::create_revision(key, CompareOp::Equal, revision));
        }
        let record = EpochRecord {
            epoch: next,
            started_unix_seconds: now_unix_seconds,
        };
        let mut ops = vec![TxnOp::put(
            self.epoch_key(),
            serde_json::to_vec(&record).expect("records serialize"),
            None,
        )];
        if proposed.is_none() {
            let current =
                self.committee(seen.epoch)
                    .await?
                    .ok_or_else(|| ControlError::Corrupt {
                        key: self.committee_key(seen.epoch),
                        message: format!("epoch {} has no committee", seen.epoch),
                    })?;
            // Nobody proposed one meanwhile (else this fails and the caller looks again).
            when.push(Compare::create_revision(
                self.committee_key(next),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(
                self.committee_key(next),
                serde_json::to_vec(&current).expect("records serialize"),
                None,
            ));
        }
        let answer = self.client.txn(Txn::new().when(when).and_then(ops)).await?;
        Ok(answer.succeeded())
    }

    /// Deletes the registry records of blobs whose end epoch is before `epoch` (each only if
    /// unchanged since it was read: an extension meanwhile keeps it); returns how many. Nodes
    /// expire such blobs by the same epoch on their own; this keeps etcd from growing with
    /// every blob ever stored.
    pub async fn forget_expired(&mut self, epoch: u32) -> Result<u64, ControlError> {
        let mut scan = RegistryScan::new(1000);
        let mut forgotten = 0;
        let prefix = self.blobs_prefix();
        while let Some(page) = scan.next(self).await? {
            let expired: Vec<String> = page
                .into_iter()
                .filter(|(_, record)| record.end_epoch < epoch)
                .map(|(id, _)| format!("{prefix}{id}"))
                .collect();
            for key in expired {
                let answer = self.client.get(key.as_str(), None).await?;
                let Some(kv) = answer.kvs().first() else {
                    continue;
                };
                let still = serde_json::from_slice::<BlobRecord>(kv.value())
                    .is_ok_and(|r| r.end_epoch < epoch);
                if !still {
                    continue;
                }
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                if self.client.txn(txn).await?.succeeded() {
                    forgotten += 1;
                }
            }
        }
        Ok(forgotten)
    }

    /// The moves into `epoch` and how far each got.
    pub async fn move_status(&mut self, epoch: u64) -> Result<MoveStatus, ControlError> {
        let plan: MovePlan = self
            .get_json(&self.moves_key(epoch))
            .await?
            .unwrap_or(MovePlan {
                epoch,
                moves: Vec::new(),
            });
        let prefix = self.progress_prefix(epoch);
        let answer = self
            .client
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_range(prefix_end(prefix.as_bytes()))),
            )
            .await?;
        let mut progress = std::collections::BTreeMap::new();
        for kv in answer.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(shard) = key
                .strip_prefix(&prefix)
                .and_then(|s| s.parse::<u16>().ok())
            else {
                continue;
            };
            let report: MoveProgress =
                serde_json::from_slice(kv.value()).map_err(|e| ControlError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            progress.insert(shard, report);
        }
        Ok(MoveStatus { plan, progress })
    }

    /// How far the move of `shard` into `epoch` got, as last reported.
    pub async fn move_progress(
        &mut self,
        epoch: u64,
        shard: u16,
    ) -> Result<Option<MoveProgress>, ControlError> {
        let key = self.progress_key(epoch, shard);
        self.get_json(&key).await
    }

    fn progress_key(&self, epoch: u64, shard: u16) -> String {
        format!("{}{shard:05}", self.progress_prefix(epoch))
    }

    /// Records how far the move of `shard` into `epoch` got.
    pub async fn report_progress(
        &mut self,
        epoch: u64,
        shard: u16,
        progress: &MoveProgress,
    ) -> Result<(), ControlError> {
        let key = self.progress_key(epoch, shard);
        self.client
            .put(
                key,
                serde_json::to_vec(progress).expect("records serialize"),
                None,
            )
            .await?;
        Ok(())
    }

    /// Sets the committee of the next epoch (same n; nodes added or removed, shards moved)
    /// with the moves it implies; with `now`, begins that epoch at once. Refused while the
    /// moves into the current epoch are unfinished. Returns the next epoch and its moves.
    pub async fn propose(
        &mut self,
        committee: &CommitteeRecord,
        now: bool,
        now_unix_seconds: u64,
    ) -> Result<(u64, MovePlan), ControlError> {
        let prefix = self.prefix.clone();
        let not_initialized = || ControlError::NotInitialized { prefix };
        let (current, at) = self
            .current_epoch_at()
            .await?
            .ok_or_else(not_initialized.clone())?;
        let before = self
            .committee(current.epoch)
            .await?
            .ok_or_else(not_initialized)?;
        if committee.n_shards != before.n_shards {
            return Err(ControlError::Proposal(format!(
                "n_shards is {} in the proposal but {} now: n never changes (the blobs stored \
                 are encoded for it)",
                committee.n_shards, before.n_shards
            )));
        }
        let status = self.move_status(current.epoch).await?;
        if !status.done() {
            let open = status
                .plan
                .moves
                .iter()
                .filter(|m| !status.progress.get(&m.shard).is_some_and(|p| p.done))
                .count();
            return Err(ControlError::Proposal(format!(
                "{open} shards are still moving into epoch {}: wait until `floe committee \
                 status` says done",
                current.epoch
            )));
        }
        let next = current.epoch + 1;
        let plan = MovePlan {
            epoch: next,
            moves: moves_between(&before, committee),
        };
        let json = |value: serde_json::Result<Vec<u8>>| value.expect("records serialize");
        let mut ops = vec![
            TxnOp::put(
                self.committee_key(next),
                json(serde_json::to_vec(committee)),
                None,
            ),
            TxnOp::put(self.moves_key(next), json(serde_json::to_vec(&plan)), None),
        ];
        if now {
            let epoch = EpochRecord {
                epoch: next,
                started_unix_seconds: now_unix_seconds,
            };
            ops.push(TxnOp::put(
                self.epoch_key(),
                json(serde_json::to_vec(&epoch)),
                None,
            ));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.epoch_key(),
                CompareOp::Equal,
                at,
            )])
            .and_then(ops);
        if !self.client.txn(txn).await?.succeeded() {
            return Err(ControlError::Contended {
                key: self.epoch_key(),
            });
        }
        Ok((next, plan))
    }

    /// Merges `record` into blob `blob_id`'s registry entry (the later end epoch, the higher
    /// state) by compare-and-swap; a record that changes nothing writes nothing (no event).
    /// Returns the merged record.
    pub async fn register(
        &mut self,
        blob_id: &str,
        record: BlobRecord,
    ) -> Result<BlobRecord, ControlError> {
        let key = format!("{}{blob_id}", self.blobs_prefix());
        for _ in 0..CAS_ATTEMPTS {
            let answer = self.client.get(key.as_str(), None).await?;
            let (merged, compare) = match answer.kvs().first() {
                Some(kv) => {
                    let stored: BlobRecord =
                        serde_json::from_slice(kv.value()).map_err(|e| ControlError::Corrupt {
                            key: key.clone(),
                            message: e.to_string(),
                        })?;
                    let merged = stored.merge(record);
                    if merged == stored {
                        return Ok(stored);
                    }
                    (
                        merged,
                        Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                    )
                }
                None => (
                    record,
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                ),
            };
            let put = TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&merged).expect("records serialize"),
                None,
            );
            let txn = Txn::new().when([compare]).and_then([put]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(merged);
            }
        }
        Err(ControlError::Contended { key })
    }

    /// A blob's registry record.
    pub async fn blob(&mut self, blob_id: &str) -> Result<Option<BlobRecord>, ControlError> {
        let key = format!("{}{blob_id}", self.blobs_prefix());
        self.get_json(&key).await
    }

    /// Up to `limit` records of blobs whose ID starts with `within` ("" for all), after blob
    /// `after` (from the first without), read at `revision` (the current one for `None`: pass
    /// the answer's revision for the next page, so that all pages are one consistent view). A
    /// revision etcd compacted away is [`ControlError::Compacted`].
    ///
    /// etcd counts every key left in a page's range (its answer's `count`), so a page of a
    /// range of N keys costs O(N): a caller reading millions pages through narrower `within`
    /// ranges (see [`BlobsPage::left`]).
    pub async fn blobs_page(
        &mut self,
        within: &str,
        after: Option<&str>,
        limit: i64,
        revision: Option<i64>,
    ) -> Result<BlobsPage, ControlError> {
        let prefix = format!("{}{within}", self.blobs_prefix());
        let start = match after {
            Some(after) => format!("{}{after}\0", self.blobs_prefix()).into_bytes(),
            None => prefix.clone().into_bytes(),
        };
        let mut options = GetOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_limit(limit);
        if let Some(revision) = revision {
            options = options.with_revision(revision);
        }
        let answer = match self.client.get(start, Some(options)).await {
            Ok(answer) => answer,
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("compacted") =>
            {
                return Err(ControlError::Compacted {
                    revision: revision.unwrap_or(0),
                })
            }
            Err(err) => return Err(err.into()),
        };
        let read_at = answer.header().map_or(0, |h| h.revision());
        let mut blobs = Vec::with_capacity(answer.kvs().len());
        for kv in answer.kvs() {
            let Some(id) = self.blob_of_key(kv.key()) else {
                continue;
            };
            let record = serde_json::from_slice(kv.value()).map_err(|e| ControlError::Corrupt {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                message: e.to_string(),
            })?;
            blobs.push((id.to_string(), record));
        }
        Ok(BlobsPage {
            blobs,
            revision: revision.unwrap_or(read_at),
            more: answer.more(),
            left: u64::try_from(answer.count()).unwrap_or(0),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, ControlError> {
        let answer = self.client.get(key, None).await?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| ControlError::Corrupt {
                key: key.to_string(),
                message: e.to_string(),
            })
    }
}
