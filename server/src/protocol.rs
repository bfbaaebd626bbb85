//! The cluster protocol's decisions, apart from their I/O ("sans-I/O"): how many shards a write
//! needs and when the publisher may answer ([`Tally`]), when a deletion is done
//! ([`DeleteTally`]), how a node merges what a peer or the registry says of a blob into what it
//! holds ([`merge`], [`stale`], [`latest_per_blob`]), how healing groups the slivers a node
//! lacks ([`heal_plan`]), how recovery symbols are made ([`expand_source`], [`order_sources`])
//! and gathered until a lost sliver can be rebuilt ([`Recovery`]), and a shard's move: its
//! pages ([`ShardPage`], [`shard_page`]) and when it may end ([`caught_up`], [`blocks_move`]).
//!
//! The server drives these with HTTP, glommio tasks and timers (`publisher`, `sync`, `heal`,
//! `recover`, `node_api`); the deterministic simulation (`server/tests/simulation.rs`) drives
//! the same functions, together with the owner's record merges ([`crate::owner::put_metadata`],
//! [`crate::owner::delete`]) on the real store, over a simulated network and clock. What the
//! simulation shows therefore holds for floe's own rules, not for a model of them.
//!
//! Boundary: no I/O, no clock, no executor, no `CoreState`; only the codec's, the store's and
//! the control plane's data types.

use floe_codec::{
    recover_sliver, sliver_header, BlobId, BlobLayout, BlobMetadata, ExpandedSliver,
    RecoverySymbol, SliverKind,
};
use floe_storage::format::RecordKind;

use crate::owner::BlobState;

/// Shards that must confirm a write: `n - f` (2f + 1 when n = 3f + 1).
pub fn write_quorum(n: usize) -> usize {
    n - (n - 1) / 3
}

/// The index of the sliver of `kind` in sliver pair `pair` (secondary slivers run backwards).
pub fn sliver_index(kind: SliverKind, pair: u16, n: usize) -> usize {
    match kind {
        SliverKind::Primary => pair.into(),
        SliverKind::Secondary => n - 1 - usize::from(pair),
    }
}

/// The index of the sliver of `kind` that `shard` holds of a blob.
pub fn sliver_of_shard(blob_id: &BlobId, shard: u16, kind: SliverKind, n: usize) -> usize {
    sliver_index(kind, blob_id.pair_for_shard(shard.into(), n) as u16, n)
}

/// The storage record kind of a sliver kind.
pub fn record_kind(kind: SliverKind) -> RecordKind {
    match kind {
        SliverKind::Primary => RecordKind::Primary,
        SliverKind::Secondary => RecordKind::Secondary,
    }
}

/// The publisher's count of the nodes that stored their slivers of a blob.
///
/// Invariant: the publisher answers only once [`Tally::done`]: the nodes that confirmed hold at
/// least [`write_quorum`] shards *and* this node (the publisher) has answered, because its own
/// answer says whether the blob stays deletable and its own records are what it reads first.
#[derive(Debug)]
pub struct Tally {
    quorum: usize,
    me: String,
    confirmed: usize,
    answered: Vec<String>,
    failed: Vec<String>,
}

