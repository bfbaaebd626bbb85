//! Several data directories (one per disk) behind one store API: shards are spread over the
//! directories, so losing a disk loses only the slivers of its shards; metadata, small and
//! needed to heal anything, is written to every directory.
//!
//! A directory whose device fails is *retired*: an I/O error on it (a failed commit or read)
//! is followed by a probe (create, write, sync and remove a one-block file); if the probe fails
//! too, the directory takes no more reads or writes and its shards move to the live
//! directories, where the node heals their slivers. A moved shard goes to the live directory
//! that ranks highest for it (rendezvous hashing), so a second failure moves only the second
//! directory's shards, and shards of live directories never move.
//!
//! Which directories are retired is written to every live directory (an empty file named
//! `retired.<generation>.<list>`; the highest generation wins) and read back at open: a retired
//! directory stays retired across restarts, until it is replaced by an empty one, which takes
//! its shards back (healed there again; the copies left elsewhere are dropped from the index).
//!
//! Invariant: a sliver of shard `s` is read from and written to [`Disks::disk_of`]`(s)` only;
//! metadata and tombstones to every live directory. The last live directory is never retired.

use std::time::{Duration, Instant};

use crate::device::{Dir, File};
use crate::format::{RecordKind, BLOCK_BYTES};
use crate::store::{Key, Put, RecoveryReport, Store, StoreError, StoreOptions};

/// The file names that record the retired directories start with this.
const MARKER_PREFIX: &str = "retired.";

/// The one-block file a probe writes and removes.
const PROBE_NAME: &str = ".floe-device-probe";

/// A directory is probed at most this often. Why: a disk with a few bad sectors fails some
/// reads; probing after each would cost a synced write per failed read.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The stores of a node's data directories.
pub struct Disks<D: Dir> {
    /// One per data directory, in order; `None`: retired.
    stores: Vec<Option<Store<D>>>,
    /// Which of `stores` are `Some` (for [`place`]).
    live: Vec<bool>,
    /// When each directory was last probed.
    probed: Vec<Option<Instant>>,
    /// Of the marker last written or read.
    generation: u64,
    /// Directories retired while running, not yet taken by [`Disks::take_retired`].
    newly_retired: Vec<(usize, String)>,
}

/// What opening one data directory found.
#[derive(Debug)]
pub enum Opened {
    /// It serves; what recovery found.
    Serving(RecoveryReport),
    /// It is retired, and why: it failed to open now, or failed in an earlier run.
    Retired(String),
    /// It was retired and is empty now (a replacement disk): it takes its shards back.
    Replaced(RecoveryReport),
}

impl<D: Dir> Disks<D> {
    /// Opens one store per directory (at least one), every one of which must open.
    pub async fn open(
        dirs: Vec<D>,
        options: StoreOptions,
    ) -> Result<(Self, Vec<RecoveryReport>), StoreError> {
        let (disks, opened) = Self::open_each(dirs.into_iter().map(Ok).collect(), options).await?;
        let mut reports = Vec::with_capacity(opened.len());
        for outcome in opened {
            match outcome {
                Opened::Serving(report) | Opened::Replaced(report) => reports.push(report),
                Opened::Retired(why) => {
                    return Err(StoreError::Io {
                        op: "opening a data directory",
                        source: std::io::Error::other(why),
                    })
                }
            }
        }
        Ok((disks, reports))
    }

