//! The scrubber walks the segment files in large sequential reads: a pass over many small
//! records costs about one read per MiB (not one per record), finds flipped bits in live
//! records (also where corruption hides them from the walk) and ignores those in dead ones,
//! passes end and start over, and the walk keeps going while reclaiming removes segments and
//! new commits arrive.

mod common;
use common::block_on;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

use floe_storage::device::{Dir, File, MemDir, MemFile};
use floe_storage::format::{
    RecordKind, RECORD_BLOB_ID_AT, RECORD_HEADER_BYTES, RECORD_KIND_AT, RECORD_MAGIC,
};
use floe_storage::store::{Key, Put, ScrubReport, Store, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A [`MemDir`] that counts the reads its files are asked for.
#[derive(Clone)]
struct CountingDir {
    inner: MemDir,
    reads: Rc<Cell<u64>>,
}

struct CountingFile {
    inner: MemFile,
    reads: Rc<Cell<u64>>,
}

impl CountingDir {
    fn new(seed: u64) -> Self {
        Self {
            inner: MemDir::new(seed),
            reads: Rc::default(),
        }
    }

    fn file(&self, inner: MemFile) -> CountingFile {
        CountingFile {
            inner,
            reads: self.reads.clone(),
        }
    }
}

impl Dir for CountingDir {
    type File = CountingFile;

    async fn create(&self, name: &str) -> io::Result<CountingFile> {
        Ok(self.file(self.inner.create(name).await?))
    }

    async fn open(&self, name: &str) -> io::Result<CountingFile> {
        Ok(self.file(self.inner.open(name).await?))
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name).await
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list().await
    }

    async fn sync(&self) -> io::Result<()> {
        self.inner.sync().await
    }
}

impl File for CountingFile {
    // `read_into` and `read_shared` are the trait's defaults, which call this.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.reads.set(self.reads.get() + 1);
        self.inner.read_at(offset, len).await
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.inner.sync().await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes().await
    }
}

/// Record `i`'s key: eight shards of blob `i / 8`, primary and secondary alternating.
fn key(i: u32) -> Key {
    let mut blob_id = [0u8; 32];
    blob_id[..4].copy_from_slice(&(i / 8).to_le_bytes());
    Key {
        blob_id,
        kind: if i.is_multiple_of(2) {
            RecordKind::Primary
        } else {
            RecordKind::Secondary
        },
        shard: (i % 8) as u16,
    }
}

/// Version `version` of record `i`'s data: 200 to 3000 bytes, random, so that any 64 of them
/// are found only where this record is.
fn data(i: u32, version: u32) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(u64::from(i) << 32 | u64::from(version));
    let len = rng.gen_range(200..3000);
    (0..len).map(|_| rng.gen()).collect()
}

/// Stores records `range` at `version` in commits of `batch` records.
fn put_all<D: Dir>(
    store: &mut Store<D>,
    range: std::ops::Range<u32>,
    version: u32,
    batch: usize,
) -> u64 {
    let mut bytes = 0;
    let records: Vec<(Key, Vec<u8>)> = range.map(|i| (key(i), data(i, version))).collect();
    for chunk in records.chunks(batch) {
        let puts: Vec<Put> = chunk
            .iter()
            .map(|(key, data)| Put {
                key: *key,
                end_epoch: 9,
                flags: 0,
                data,
            })
            .collect();
        block_on(store.put(&puts)).unwrap();
        bytes += chunk
            .iter()
            .map(|(_, d)| (RECORD_HEADER_BYTES + d.len()) as u64)
            .sum::<u64>();
    }
    bytes
}