impl Tally {
    pub fn new(n: usize, me: &str) -> Self {
        Self {
            quorum: write_quorum(n),
            me: me.to_string(),
            confirmed: 0,
            answered: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// `member`, holding `shards` shards, stored its slivers.
    pub fn confirmed_by(&mut self, member: &str, shards: usize) {
        if !self.answered.iter().any(|a| a == member) {
            self.confirmed += shards;
            self.answered.push(member.to_string());
        }
    }

    /// `member` did not store its slivers (`why`).
    pub fn failed_by(&mut self, member: &str, why: &str) {
        if !self.answered.iter().any(|a| a == member) {
            self.failed.push(format!("{member} ({why})"));
            self.answered.push(member.to_string());
        }
    }

    /// The publisher may answer: stored, or not, with nothing more to wait for.
    pub fn done(&self) -> bool {
        self.reached() && self.answered.contains(&self.me)
    }

    /// Enough shards confirmed.
    pub fn reached(&self) -> bool {
        self.confirmed >= self.quorum
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    pub fn confirmed(&self) -> usize {
        self.confirmed
    }

    /// The nodes that failed, each with why.
    pub fn failed(&self) -> &[String] {
        &self.failed
    }

    /// The members (of `all`) that have not answered yet.
    pub fn pending<'a>(&self, all: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        all.into_iter()
            .filter(|name| !self.answered.iter().any(|a| a == name))
            .map(str::to_string)
            .collect()
    }
}

/// A peer's answer to a deletion (`DELETE /v1/blobs/{id}/metadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteAnswer {
    /// Deleted there (now or before), its tombstone kept until `end_epoch`.
    Deleted { end_epoch: u32 },
    /// Neither stored nor deleted there.
    Unknown,
    /// Stored permanent there: nothing deleted.
    Permanent,
    /// No answer, or an error (why).
    Failed(String),
}

/// How a deletion across the committee came out ([`DeleteTally::verdict`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteVerdict {
    /// Deleted on the nodes that said so, until `end_epoch`; `remember_here` when this node did
    /// not know the blob and must now remember the deletion (so sync never brings it back).
    Deleted { end_epoch: u32, remember_here: bool },
    /// Stored permanent on some node: refused (409), whatever was deleted elsewhere comes back
    /// from the permanent copy through sync.
    Permanent,
    /// No node that answered knows the blob, and every node answered (404).
    NotFound,
    /// No node that answered knows the blob, but some did not answer (503).
    Unavailable,
    /// Deleted on nodes holding fewer than the write quorum's shards (503; the others learn it
    /// through sync, but until they do a store through them could still succeed).
    TooFew { shards: usize, quorum: usize },
}

/// The deleting node's count of the committee's answers (`DELETE /v1/blobs/{id}`).
///
/// Invariant: a deletion is reported done only if some node deleted the blob and none holds it
/// permanent; the end epoch answered is the latest any node kept the tombstone to.
///
/// Without a registry, a deletion is done once nodes holding the write quorum's shards
/// (`n - f`) deleted the blob, as a store is: any later store's quorum then meets an honest
/// node that refuses it (`blobDeleted`), so a deletable store acknowledged after a deletion
/// is never undone by it (the deterministic simulation found one that was: a deletion answered
/// after a single node deleted, a store through a node that had missed it).
///
/// With a registry (nodes on etcd), the registry decides: the deleting node looked before
/// deleting anything (a permanent blob was refused there) and registered the deletion of a
/// registered blob first, so every node follows it whatever answers; a node's own permanent
/// copy that the registry never took (a permanent store that failed before its write quorum)
/// does not refuse the deletion (it stays there until its end epoch). Without one, a node that holds the blob
/// permanent refuses it, and sync brings the permanent copy back to the nodes that deleted
/// theirs.
#[derive(Debug)]
pub struct DeleteTally {
    pub end_epoch: u32,
    here_unknown: bool,
    /// `None`: no registry; `Some(registered)`: a registry decides, and held the blob.
    registry: Option<bool>,
    quorum: usize,
    /// Shards of the nodes that deleted it; this node's count too when it remembers the
    /// deletion after a peer deleted it (its tombstone refuses stores as well).
    deleted_shards: usize,
    my_shards: usize,
    pub deleted: Vec<String>,
    pub permanent: Vec<String>,
    pub failed: Vec<String>,
}

impl DeleteTally {
    /// After this node (holding `shards` of the committee's `n`) answered `here`; `registry`:
    /// `None` without one, else whether it held the blob (see the type). `None` if the blob is
    /// permanent here and no registry decides (refused before any peer is asked).
    pub fn new(
        me: &str,
        shards: usize,
        n: usize,
        here: crate::owner::Deleted,
        registry: Option<bool>,
    ) -> Option<Self> {
        use crate::owner::Deleted;
        let (end_epoch, here_unknown, deleted_here) = match here {
            Deleted::Now { end_epoch } | Deleted::Before { end_epoch } => (end_epoch, false, true),
            Deleted::Permanent if registry.is_some() => (0, false, false),
            Deleted::Permanent => return None,
            Deleted::Unknown => (0, true, false),
        };
        Some(Self {
            end_epoch,
            here_unknown,
            registry,
            quorum: write_quorum(n),
            deleted_shards: if deleted_here { shards } else { 0 },
            my_shards: shards,
            deleted: if deleted_here {
                vec![me.to_string()]
            } else {
                Vec::new()
            },
            permanent: Vec::new(),
            failed: Vec::new(),
        })
    }