    /// Opens one store per directory; a directory that cannot be opened (`Err` here, or its
    /// store fails to open with an I/O error) is retired, as is one retired in an earlier run
    /// that still holds records. Fails if no directory is left, or if a store fails to open
    /// for another reason (a segment it cannot read).
    pub async fn open_each(
        dirs: Vec<Result<D, String>>,
        options: StoreOptions,
    ) -> Result<(Self, Vec<Opened>), StoreError> {
        assert!(!dirs.is_empty(), "a node has at least one data directory");
        // The latest word on which directories are retired, from whichever can be listed.
        let mut marker: Option<(u64, Vec<usize>)> = None;
        for dir in dirs.iter().flatten() {
            if let Ok(names) = dir.list().await {
                for found in names.iter().filter_map(|n| parse_marker(n)) {
                    if marker.as_ref().is_none_or(|m| found.0 > m.0) {
                        marker = Some(found);
                    }
                }
            }
        }
        let (generation, was_retired) = marker.unwrap_or_default();
        let mut stores = Vec::with_capacity(dirs.len());
        let mut opened = Vec::with_capacity(dirs.len());
        let mut first_error = None;
        for (index, dir) in dirs.into_iter().enumerate() {
            let (store, outcome) = match dir {
                Err(why) => (None, Opened::Retired(why)),
                Ok(dir) => match Store::open_with(dir, options).await {
                    // The device failed; anything else (a segment this version cannot read)
                    // stops the open, as it would for one directory.
                    Err(err @ StoreError::Io { .. }) => {
                        let why = err.to_string();
                        first_error.get_or_insert(err);
                        (None, Opened::Retired(why))
                    }
                    Err(err) => return Err(err),
                    Ok((store, report)) if was_retired.contains(&index) => {
                        if report.records == 0 && report.segments == 0 {
                            (Some(store), Opened::Replaced(report))
                        } else {
                            let why = "retired after its device failed, and it still holds \
                                       records: replace it with an empty directory to use it \
                                       again";
                            (None, Opened::Retired(why.into()))
                        }
                    }
                    Ok((store, report)) => (Some(store), Opened::Serving(report)),
                },
            };
            stores.push(store);
            opened.push(outcome);
        }
        if stores.iter().all(Option::is_none) {
            return Err(first_error.unwrap_or_else(|| StoreError::Io {
                op: "opening the data directories",
                source: std::io::Error::other(format!("every data directory failed: {opened:?}")),
            }));
        }
        let mut disks = Self {
            probed: vec![None; stores.len()],
            live: stores.iter().map(Option::is_some).collect(),
            stores,
            generation,
            newly_retired: Vec::new(),
        };
        if disks.retired() != was_retired {
            disks.write_marker().await;
        }
        // Copies of shards that live elsewhere now (left where a replaced directory's shards
        // were healed meanwhile) leave the index, to be reclaimed.
        let live = disks.live.clone();
        for (index, store) in disks.live_mut() {
            store.forget_shards(|shard| place(shard, &live) != Some(index));
        }
        Ok((disks, opened))
    }

    /// The directory that holds `shard`'s slivers: `shard mod directories`, or, if that one is
    /// retired, the live directory that ranks highest for the shard.
    pub fn disk_of(&self, shard: u16) -> usize {
        place(shard, &self.live).expect("one directory is always live")
    }

    /// The retired directories, in order.
    pub fn retired(&self) -> Vec<usize> {
        (0..self.stores.len())
            .filter(|i| self.stores[*i].is_none())
            .collect()
    }

    /// How many data directories there are, live or retired.
    pub fn directories(&self) -> usize {
        self.stores.len()
    }

    /// Whether directory `index` is retired.
    pub fn is_retired(&self, index: usize) -> bool {
        !self.live[index]
    }

    /// Retires directory `index` (known failed elsewhere: another core found its device
    /// failed), unless it is the last live one. Returns whether it was.
    pub async fn retire(&mut self, index: usize, why: String) -> bool {
        if !self.live[index] || self.live().count() < 2 {
            return false;
        }
        self.stores[index] = None;
        self.live[index] = false;
        self.newly_retired.push((index, why));
        self.write_marker().await;
        true
    }

