//! Blob lifetimes in the index: metadata expiry, and slivers that follow their blob's
//! metadata.
//!
//! A sliver record carries the end epoch its blob had when it was stored. A blob's lifetime
//! can grow later (a new store with more epochs, or one learned from a peer), and only its
//! metadata record is rewritten then: slivers live elsewhere (other cores, other disks). So a
//! sliver whose own end epoch passed is not dropped by the store alone: the node asks the
//! blob's metadata first, and either extends the sliver in the index
//! ([`Store::extend_blob`]) or expires it ([`Store::expire_blob`]). After a restart the index
//! holds the records' own end epochs again, and the node's first sweep settles them anew.

use super::{Key, Store};
use crate::device::Dir;
use crate::format::RecordKind;

impl<D: Dir> Store<D> {
    /// Drops metadata records and tombstones whose end epoch is before `current_epoch` from the
    /// index (slivers are left to [`Store::lapsed_slivers`]); returns how many records expired.
    pub fn expire_metadata(&mut self, current_epoch: u32) -> usize {
        let before = self.index.len() + self.tombstones.len();
        let live = &mut self.live;
        self.index.retain(|key, location| {
            let kept = key.kind != RecordKind::Metadata || location.end_epoch >= current_epoch;
            if !kept {
                live.remove(location);
            }
            kept
        });
        self.tombstones.retain(|_, location| {
            let kept = location.end_epoch >= current_epoch;
            if !kept {
                live.remove(location);
            }
            kept
        });
        before - self.index.len() - self.tombstones.len()
    }

    /// Blobs with sliver records whose own end epoch is before `current_epoch`, each once, in
    /// blob ID order.
    pub fn lapsed_slivers(&self, current_epoch: u32) -> Vec<[u8; 32]> {
        let mut lapsed: Vec<[u8; 32]> = Vec::new();
        for (key, location) in &self.index {
            if key.kind != RecordKind::Metadata
                && location.end_epoch < current_epoch
                && lapsed.last() != Some(&key.blob_id)
            {
                lapsed.push(key.blob_id);
            }
        }
        lapsed
    }

    /// Gives the blob's sliver records in the index the later `end_epoch` (in memory: see the
    /// module's docs).
    pub fn extend_blob(&mut self, blob_id: &[u8; 32], end_epoch: u32) {
        for (key, location) in self.index.range_mut(blob_range(blob_id)) {
            if key.kind != RecordKind::Metadata {
                location.end_epoch = location.end_epoch.max(end_epoch);
            }
        }
    }

    /// Drops the blob's sliver records from the index (their space is freed by reclaiming);
    /// returns how many there were.
    pub fn expire_blob(&mut self, blob_id: &[u8; 32]) -> usize {
        let keys: Vec<Key> = self
            .index
            .range(blob_range(blob_id))
            .map(|(key, _)| *key)
            .filter(|key| key.kind != RecordKind::Metadata)
            .collect();
        for key in &keys {
            self.unindex(key);
        }
        keys.len()
    }
}

/// Every key of a blob.
fn blob_range(blob_id: &[u8; 32]) -> std::ops::RangeInclusive<Key> {
    Key::metadata(*blob_id)..=Key {
        blob_id: *blob_id,
        kind: RecordKind::Tombstone,
        shard: u16::MAX,
    }
}