    /// `member`'s answer (it holds `shards`).
    pub fn answer(&mut self, member: &str, shards: usize, answer: DeleteAnswer) {
        match answer {
            DeleteAnswer::Deleted { end_epoch } => {
                self.end_epoch = self.end_epoch.max(end_epoch);
                self.deleted_shards += shards;
                self.deleted.push(member.to_string());
            }
            DeleteAnswer::Unknown => {}
            DeleteAnswer::Permanent => self.permanent.push(member.to_string()),
            DeleteAnswer::Failed(why) => self.failed.push(format!("{member} ({why})")),
        }
    }

    fn shards_deleted(&self) -> usize {
        self.deleted_shards + if self.here_unknown { self.my_shards } else { 0 }
    }

    /// Once every peer answered (or failed).
    pub fn verdict(&self) -> DeleteVerdict {
        if !self.permanent.is_empty() && self.registry.is_none() {
            DeleteVerdict::Permanent
        } else if self.deleted.is_empty() && self.registry == Some(true) {
            // Registered deleted: every node follows the registry.
            DeleteVerdict::Deleted {
                end_epoch: self.end_epoch.max(1),
                remember_here: self.here_unknown,
            }
        } else if self.deleted.is_empty() && self.failed.is_empty() {
            DeleteVerdict::NotFound
        } else if self.deleted.is_empty() {
            DeleteVerdict::Unavailable
        } else if self.registry.is_none() && self.shards_deleted() < self.quorum {
            DeleteVerdict::TooFew {
                shards: self.shards_deleted(),
                quorum: self.quorum,
            }
        } else {
            DeleteVerdict::Deleted {
                end_epoch: self.end_epoch.max(1),
                remember_here: self.here_unknown,
            }
        }
    }
}

/// Bytes before each sliver in a page of a shard: blob ID, kind (0 primary, 1 secondary),
/// little-endian length.
const SHARD_FRAME_HEAD: usize = 32 + 1 + 4;

/// Most bytes of slivers one page of a shard carries. Why: a page is built in memory; this
/// keeps it small beside the core's buffer budget while moving a shard in large requests.
pub const SHARD_PAGE_BYTES_MAX: usize = 16 << 20;

/// A page of a shard being built (`GET /v1/shards/{shard}/slivers`, what a shard's previous
/// owner answers its new owner): one byte, 1 if more may follow (then the 32-byte blob ID to
/// continue after) or 0; then frames of blob ID, kind, little-endian length and the sliver as
/// stored.
pub struct ShardPage {
    frames: Vec<u8>,
    last: Option<[u8; 32]>,
    more: bool,
}

impl ShardPage {
    /// `full`: the listing the page is built from filled its limit (more may follow).
    pub fn new(full: bool) -> Self {
        Self {
            frames: Vec::new(),
            last: None,
            more: full,
        }
    }

    /// The next blob of the listing; false once the page is full (it ends before this blob).
    pub fn visit(&mut self, blob: [u8; 32]) -> bool {
        if self.frames.len() >= SHARD_PAGE_BYTES_MAX {
            self.more = true;
            return false;
        }
        self.last = Some(blob);
        true
    }

    pub fn push(&mut self, blob: [u8; 32], kind: SliverKind, sliver: &[u8]) {
        self.frames.extend_from_slice(&blob);
        self.frames.push(match kind {
            SliverKind::Primary => 0,
            SliverKind::Secondary => 1,
        });
        self.frames
            .extend_from_slice(&(sliver.len() as u32).to_le_bytes());
        self.frames.extend_from_slice(sliver);
    }