/// Every segment file of `dir`, whole: (name, bytes).
fn segments(dir: &MemDir) -> Vec<(String, Vec<u8>)> {
    let mut names = block_on(dir.list()).unwrap();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let file = block_on(dir.open(&name)).unwrap();
            let len = block_on(file.size_bytes()).unwrap();
            let bytes = block_on(file.read_at(0, len as usize)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Where `needle` is stored: (segment name, byte offset). It must be there exactly once.
fn find(dir: &MemDir, needle: &[u8]) -> (String, u64) {
    let mut found = Vec::new();
    for (name, bytes) in segments(dir) {
        for (at, window) in bytes.windows(needle.len()).enumerate() {
            if window == needle {
                found.push((name.clone(), at as u64));
            }
        }
    }
    assert_eq!(found.len(), 1, "stored once: {found:?}");
    found.pop().unwrap()
}

/// The header offset of the record holding version `version` of record `i`'s data.
fn record_at(dir: &MemDir, i: u32, version: u32) -> (String, u64) {
    let (name, at) = find(dir, &data(i, version)[..64]);
    (name, at - RECORD_HEADER_BYTES as u64)
}

/// Flips a bit of byte `byte` of segment `name`.
fn flip(dir: &MemDir, (name, byte): (String, u64)) {
    dir.flip_bit(&name, byte * 8 + 5);
}

/// Scrubs one whole pass in calls of `bytes_max`: the calls' reports, summed, and the count of
/// calls.
fn pass<D: Dir>(store: &mut Store<D>, bytes_max: u64, calls_max: usize) -> (ScrubReport, usize) {
    let mut total = ScrubReport::default();
    for calls in 1..=calls_max {
        let report = block_on(store.scrub(bytes_max)).unwrap();
        assert!(
            report.bytes_checked <= bytes_max.saturating_add(4096),
            "a call reads about its budget: {} of {bytes_max}",
            report.bytes_checked
        );
        total.records_checked += report.records_checked;
        total.bytes_checked += report.bytes_checked;
        total.corrupt.extend(report.corrupt);
        if report.pass_complete {
            total.pass_complete = true;
            return (total, calls);
        }
    }
    panic!("a pass in calls of {bytes_max} bytes ends within {calls_max} calls");
}

fn file_bytes(dir: &MemDir) -> u64 {
    segments(dir).iter().map(|(_, b)| b.len() as u64).sum()
}

/// 3000 records of 200 to 3000 bytes over several segments: a pass checks them all with about
/// one read per MiB stored, however many records there are.
#[test]
fn a_pass_reads_the_segments_in_large_sequential_reads() {
    let dir = CountingDir::new(1);
    let options = StoreOptions {
        segment_bytes_max: 1536 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    let stored = put_all(&mut store, 0..3000, 0, 10);
    assert_eq!(store.live_bytes(), stored);
    let segments = store.segment_count() as u64;
    assert!(segments >= 3, "several segments: {segments}");
    let file_bytes = file_bytes(&dir.inner);
    let mib = stored.div_ceil(1 << 20);

    // Unbounded calls: every read is a whole MiB, or the rest of a segment.
    let before = dir.reads.get();
    let (report, calls) = pass(&mut store, u64::MAX, 1);
    let reads = dir.reads.get() - before;
    let unbounded_reads = reads;
    assert_eq!((report.records_checked, calls), (3000, 1), "{report:?}");
    assert!(report.corrupt.is_empty());
    assert!(
        reads <= mib + segments + 2,
        "{reads} reads for {mib} MiB in {segments} segments"
    );
    // Every byte read once, but for a record cut by the end of a read, read again.
    assert!(
        report.bytes_checked >= stored && report.bytes_checked <= file_bytes + reads * 3072,
        "{} of {file_bytes}",
        report.bytes_checked
    );

    // The node's steps of 1 MiB: a call's budget may also end just after a segment's end.
    let before = dir.reads.get();
    let (report, calls) = pass(&mut store, 1 << 20, 100);
    let reads = dir.reads.get() - before;
    assert_eq!(report.records_checked, 3000, "{report:?}");
    assert!(report.corrupt.is_empty());
    assert!(
        reads <= mib + 2 * segments + 2,
        "{reads} reads for {mib} MiB in {segments} segments"
    );
    assert!(calls as u64 <= mib + segments + 1, "{calls} calls");
    assert!(report.bytes_checked <= file_bytes + reads * 3072);
    println!(
        "3000 records, {file_bytes} bytes in {segments} segments: {unbounded_reads} reads in one \
         call, {reads} reads in {calls} calls of 1 MiB"
    );
}

/// Flipped bits in live records are found by the scrubber, reported and dropped; in dead
/// records (overwritten, deleted, expired) they are not reported. Corruption that hides live
/// records from the walk (a flipped key in a live header, an unparsable dead header before
/// live records of the same commit) still gets them checked; a corrupt tombstone is written
/// again, so the blob stays deleted across a restart.
#[test]
fn flipped_bits_in_live_records_are_found_and_in_dead_ones_ignored() {
    let dir = MemDir::new(2);
    let options = StoreOptions {
        segment_bytes_max: 256 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    // Blobs 0..100 of 8 records each (record i is of blob i / 8), one commit per blob.
    put_all(&mut store, 0..800, 0, 8);
    // Blob 1 is stored again (its first records are dead), and record 480 (the first of blob
    // 60's commit).
    put_all(&mut store, 8..16, 1, 8);
    put_all(&mut store, 480..481, 1, 1);
    // Blobs 2 and 3 are deleted; record 7000 expires.
    block_on(store.delete_blob(&key(16).blob_id, 9)).unwrap();
    block_on(store.delete_blob(&key(24).blob_id, 9)).unwrap();
    let expiring = data(7000, 0);
    block_on(store.put(&[Put {
        key: key(7000),
        end_epoch: 2,
        flags: 0,
        data: &expiring,
    }]))
    .unwrap();
    assert_eq!(store.expire(3), 1);
    assert!(store.segment_count() > 3);
    let live_before = store.len();
    let data_byte = |i: u32, at: u64| {
        let (name, header) = record_at(&dir, i, 0);
        (name, header + RECORD_HEADER_BYTES as u64 + at)
    };

    // Live, its data: found by the walk.
    let live_data = 100;
    flip(&dir, data_byte(live_data, 150));
    // Live, the blob ID in its header: the walk reads it as some other, dead record; the
    // segment's count of live records says the walk missed one, and the recheck finds it.
    let live_header = 300;
    flip(&dir, {
        let (name, at) = record_at(&dir, live_header, 0);
        (name, at + RECORD_BLOB_ID_AT as u64 + 9)
    });
    // Dead: a deleted blob's record (its magic: the walk cannot parse it), another one's data,
    // an overwritten record's data, the expired record's data.
    flip(&dir, record_at(&dir, 26, 0));
    flip(&dir, data_byte(17, 200));
    flip(&dir, data_byte(9, 100));
    flip(&dir, data_byte(7000, 100));
    // Dead, the magic of the first record of blob 60's commit: the walk skips to the next
    // block and misses the live records behind it in that commit. One of them is corrupt.
    flip(&dir, record_at(&dir, 480, 0));
    let hidden = 484;
    flip(&dir, data_byte(hidden, 20));
    // A live tombstone (blob 2's): a bit of its blob ID.
    let tombstone_blob = key(16).blob_id;
    flip(&dir, {
        let (name, at) = tombstone_of(&dir, &tombstone_blob);
        (name, at + RECORD_BLOB_ID_AT as u64 + 3)
    });

    let corrupt_before = store.counters().corrupt_records;
    let (report, calls) = pass(&mut store, 64 * 1024, 1000);
    assert!(calls > 5, "bounded calls: {calls}");
    let tombstone_key = Key {
        blob_id: tombstone_blob,
        kind: RecordKind::Tombstone,
        shard: 0,
    };
    let dropped = [live_data, live_header, hidden];
    let mut expected: Vec<Key> = dropped.iter().map(|i| key(*i)).collect();
    expected.push(tombstone_key);
    expected.sort();
    let mut found = report.corrupt.clone();
    found.sort();
    assert_eq!(found, expected, "{report:?}");
    assert_eq!(store.counters().corrupt_records - corrupt_before, 4);
    assert_eq!(store.len(), live_before - dropped.len());
    // The rest reads back; the dropped records are gone (to be healed), the deleted blob stays
    // deleted.
    let check = |store: &mut Store<MemDir>, restarted: bool| {
        for i in 0..800 {
            let got = block_on(store.get(&key(i)));
            if dropped.contains(&i) {
                // Dropped; after a restart, found corrupt again.
                assert!(!matches!(got, Ok(Some(_))), "record {i}");
            } else if (16..32).contains(&i) {
                assert_eq!(got.unwrap(), None, "deleted record {i}");
            } else {
                let version = u32::from((8..16).contains(&i) || i == 480);
                let got = got.unwrap_or_else(|e| panic!("record {i}: {e} (restarted {restarted})"));
                assert_eq!(got.as_deref(), Some(&data(i, version)[..]), "record {i}");
            }
        }
        assert_eq!(store.deleted(&tombstone_blob), Some(9));
    };
    check(&mut store, false);
    // The next pass finds nothing new.
    let (report, _) = pass(&mut store, 64 * 1024, 1000);
    assert!(report.corrupt.is_empty(), "{report:?}");
    // The rewritten tombstone keeps blob 2 deleted after a restart: its records are still on
    // disk, and without a tombstone recovery would index them again.
    let (mut reopened, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    reopened.expire(3);
    check(&mut reopened, true);
}

/// Where the tombstone of `blob_id` is: (segment name, header offset). There must be one.
fn tombstone_of(dir: &MemDir, blob_id: &[u8; 32]) -> (String, u64) {
    let mut found = Vec::new();
    for (name, bytes) in segments(dir) {
        for (at, h) in bytes.windows(RECORD_HEADER_BYTES).enumerate() {
            if h[..4] == RECORD_MAGIC.to_le_bytes()
                && h[RECORD_KIND_AT] == RecordKind::Tombstone as u8
                && h[RECORD_BLOB_ID_AT..RECORD_BLOB_ID_AT + 32] == blob_id[..]
            {
                found.push((name.clone(), at as u64));
            }
        }
    }
    assert_eq!(found.len(), 1, "one tombstone: {found:?}");
    found.pop().unwrap()
}

/// Passes over a store of live, overwritten and deleted records, in calls of any budget: each
/// pass ends in a bounded number of calls, checks every live record (and tombstone) once, and
/// the next starts over.
#[test]
fn repeated_passes_are_complete_and_finite() {
    let dir = CountingDir::new(3);
    let options = StoreOptions {
        segment_bytes_max: 128 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    // An empty store: a pass is one call.
    let (report, calls) = pass(&mut store, 1 << 20, 1);
    assert_eq!((report.records_checked, calls), (0, 1));
    put_all(&mut store, 0..400, 0, 5);
    put_all(&mut store, 0..100, 1, 7);
    for blob in [10u32, 20, 30] {
        block_on(store.delete_blob(&key(blob * 8).blob_id, 9)).unwrap();
    }
    let live = store.len() + 3;
    let file_bytes = file_bytes(&dir.inner);
    for bytes_max in [0, 1, 4096, 10_000, 100_000, 1 << 20, u64::MAX] {
        for _ in 0..2 {
            // Each call moves on by a block, or a record at least.
            let calls_max = (file_bytes / 1024) as usize + 500 + store.segment_count();
            let before = dir.reads.get();
            let (report, calls) = pass(&mut store, bytes_max, calls_max);
            let reads = dir.reads.get() - before;
            assert_eq!(report.records_checked, live, "budget {bytes_max}");
            assert!(report.corrupt.is_empty());
            assert!(
                report.bytes_checked >= store.live_bytes()
                    && report.bytes_checked <= file_bytes + reads * 3072,
                "budget {bytes_max}: {report:?}"
            );
            if bytes_max >= 100_000 {
                let least = file_bytes.div_ceil(bytes_max.min(1 << 20)) as usize;
                assert!(calls <= least + store.segment_count() + 1, "{calls} calls");
            }
        }
    }
}

/// The walk goes on while reclaiming removes segments (the one it is in, too) and puts and
/// deletions arrive between its calls: passes keep completing, a flipped bit in a live record
/// is found (by the scrubber, or by reclaiming when it copies the record), nothing healthy is
/// ever reported, and the live bytes stay counted exactly.
#[test]
fn scrubbing_goes_on_across_reclaiming_and_new_writes() {
    let dir = MemDir::new(4);
    let options = StoreOptions {
        segment_bytes_max: 128 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    // The version each live record holds, and the deleted blobs (whose tombstones are live).
    let mut model: BTreeMap<u32, u32> = BTreeMap::new();
    let mut deleted: BTreeSet<u32> = BTreeSet::new();
    put_all(&mut store, 0..600, 0, 6);
    model.extend((0..600).map(|i| (i, 0)));
    for blob in (0..75).filter(|b| b % 3 == 0) {
        block_on(store.delete_blob(&key(blob * 8).blob_id, 9)).unwrap();
        model.retain(|i, _| i / 8 != blob);
        deleted.insert(blob);
    }
    let flipped = 8 * 40 + 3;
    assert!(model.contains_key(&flipped));
    flip(&dir, {
        let (name, at) = record_at(&dir, flipped, 0);
        (name, at + RECORD_HEADER_BYTES as u64 + 33)
    });
    model.remove(&flipped);
    store.start_reclaim(0.9);
    let (mut passes, mut calls, mut next, mut removed) = (0, 0, 600u32, 0);
    let mut found = Vec::new();
    while passes < 4 || store.reclaim_pending() {
        let report = block_on(store.scrub(rng.gen_range(1..40_000))).unwrap();
        found.extend(report.corrupt);
        passes += usize::from(report.pass_complete);
        calls += 1;
        assert!(calls < 5000, "passes end");
        match rng.gen_range(0..4) {
            0 => {
                if store.reclaim_pending() {
                    let step = block_on(store.reclaim_step(rng.gen_range(1..20_000))).unwrap();
                    removed += step.segments_removed;
                }
            }
            1 => {
                let count = rng.gen_range(1..8);
                put_all(&mut store, next..next + count, 0, 3);
                model.extend((next..next + count).map(|i| (i, 0)));
                next += count;
            }
            2 => {
                // Delete the blob of a live record (not the flipped one's).
                let i = *model.keys().nth(rng.gen_range(0..model.len())).unwrap();
                let blob = i / 8;
                if blob != flipped / 8 {
                    block_on(store.delete_blob(&key(i).blob_id, 9)).unwrap();
                    model.retain(|i, _| i / 8 != blob);
                    deleted.insert(blob);
                }
            }
            _ => {
                // Overwrite a live record.
                let (i, version) = model
                    .iter()
                    .nth(rng.gen_range(0..model.len()))
                    .map(|(i, v)| (*i, *v))
                    .unwrap();
                put_all(&mut store, i..i + 1, version + 1, 1);
                model.insert(i, version + 1);
            }
        }
        if calls % 50 == 0 && !store.reclaim_pending() {
            store.start_reclaim(0.9);
        }
    }
    assert!(removed > 0, "reclaiming removed segments under the walk");
    assert!(
        found.is_empty() || found == [key(flipped)],
        "only the flipped record: {found:?}"
    );
    assert_eq!(store.counters().corrupt_records, 1, "found once");
    // Live bytes: the records the model holds, and the tombstones of deleted blobs.
    let expected: u64 = model
        .iter()
        .map(|(i, v)| (RECORD_HEADER_BYTES + data(*i, *v).len()) as u64)
        .sum::<u64>()
        + deleted.len() as u64 * RECORD_HEADER_BYTES as u64;
    assert_eq!(store.live_bytes(), expected);
    for i in 0..next {
        let got = block_on(store.get(&key(i))).unwrap();
        let want = model.get(&i).map(|v| data(i, *v));
        assert_eq!(got.as_deref(), want.as_deref(), "record {i}");
    }
    // One unbounded call ends the pass under way; the next is a whole pass, every live record
    // and tombstone checked once.
    let report = block_on(store.scrub(u64::MAX)).unwrap();
    assert!(
        report.pass_complete && report.corrupt.is_empty(),
        "{report:?}"
    );
    let report = block_on(store.scrub(u64::MAX)).unwrap();
    assert!(
        report.pass_complete && report.corrupt.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.records_checked, model.len() + deleted.len());
}

/// Records the device cannot read (issue 18: a bad sector) are found by the scrubber: each
/// leaves the index and is reported like a corrupt one (so the node heals it), and is never
/// served; the read errors are counted.
#[test]
fn records_the_device_cannot_read_are_found_and_dropped() {
    let dir = MemDir::new(7);
    let (mut store, _) = block_on(Store::open(dir.clone())).unwrap();
    put_all(&mut store, 0..200, 1, 20);
    // Every read fails from now on (a disk gone bad under the store).
    dir.set_faults(floe_storage::device::Faults {
        read_error_per_mille: 1000,
        ..Default::default()
    });
    let report = block_on(store.scrub(u64::MAX)).unwrap();
    let lost: BTreeSet<Key> = report.corrupt.iter().copied().collect();
    assert_eq!(lost.len(), 200, "every live record is reported");
    assert!(store.counters().read_errors >= 1);
    dir.set_faults(floe_storage::device::Faults::default());
    for i in 0..200 {
        assert!(
            block_on(store.get(&key(i))).unwrap().is_none(),
            "record {i} is gone from the index, never served"
        );
    }
    // Written again (as healing does), it reads back.
    put_all(&mut store, 0..200, 2, 20);
    for i in 0..200 {
        assert_eq!(block_on(store.get(&key(i))).unwrap().unwrap(), data(i, 2));
    }
}
