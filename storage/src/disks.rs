//! Several data directories (one per disk) behind one store API: shards are spread over the
//! directories, so losing a disk loses only the slivers of its shards; metadata, small and
//! needed to heal anything, is written to every directory.

use crate::device::Dir;
use crate::format::RecordKind;
use crate::store::{Key, Put, RecoveryReport, Store, StoreError, StoreOptions};

/// The stores of a node's data directories.
pub struct Disks<D: Dir> {
    stores: Vec<Store<D>>,
}

impl<D: Dir> Disks<D> {
    /// Opens one store per directory (at least one).
    pub async fn open(
        dirs: Vec<D>,
        options: StoreOptions,
    ) -> Result<(Self, Vec<RecoveryReport>), StoreError> {
        assert!(!dirs.is_empty(), "a node has at least one data directory");
        let mut stores = Vec::with_capacity(dirs.len());
        let mut reports = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let (store, report) = Store::open_with(dir, options).await?;
            stores.push(store);
            reports.push(report);
        }
        Ok((Self { stores }, reports))
    }

    /// The directory that holds `shard`'s slivers.
    pub fn disk_of(&self, shard: u16) -> usize {
        usize::from(shard) % self.stores.len()
    }

    /// Stores a batch: each directory commits its part (metadata goes to all of them).
    /// Returns once every part is durable; on error some parts may be stored and others not,
    /// and a retry of the whole batch is safe (records of a key never change).
    pub async fn put(&mut self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        let n = self.stores.len();
        let mut parts: Vec<Vec<Put>> = vec![Vec::new(); n];
        for put in batch {
            if put.key.kind == RecordKind::Metadata {
                parts.iter_mut().for_each(|part| part.push(*put));
            } else {
                parts[usize::from(put.key.shard) % n].push(*put);
            }
        }
        for (store, part) in self.stores.iter_mut().zip(parts) {
            if !part.is_empty() {
                store.put(&part).await?;
            }
        }
        Ok(())
    }

    /// Reads a record: slivers from their shard's directory; metadata from the first directory
    /// that has an intact copy.
    pub async fn get(&mut self, key: &Key) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read(key, false).await
    }

    /// [`Store::get_shared`] across the directories, like [`Disks::get`].
    pub async fn get_shared(&mut self, key: &Key) -> Result<Option<bytes::Bytes>, StoreError> {
        self.read(key, true).await
    }

    async fn read(&mut self, key: &Key, shared: bool) -> Result<Option<bytes::Bytes>, StoreError> {
        let stores = if key.kind == RecordKind::Metadata {
            &mut self.stores[..]
        } else {
            let disk = self.disk_of(key.shard);
            &mut self.stores[disk..=disk]
        };
        let mut last_error = None;
        for store in stores {
            let read = if shared {
                store.get_shared(key).await
            } else {
                store.get(key).await
            };
            match read {
                Ok(Some(data)) => return Ok(Some(data)),
                Ok(None) => {}
                Err(err) => last_error = Some(err),
            }
        }
        last_error.map_or(Ok(None), Err)
    }

    /// Deletes a blob from every directory (its tombstone kept until `end_epoch`).
    pub async fn delete_blob(
        &mut self,
        blob_id: &[u8; 32],
        end_epoch: u32,
    ) -> Result<(), StoreError> {
        for store in &mut self.stores {
            store.delete_blob(blob_id, end_epoch).await?;
        }
        Ok(())
    }

    /// [`Store::forget_shard`] in every directory.
    pub fn forget_shard(&mut self, shard: u16) -> usize {
        self.forget_shards(|s| s == shard)
    }

    /// [`Store::forget_shards`] in every directory.
    pub fn forget_shards(&mut self, forget: impl Fn(u16) -> bool + Copy) -> usize {
        self.stores
            .iter_mut()
            .map(|s| s.forget_shards(forget))
            .sum()
    }

    /// [`Store::stored`] of whichever directory holds the record.
    pub fn stored(&self, key: &Key) -> Option<(u32, u8)> {
        self.stores.iter().find_map(|s| s.stored(key))
    }

    /// [`Store::deleted`] of whichever directory remembers the deletion.
    pub fn deleted(&self, blob_id: &[u8; 32]) -> Option<u32> {
        self.stores.iter().filter_map(|s| s.deleted(blob_id)).max()
    }

    /// The per-directory stores, in the order of the directories.
    pub fn stores(&self) -> &[Store<D>] {
        &self.stores
    }

    /// The per-directory stores, for expiry, reclaiming, scrubbing and metrics.
    pub fn stores_mut(&mut self) -> &mut [Store<D>] {
        &mut self.stores
    }
}