    pub fn finish(self) -> Vec<u8> {
        let mut body = Vec::with_capacity(33 + self.frames.len());
        match (self.more, self.last) {
            (true, Some(last)) => {
                body.push(1);
                body.extend_from_slice(&last);
            }
            _ => body.push(0),
        }
        body.extend_from_slice(&self.frames);
        body
    }
}

/// A page of a shard ([`ShardPage`]): the blob to continue after, if more may follow, and the
/// slivers (blob ID, kind, sliver as stored); or why the page is malformed.
#[allow(clippy::type_complexity)]
pub fn shard_page(
    body: &bytes::Bytes,
) -> Result<(Option<[u8; 32]>, Vec<([u8; 32], SliverKind, bytes::Bytes)>), String> {
    let (next, mut at) = match body.first() {
        Some(0) => (None, 1),
        Some(1) if body.len() >= 33 => (Some(body[1..33].try_into().expect("32 bytes")), 33),
        _ => return Err("the page does not start with its continuation".into()),
    };
    let mut slivers = Vec::new();
    while at < body.len() {
        if body.len() - at < SHARD_FRAME_HEAD {
            return Err(format!("a frame head is cut off at byte {at}"));
        }
        let blob: [u8; 32] = body[at..at + 32].try_into().expect("32 bytes");
        let kind = match body[at + 32] {
            0 => SliverKind::Primary,
            1 => SliverKind::Secondary,
            other => return Err(format!("unknown sliver kind {other} at byte {at}")),
        };
        let len = u32::from_le_bytes(body[at + 33..at + 37].try_into().expect("4 bytes")) as usize;
        let start = at + SHARD_FRAME_HEAD;
        if body.len() - start < len {
            return Err(format!(
                "a sliver of {len} bytes is cut off at byte {start}"
            ));
        }
        slivers.push((blob, kind, body.slice(start..start + len)));
        at = start + len;
    }
    Ok((next, slivers))
}

/// Whether a node knows every registered blob, as a shard's move must before it ends: it has
/// applied every registry record handed to it (`applied >= watched`) and none is `pending`
/// (metadata no peer gave yet). Why: a move's pages carry only the slivers of blobs whose
/// metadata the new owner holds, and its last heal rebuilds only what it knows of; a new
/// owner that was down when a blob was stored, and had not caught up, reported the move done
/// without that blob's slivers, and the previous owner dropped them (found by the
/// deterministic simulation: an acknowledged blob lost).
pub fn caught_up(pending: u64, applied: u64, watched: u64) -> bool {
    pending == 0 && applied >= watched
}

/// Whether a blob some of whose slivers of a moving shard could not be rebuilt holds the move
/// open, given its registry record: only a registered live blob does. A blob the registry never
/// took (a store that failed before its write quorum leaves its metadata, and too few slivers
/// to rebuild from, on the nodes that took it) would otherwise hold the move, and with it
/// every later epoch, open for ever (found by the deterministic simulation).
pub fn blocks_move(record: Option<&floe_control::BlobRecord>, epoch: u32) -> bool {
    record.is_some_and(|r| r.state != floe_control::BlobState::Deleted && r.end_epoch >= epoch)
}

/// A batch of registry records (in revision order) with only the latest of each blob, in the
/// order of its latest. Why: records of one blob are applied at once, and an older one left
/// pending (its metadata fetched from peers that had deleted it meanwhile) would be retried
/// for ever while the later deletion was applied (found by the deterministic simulation: a
/// shard's move waited on it for good).
pub fn latest_per_blob<R>(records: Vec<(BlobId, R)>) -> Vec<(BlobId, R)> {
    let mut last = std::collections::HashMap::with_capacity(records.len());
    for (i, (id, _)) in records.iter().enumerate() {
        last.insert(id.0, i);
    }
    records
        .into_iter()
        .enumerate()
        .filter(|(i, (id, _))| last[&id.0] == *i)
        .map(|(_, record)| record)
        .collect()
}