    /// Directories retired since the last call, and why (for the node to log, count and heal).
    pub fn take_retired(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.newly_retired)
    }

    /// Stores a batch: each directory commits its part (metadata goes to all of them).
    /// Returns once every part is durable; on error some parts may be stored and others not,
    /// and a retry of the whole batch is safe (records of a key never change). A directory
    /// whose device failed is retired and the batch stored again on the rest.
    pub async fn put(&mut self, batch: &[Put<'_>]) -> Result<(), StoreError> {
        'again: loop {
            let n = self.stores.len();
            let mut parts: Vec<Vec<Put>> = vec![Vec::new(); n];
            for put in batch {
                if put.key.kind == RecordKind::Metadata {
                    parts.iter_mut().for_each(|part| part.push(*put));
                } else {
                    parts[self.disk_of(put.key.shard)].push(*put);
                }
            }
            for (index, part) in parts.into_iter().enumerate() {
                let Some(store) = &mut self.stores[index] else {
                    continue;
                };
                if part.is_empty() {
                    continue;
                }
                if let Err(err) = store.put(&part).await {
                    if self.retire_if_failed(index, &err).await {
                        continue 'again;
                    }
                    return Err(err);
                }
            }
            return Ok(());
        }
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
        let candidates = if key.kind == RecordKind::Metadata {
            0..self.stores.len()
        } else {
            let disk = self.disk_of(key.shard);
            disk..disk + 1
        };
        let mut last_error = None;
        for index in candidates {
            let Some(store) = &mut self.stores[index] else {
                continue;
            };
            let read = if shared {
                store.get_shared(key).await
            } else {
                store.get(key).await
            };
            match read {
                Ok(Some(data)) => return Ok(Some(data)),
                Ok(None) => {}
                Err(err) => {
                    // The record is missing here either way (healed if it is a sliver).
                    self.retire_if_failed(index, &err).await;
                    last_error = Some(err);
                }
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
        for index in 0..self.stores.len() {
            let Some(store) = &mut self.stores[index] else {
                continue;
            };
            if let Err(err) = store.delete_blob(blob_id, end_epoch).await {
                if !self.retire_if_failed(index, &err).await {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// After `err` from directory `index`: if it is an I/O error and a probe of the directory
    /// fails too, the directory is retired (unless it is the last live one). Returns whether it
    /// was.
    async fn retire_if_failed(&mut self, index: usize, err: &StoreError) -> bool {
        if !matches!(err, StoreError::Io { .. }) || self.live().count() < 2 {
            return false;
        }
        let Some(store) = &self.stores[index] else {
            return false;
        };
        let now = Instant::now();
        if self.probed[index].is_some_and(|at| now.duration_since(at) < PROBE_INTERVAL) {
            return false;
        }
        self.probed[index] = Some(now);
        let probe = match probe(store.dir()).await {
            // A full disk fails the probe too, and is not failed.
            Err(probe)
                if probe.raw_os_error() != Some(crate::device::ENOSPC)
                    && probe.kind() != std::io::ErrorKind::StorageFull =>
            {
                probe
            }
            _ => return false,
        };
        self.retire(index, format!("{err}; then a probe write failed: {probe}"))
            .await
    }

    /// Records the retired directories in every live one (best effort: the highest
    /// generation found in any directory wins at open).
    async fn write_marker(&mut self) {
        self.generation += 1;
        let name = marker_name(self.generation, &self.retired());
        for store in self.stores.iter().flatten() {
            let dir = store.dir();
            let old: Vec<String> = match dir.list().await {
                Ok(names) => names
                    .into_iter()
                    .filter(|n| parse_marker(n).is_some() && *n != name)
                    .collect(),
                Err(_) => continue,
            };
            if dir.create(&name).await.is_err() || dir.sync().await.is_err() {
                continue;
            }
            for old in old {
                let _ = dir.remove(&old).await;
            }
            let _ = dir.sync().await;
        }
    }

    /// [`Store::forget_shard`] in every directory.
    pub fn forget_shard(&mut self, shard: u16) -> usize {
        self.forget_shards(|s| s == shard)
    }

    /// [`Store::forget_shards`] in every directory.
    pub fn forget_shards(&mut self, forget: impl Fn(u16) -> bool + Copy) -> usize {
        self.stores
            .iter_mut()
            .flatten()
            .map(|s| s.forget_shards(forget))
            .sum()
    }

    /// [`Store::stored`] of the directory that holds the record.
    pub fn stored(&self, key: &Key) -> Option<(u32, u8)> {
        if key.kind == RecordKind::Metadata {
            self.stores.iter().flatten().find_map(|s| s.stored(key))
        } else {
            self.stores[self.disk_of(key.shard)].as_ref()?.stored(key)
        }
    }

    /// [`Store::deleted`] of whichever directory remembers the deletion.
    pub fn deleted(&self, blob_id: &[u8; 32]) -> Option<u32> {
        self.stores
            .iter()
            .flatten()
            .filter_map(|s| s.deleted(blob_id))
            .max()
    }

    /// The live stores with the index of their directory, for expiry, reclaiming, scrubbing
    /// and metrics.
    pub fn live(&self) -> impl Iterator<Item = (usize, &Store<D>)> {
        self.stores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
    }

    /// [`Disks::live`], mutable.
    pub fn live_mut(&mut self) -> impl Iterator<Item = (usize, &mut Store<D>)> {
        self.stores
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_mut()?)))
    }

    /// The store of directory `index`, unless it is retired.
    pub fn store_mut(&mut self, index: usize) -> Option<&mut Store<D>> {
        self.stores.get_mut(index)?.as_mut()
    }
}

/// The directory of `shard` given which directories are live: `shard mod directories` if it is
/// live, else the live one that ranks highest for the shard (rendezvous hashing); `None` if
/// none is live. The same rule [`Disks::disk_of`] follows, for those that know only which
/// directories are retired (the node's health report).
pub fn place(shard: u16, live: &[bool]) -> Option<usize> {
    let preferred = usize::from(shard) % live.len();
    if live[preferred] {
        return Some(preferred);
    }
    (0..live.len())
        .filter(|i| live[*i])
        .max_by_key(|i| rank(shard, *i))
}

/// A shard's rank for a directory: a fixed mix of both (splitmix64), the same on every run.
fn rank(shard: u16, dir: usize) -> u64 {
    let mut z = (u64::from(shard) << 32 | dir as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether the device under `dir` still takes a durable write: a one-block file created,
/// written, synced and removed.
async fn probe<D: Dir>(dir: &D) -> std::io::Result<()> {
    let _ = dir.remove(PROBE_NAME).await;
    let file = dir.create(PROBE_NAME).await?;
    let written = match file.write_at(0, &[0u8; BLOCK_BYTES]).await {
        Ok(()) => file.sync().await,
        Err(err) => Err(err),
    };
    drop(file);
    let removed = dir.remove(PROBE_NAME).await;
    written?;
    removed?;
    dir.sync().await
}

fn marker_name(generation: u64, retired: &[usize]) -> String {
    let list = if retired.is_empty() {
        "none".to_string()
    } else {
        retired
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-")
    };
    format!("{MARKER_PREFIX}{generation}.{list}")
}

fn parse_marker(name: &str) -> Option<(u64, Vec<usize>)> {
    let (generation, list) = name.strip_prefix(MARKER_PREFIX)?.split_once('.')?;
    let generation = generation.parse().ok()?;
    if list == "none" {
        return Some((generation, Vec::new()));
    }
    let retired = list
        .split('-')
        .map(|i| i.parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some((generation, retired))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        for retired in [vec![], vec![0], vec![1, 3, 12]] {
            let name = marker_name(7, &retired);
            assert_eq!(parse_marker(&name), Some((7, retired)), "{name}");
        }
        assert_eq!(parse_marker("retired.x.none"), None);
        assert_eq!(parse_marker("segment-000001"), None);
    }

    #[test]
    fn a_retired_directorys_shards_spread_and_no_other_shard_moves() {
        let all = [true; 4];
        let one_down = [true, false, true, true];
        let two_down = [true, false, true, false];
        let mut moved_to = [0usize; 4];
        for shard in 0..1000u16 {
            let before = place(shard, &all).unwrap();
            let after = place(shard, &one_down).unwrap();
            if before == 1 {
                assert_ne!(after, 1);
                moved_to[after] += 1;
                // A second failure does not move it again unless it sat on the second.
                let again = place(shard, &two_down).unwrap();
                if after != 3 {
                    assert_eq!(again, after, "shard {shard}");
                }
            } else {
                assert_eq!(after, before, "shard {shard} stays");
            }
        }
        // Spread over the three live directories, not piled on one.
        for (dir, moved) in moved_to.iter().enumerate() {
            if dir != 1 {
                assert!(*moved > 50, "{moved_to:?}");
            }
        }
        assert_eq!(place(3, &[false, false]), None);
    }
}