/// Whether what a peer or the registry says of a blob is past its end epoch and so ignored:
/// not a deletion of a blob this node still holds (`held`), which applies whatever its end
/// epoch. Why: a copy a failed store left, or one a lifetime extension stretched past the
/// deletion's own end epoch, outlives the deletion's record; ignored, it stayed for good on
/// the one node that had missed the deletion (found by the deterministic simulation).
pub fn stale(theirs: BlobState, end_epoch: u32, epoch: u32, held: bool) -> bool {
    end_epoch < epoch && !(theirs == BlobState::Deleted && held)
}

/// What a node holds of a blob's metadata, as far as a merge is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub end_epoch: u32,
    pub deletable: bool,
}

/// What [`merge`] leaves to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Nothing: this node already knows as much.
    Done,
    /// Delete the blob here (or remember its deletion, if it is unknown here) until `end_epoch`.
    /// The home core still refuses to delete a permanent blob ([`crate::owner::delete`]).
    Delete { end_epoch: u32 },
    /// Store the metadata again with a later end epoch, or made permanent (the owner keeps the
    /// greater of each: [`crate::owner::put_metadata`]).
    Update { end_epoch: u32, deletable: bool },
    /// The blob is new here: fetch its metadata (verified against the blob ID) and store it.
    Fetch,
}

/// Merges what a peer (or the registry) says of a blob, `theirs` until `end_epoch`, into what
/// this node holds: `known` metadata, or a `tombstone` (a deletion it remembers, until that
/// epoch).
///
/// Invariant: the result only moves a node up the order of [`BlobState`] (deletable < deleted <
/// permanent) and to later end epochs, so every node ends in the same state whatever order it
/// hears things in: a deletion overrides a deletable store, a permanent store a deletion, and a
/// node that never knew a deleted blob remembers the deletion so no peer brings it back.
pub fn merge(
    theirs: BlobState,
    end_epoch: u32,
    known: Option<Known>,
    tombstone: Option<u32>,
) -> Merge {
    match (theirs, known) {
        (BlobState::Deleted, Some(_)) => Merge::Delete { end_epoch },
        // Remembered as long already; a later end is taken (the deletion outlives what it
        // deletes: a tombstone that ended first let a store through that the others refuse).
        (BlobState::Deleted, None) if tombstone.is_some_and(|t| t >= end_epoch) => Merge::Done,
        (BlobState::Deleted, None) => Merge::Delete { end_epoch },
        (theirs, Some(known)) => {
            let permanent_now = theirs == BlobState::Permanent && known.deletable;
            if end_epoch > known.end_epoch || permanent_now {
                Merge::Update {
                    end_epoch,
                    deletable: theirs != BlobState::Permanent,
                }
            } else {
                Merge::Done
            }
        }
        (BlobState::Deletable, None) if tombstone.is_some() => Merge::Done,
        // Permanent overrides a deletion.
        (_, None) => Merge::Fetch,
    }
}

/// The slivers of one blob of one kind that healing rebuilds together (so that each helper
/// expands each of its slivers once for all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealGroup {
    pub kind: SliverKind,
    pub blob_id: [u8; 32],
    pub shards: Vec<u16>,
}

/// Groups missing slivers (blob, shard, kind) for healing: secondary groups first, each kind in
/// blob order.
///
/// Why secondary first: a secondary sliver needs recovery symbols from f + 1 other slivers, a
/// primary one from 2f + 1 (`n - f`). A node that lacks both slivers of a pair, with one
/// faulty node, has exactly 2f + 1 honest slivers to rebuild its primary from only if its own
/// secondary sliver is among them: rebuilt first, it is (the deterministic simulation found a
/// primary that never healed when primary slivers came first).
pub fn heal_plan(missing: impl IntoIterator<Item = ([u8; 32], u16, RecordKind)>) -> Vec<HealGroup> {
    let mut groups: std::collections::BTreeMap<(u8, [u8; 32]), Vec<u16>> = Default::default();
    for (blob, shard, kind) in missing {
        let phase = u8::from(kind != RecordKind::Secondary);
        let shards = groups.entry((phase, blob)).or_default();
        if !shards.contains(&shard) {
            shards.push(shard);
        }
    }
    groups
        .into_iter()
        .map(|((phase, blob_id), shards)| HealGroup {
            kind: if phase == 0 {
                SliverKind::Secondary
            } else {
                SliverKind::Primary
            },
            blob_id,
            shards,
        })
        .collect()
}

/// The recovery symbols one stored sliver (`bytes`, as stored: header and data) at
/// `source_index` gives towards the slivers of `target_kind` at `targets` (sliver indices);
/// `None` if the sliver does not expand (a failure means skip, never send).
pub fn expand_source(
    metadata: &BlobMetadata,
    layout: &BlobLayout,
    target_kind: SliverKind,
    source_index: usize,
    bytes: &[u8],
    targets: &[usize],
) -> Option<Vec<RecoverySymbol>> {
    let source_kind = target_kind.orthogonal();
    let header = sliver_header(bytes).ok()?;
    let expanded = ExpandedSliver::new(
        metadata,
        layout,
        source_kind,
        source_index,
        &bytes[header.data],
    )
    .ok()?;
    Some(
        targets
            .iter()
            .map(|&t| expanded.recovery_symbol(t))
            .collect(),
    )
}

/// Orders a helper's source shards for a request of recovery symbols for `target_shards`
/// (the shards whose slivers are being rebuilt): the targets' own shards last. Why: a helper
/// sends no more sources than asked for (`want`: what the asker still lacks), and the other
/// sliver of a target's own pair is the one source the asker most likely holds already (a
/// shard moving to it is served by both its previous and its new owner); sent first, it was a
/// repeat that used up the answer, and a move never finished (found by the deterministic
/// simulation).
pub fn order_sources(sources: &mut [u16], target_shards: &[u16]) {
    sources.sort_by_key(|shard| target_shards.contains(shard));
}

/// What [`Recovery::offer`] made of a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    Taken,
    /// Valid, but its target already has enough (it was asked for the neediest one's count).
    Surplus,
    /// Not asked for, of the wrong kind, a repeat, or failing verification: the sender is at
    /// fault.
    Bad,
}

/// Gathers recovery symbols for some slivers of one kind of a blob until each has enough to be
/// rebuilt.
///
/// Invariant: only symbols that verify against the metadata count, at most one per source
/// sliver per target, so a lying helper can delay a rebuild but never corrupt it.
pub struct Recovery {
    kind: SliverKind,
    targets: Vec<usize>,
    needed: usize,
    have: Vec<Vec<RecoverySymbol>>,
}

impl Recovery {
    /// For the slivers of `kind` of `pairs`.
    pub fn new(kind: SliverKind, pairs: &[u16], n: usize, layout: &BlobLayout) -> Self {
        Self {
            kind,
            targets: pairs.iter().map(|&p| sliver_index(kind, p, n)).collect(),
            needed: kind.n_symbols(layout),
            have: vec![Vec::new(); pairs.len()],
        }
    }

    /// The sliver indices being recovered, by slot.
    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    /// Symbols this node made from its own slivers (not verified again: they were verified on
    /// arrival and expanded here).
    pub fn add_own(&mut self, symbols: Vec<RecoverySymbol>) {
        for symbol in symbols {
            if let Some(slot) = self.slot_of(symbol.target_index) {
                if self.have[slot].len() < self.needed {
                    self.have[slot].push(symbol);
                }
            }
        }
    }

    fn slot_of(&self, target: usize) -> Option<usize> {
        self.targets.iter().position(|t| *t == target)
    }

    /// The slots still short of symbols.
    pub fn short(&self) -> Vec<usize> {
        (0..self.targets.len())
            .filter(|&slot| self.have[slot].len() < self.needed)
            .collect()
    }

    /// How many symbols to ask a helper for, per target, for `slots`: the neediest one's count.
    pub fn want(&self, slots: &[usize]) -> usize {
        slots
            .iter()
            .map(|&slot| self.needed - self.have[slot].len())
            .max()
            .unwrap_or(0)
    }

    /// A symbol a helper sent in answer to a request for `asked` slots.
    pub fn offer(
        &mut self,
        asked: &[usize],
        symbol: RecoverySymbol,
        metadata: &BlobMetadata,
        layout: &BlobLayout,
    ) -> Offered {
        let slot = asked
            .iter()
            .copied()
            .find(|&slot| self.targets[slot] == symbol.target_index);
        if slot.is_some_and(|slot| self.have[slot].len() >= self.needed) {
            return Offered::Surplus;
        }
        let valid = slot.filter(|&slot| {
            symbol.source_kind == self.kind.orthogonal()
                && symbol.verify(metadata, layout).is_ok()
                && !self.have[slot]
                    .iter()
                    .any(|s| s.source_index == symbol.source_index)
        });
        match valid {
            Some(slot) => {
                self.have[slot].push(symbol);
                Offered::Taken
            }
            None => Offered::Bad,
        }
    }

    /// Each sliver's data (verified against the metadata by the codec), or why it could not be
    /// had.
    pub fn finish(self, metadata: &BlobMetadata) -> Vec<Result<Vec<u8>, String>> {
        self.targets
            .iter()
            .zip(&self.have)
            .map(|(&target, symbols)| {
                recover_sliver(metadata, self.kind, target, symbols)
                    .map(|recovered| recovered.data)
                    .map_err(|err| err.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_needs_n_minus_f_shards() {
        assert_eq!(write_quorum(10), 7);
        assert_eq!(write_quorum(1000), 667);
        assert_eq!(write_quorum(4), 3);
    }

    #[test]
    fn the_publisher_answers_once_the_quorum_and_it_itself_have_answered() {
        let mut tally = Tally::new(10, "a");
        tally.confirmed_by("b", 4);
        tally.confirmed_by("c", 3);
        assert!(tally.reached() && !tally.done());
        tally.failed_by("a", "disk full");
        assert!(tally.done());
        // A repeated answer counts once.
        tally.confirmed_by("b", 4);
        assert_eq!(tally.confirmed(), 7);
        assert_eq!(tally.pending(["a", "b", "c", "d"]), vec!["d".to_string()]);
    }

    #[test]
    fn a_deletion_is_refused_where_a_node_holds_the_blob_permanent_unless_a_registry_decides() {
        use crate::owner::Deleted;
        let now = Deleted::Now { end_epoch: 4 };
        let deleted = |end_epoch| DeleteAnswer::Deleted { end_epoch };
        // n = 10 over a (4 shards), b (3), c (3): a deletion needs 7 shards.
        // Without a registry: permanent here refuses at once; permanent on a peer refuses.
        assert!(DeleteTally::new("a", 4, 10, Deleted::Permanent, None).is_none());
        let mut tally = DeleteTally::new("a", 4, 10, now, None).unwrap();
        tally.answer("b", 3, DeleteAnswer::Permanent);
        tally.answer("c", 3, deleted(6));
        assert_eq!(tally.verdict(), DeleteVerdict::Permanent);
        // Deleted on the write quorum's shards (a 4 + c 3 = 7): done, though b did not answer;
        // on fewer (a alone): not yet.
        let mut tally = DeleteTally::new("a", 4, 10, now, None).unwrap();
        tally.answer("b", 3, DeleteAnswer::Failed("timeout".into()));
        tally.answer("c", 3, deleted(6));
        assert_eq!(
            tally.verdict(),
            DeleteVerdict::Deleted {
                end_epoch: 6,
                remember_here: false
            }
        );
        let mut tally = DeleteTally::new("a", 4, 10, now, None).unwrap();
        tally.answer("b", 3, DeleteAnswer::Failed("timeout".into()));
        tally.answer("c", 3, DeleteAnswer::Failed("timeout".into()));
        assert_eq!(
            tally.verdict(),
            DeleteVerdict::TooFew {
                shards: 4,
                quorum: 7
            }
        );
        // With one (it found the blob deletable): a node's own permanent copy does not refuse,
        // and the registry carries the deletion to the nodes that did not answer.
        let mut tally = DeleteTally::new("a", 4, 10, Deleted::Permanent, Some(true)).unwrap();
        tally.answer("b", 3, DeleteAnswer::Permanent);
        tally.answer("c", 3, deleted(6));
        assert_eq!(
            tally.verdict(),
            DeleteVerdict::Deleted {
                end_epoch: 6,
                remember_here: false
            }
        );
        assert_eq!(tally.deleted, vec!["c".to_string()]);
        let mut tally = DeleteTally::new("a", 4, 10, Deleted::Unknown, Some(true)).unwrap();
        tally.answer("b", 3, DeleteAnswer::Failed("timeout".into()));
        assert!(matches!(tally.verdict(), DeleteVerdict::Deleted { .. }));
        // Unknown here: remembered (and counted) once peers deleted it; nobody knows it: 404;
        // silence: 503.
        let mut tally = DeleteTally::new("a", 4, 10, Deleted::Unknown, None).unwrap();
        assert_eq!(tally.verdict(), DeleteVerdict::NotFound);
        tally.answer("b", 3, DeleteAnswer::Failed("timeout".into()));
        assert_eq!(tally.verdict(), DeleteVerdict::Unavailable);
        tally.answer("c", 3, deleted(2));
        assert_eq!(
            tally.verdict(),
            DeleteVerdict::Deleted {
                end_epoch: 2,
                remember_here: true
            }
        );
        let mut tally = DeleteTally::new("b", 3, 10, Deleted::Unknown, None).unwrap();
        tally.answer("a", 4, DeleteAnswer::Failed("timeout".into()));
        tally.answer("c", 3, deleted(3));
        assert_eq!(
            tally.verdict(),
            DeleteVerdict::TooFew {
                shards: 6,
                quorum: 7
            }
        );
    }

    #[test]
    fn a_batch_keeps_each_blob_s_latest_record_only() {
        let (a, b) = (BlobId([1; 32]), BlobId([2; 32]));
        let latest = latest_per_blob(vec![(a, 1), (b, 2), (a, 3), (b, 4), (a, 5)]);
        assert_eq!(latest, vec![(b, 4), (a, 5)]);
    }

    #[test]
    fn merges_only_move_up_the_order_and_to_later_epochs() {
        let deletable = Some(Known {
            end_epoch: 5,
            deletable: true,
        });
        let permanent = Some(Known {
            end_epoch: 5,
            deletable: false,
        });
        use BlobState::*;
        let delete = |end_epoch| Merge::Delete { end_epoch };
        assert_eq!(merge(Deleted, 3, deletable, None), delete(3));
        assert_eq!(merge(Deleted, 3, None, Some(3)), Merge::Done);
        assert_eq!(merge(Deleted, 5, None, Some(3)), delete(5));
        assert_eq!(merge(Deleted, 3, None, None), delete(3));
        assert_eq!(merge(Deletable, 5, deletable, None), Merge::Done);
        assert_eq!(merge(Deletable, 4, permanent, None), Merge::Done);
        assert_eq!(
            merge(Deletable, 6, permanent, None),
            Merge::Update {
                end_epoch: 6,
                deletable: true
            }
        );
        assert_eq!(
            merge(Permanent, 5, deletable, None),
            Merge::Update {
                end_epoch: 5,
                deletable: false
            }
        );
        assert_eq!(merge(Deletable, 5, None, Some(9)), Merge::Done);
        assert_eq!(merge(Permanent, 5, None, Some(9)), Merge::Fetch);
        assert_eq!(merge(Deletable, 5, None, None), Merge::Fetch);
    }

    #[test]
    fn healing_rebuilds_secondary_slivers_first_one_group_per_blob_and_kind() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let plan = heal_plan([
            (b, 3, RecordKind::Secondary),
            (a, 1, RecordKind::Primary),
            (b, 2, RecordKind::Primary),
            (a, 4, RecordKind::Primary),
            (a, 4, RecordKind::Primary),
        ]);
        let summary: Vec<(SliverKind, u8, Vec<u16>)> = plan
            .into_iter()
            .map(|g| (g.kind, g.blob_id[0], g.shards))
            .collect();
        assert_eq!(
            summary,
            vec![
                (SliverKind::Secondary, 2, vec![3]),
                (SliverKind::Primary, 1, vec![1, 4]),
                (SliverKind::Primary, 2, vec![2]),
            ]
        );
    }
}
