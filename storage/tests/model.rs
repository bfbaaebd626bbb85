//! The store against a simple in-memory model, over many seeded random operation sequences with
//! injected faults: I/O errors on reads, writes and syncs, torn and lost unsynced writes (crash
//! images), bit flips and a full disk. Every test prints its seed on failure; replay one with
//! `FLOE_TEST_SEED=<seed>`.

mod common;
use common::block_on;

use std::collections::{BTreeMap, BTreeSet};

use floe_storage::device::{Faults, MemDir};
use floe_storage::format::{segment_name, RecordKind, FLAG_DELETABLE};
use floe_storage::store::{Key, Put, Store, StoreError, StoreOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seeds(test: &str, count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("FLOE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let base: u64 = rand::thread_rng().gen();
    println!("{test}: seeds {base}.. (replay one with FLOE_TEST_SEED=<seed>)");
    (0..count).map(|i| base.wrapping_add(i)).collect()
}

fn random_key(rng: &mut StdRng) -> Key {
    let kind = [
        RecordKind::Metadata,
        RecordKind::Primary,
        RecordKind::Secondary,
    ][rng.gen_range(0..3)];
    Key {
        blob_id: [rng.gen_range(0..6u8); 32],
        kind,
        shard: if kind == RecordKind::Metadata {
            0
        } else {
            rng.gen_range(0..4)
        },
    }
}

fn random_data(rng: &mut StdRng) -> Vec<u8> {
    // Now and then a record large enough to be written and read in pieces.
    let len = match rng.gen_range(0..25) {
        0..=5 => 0,
        6..=11 => rng.gen_range(1..100),
        12..=17 => rng.gen_range(100..5000),
        18..=23 => rng.gen_range(5000..20_000),
        _ => rng.gen_range(500_000..1_300_000),
    };
    (0..len).map(|_| rng.gen()).collect()
}

/// What a key may read as: the acknowledged value, plus values (or absence) from later
/// operations that failed and so may or may not have reached the disk.
#[derive(Clone, Debug, Default)]
struct Allowed {
    acked: Option<Vec<u8>>,
    uncertain: Vec<Option<Vec<u8>>>,
}

impl Allowed {
    fn admits(&self, value: &Option<Vec<u8>>) -> bool {
        self.acked == *value || self.uncertain.contains(value)
    }
}

/// The flags the crash test stores a record with: a function of its value, so that the
/// model's values also say which flags must read back.
fn flags_of(key: &Key, data: &[u8]) -> u8 {
    if key.kind == RecordKind::Metadata && data.first().is_some_and(|b| b % 2 == 1) {
        FLAG_DELETABLE
    } else {
        0
    }
}

fn check(store: &mut Store<MemDir>, model: &BTreeMap<Key, Allowed>, lost_ok: bool, seed: u64) {
    for (i, (key, allowed)) in model.iter().enumerate() {
        // Both read paths: direct reads into a new buffer, and shared (mapped) views.
        let read = if i % 2 == 0 {
            block_on(store.get(key))
        } else {
            block_on(store.get_shared(key))
        }
        .map(|v| v.map(|b| b.to_vec()));
        if let Ok(Some(value)) = &read {
            assert_eq!(
                store.flags(key),
                Some(flags_of(key, value)),
                "seed {seed}: {key:?} flags"
            );
        }
        match read {
            Ok(value) => assert!(
                allowed.admits(&value) || (lost_ok && value.is_none()),
                "seed {seed}: {key:?} read {:?} bytes, allowed {:?} / {} uncertain",
                value.as_ref().map(Vec::len),
                allowed.acked.as_ref().map(Vec::len),
                allowed.uncertain.len()
            ),
            Err(StoreError::Corrupt { .. }) => {
                assert!(lost_ok, "seed {seed}: {key:?} corrupt without a flip")
            }
            Err(StoreError::Io { .. }) => {}
            Err(other) => panic!("seed {seed}: {key:?}: {other}"),
        }
    }
}

/// Random puts, deletes, reads, reclaiming, scrubbing, injected I/O errors and crashes: after
/// every crash and reopen, every acknowledged record reads back exactly, and nothing reads as a
/// value that was never written to it.
#[test]
fn acknowledged_records_survive_crashes_and_failed_writes_never_tear() {
    for seed in seeds("crash", 40) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut dir = MemDir::new(seed);
        // Small segments, so that sealing and starting segments happens under faults too.
        let options = StoreOptions {
            segment_bytes_max: 64 * 1024,
            ..StoreOptions::default()
        };
        let (mut store, _) =
            block_on(Store::open_with(dir.clone(), options)).expect("fresh store opens");
        let mut model: BTreeMap<Key, Allowed> = BTreeMap::new();
        for step in 0..150 {
            dir.set_faults(Faults {
                read_error_per_mille: 20,
                write_error_per_mille: 80,
                sync_error_per_mille: 40,
                ..Faults::default()
            });
            match rng.gen_range(0..11) {
                0..=5 => {
                    let puts: Vec<(Key, Vec<u8>)> = (0..rng.gen_range(1..6))
                        .map(|_| (random_key(&mut rng), random_data(&mut rng)))
                        .collect();
                    let batch: Vec<Put> = puts
                        .iter()
                        .map(|(key, data)| Put {
                            key: *key,
                            end_epoch: 5,
                            flags: flags_of(key, data),
                            data,
                        })
                        .collect();
                    let result = block_on(store.put(&batch));
                    // Later entries of a batch win over earlier ones for the same key.
                    for (key, data) in &puts {
                        let allowed = model.entry(*key).or_default();
                        if result.is_ok() {
                            *allowed = Allowed {
                                acked: Some(data.clone()),
                                uncertain: Vec::new(),
                            };
                        } else {
                            allowed.uncertain.push(Some(data.clone()));
                        }
                    }
                }
                6 => {
                    let blob = [rng.gen_range(0..6u8); 32];
                    let result = block_on(store.delete_blob(&blob, 5));
                    for (_, allowed) in model.range_mut(
                        Key {
                            blob_id: blob,
                            kind: RecordKind::Metadata,
                            shard: 0,
                        }..=Key {
                            blob_id: blob,
                            kind: RecordKind::Tombstone,
                            shard: u16::MAX,
                        },
                    ) {
                        if result.is_ok() {
                            *allowed = Allowed::default();
                        } else {
                            allowed.uncertain.push(None);
                        }
                    }
                }
                7 => {
                    dir.set_faults(Faults::default());
                    check(&mut store, &model, false, seed);
                }
                8 => {
                    // Reclaiming space, under the same faults: values never change or vanish,
                    // whether in one pass or in small steps with other operations between.
                    if rng.gen_bool(0.5) {
                        let _ = block_on(store.reclaim(rng.gen_range(0.3..1.0)));
                    } else {
                        if !store.reclaim_pending() {
                            store.start_reclaim(rng.gen_range(0.3..1.0));
                        }
                        let _ = block_on(store.reclaim_step(rng.gen_range(1..32_000)));
                    }
                }
                9 => {
                    // Scrubbing, under the same faults, between everything else: it never
                    // drops a healthy record (the next check would miss it), and read errors
                    // are errors, never corruption.
                    if let Ok(report) = block_on(store.scrub(rng.gen_range(1..200_000))) {
                        assert!(report.corrupt.is_empty(), "seed {seed}: {report:?}");
                    }
                }
                _ => {
                    // Power loss: the disk as it could be now; reopen from it.
                    dir = dir.crash_image(seed ^ step);
                    let (reopened, _) = block_on(Store::open_with(dir.clone(), options))
                        .unwrap_or_else(|e| panic!("seed {seed} step {step}: reopen failed: {e}"));
                    store = reopened;
                    dir.set_faults(Faults::default());
                    check(&mut store, &model, false, seed);
                }
            }
        }
    }
}

/// A flipped bit anywhere in a segment is caught by the checksum: the record reads as corrupt
/// (and is dropped, to be healed) or as missing after a restart; it is never served, and the
/// other records keep their values.
#[test]
fn flipped_bits_are_detected_never_served() {
    for seed in seeds("flip", 40) {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = MemDir::new(seed);
        let (mut store, _) = block_on(Store::open(dir.clone())).expect("fresh store opens");
        let mut model: BTreeMap<Key, Allowed> = BTreeMap::new();
        for _ in 0..30 {
            // As in floe, a key's bytes never change (a blob's sliver is always the same), so
            // an older copy of a key is the same value.
            let key = random_key(&mut rng);
            let mut key_rng = StdRng::seed_from_u64(
                seed ^ u64::from(key.blob_id[0]) << 8
                    ^ u64::from(key.shard) << 16
                    ^ key.kind as u64,
            );
            let data = random_data(&mut key_rng);
            block_on(store.put(&[Put {
                key,
                end_epoch: 1,
                flags: flags_of(&key, &data),
                data: &data,
            }]))
            .expect("no faults injected");
            model.insert(
                key,
                Allowed {
                    acked: Some(data),
                    uncertain: Vec::new(),
                },
            );
        }
        let segment = segment_name(1);
        let bits = dir.file_bytes(&segment).expect("segment exists") * 8;
        let mut flipped = BTreeSet::new();
        for _ in 0..rng.gen_range(1..4) {
            let bit = rng.gen_range(4096 * 8..bits);
            dir.flip_bit(&segment, bit);
            flipped.insert(bit);
        }
        check(&mut store, &model, true, seed);
        let corrupt_seen = store.counters().corrupt_records;
        let (mut reopened, report) = block_on(Store::open(dir.crash_image(seed))).expect("reopens");
        check(&mut reopened, &model, true, seed);
        // Each flip is found: online (a read failed), or at recovery (a region or a record).
        assert!(
            corrupt_seen > 0
                || !report.corrupt_regions.is_empty()
                || report.torn_tail_bytes > 0
                || reopened.counters().corrupt_records > 0,
            "seed {seed}: flips at {flipped:?} went unnoticed"
        );
    }
}

/// A full disk answers "no space" for new writes; everything stored before stays readable, and
/// writing works again once space is freed.
#[test]
fn a_full_disk_refuses_new_writes_and_keeps_old_ones() {
    let dir = MemDir::new(7);
    let (mut store, _) = block_on(Store::open(dir.clone())).expect("opens");
    let mut stored = Vec::new();
    dir.set_faults(Faults {
        capacity_bytes: Some(64 * 1024),
        ..Faults::default()
    });
    let mut refused = 0;
    for i in 0..40u8 {
        let key = Key {
            blob_id: [i; 32],
            kind: RecordKind::Primary,
            shard: 1,
        };
        let data = vec![i; 3000];
        match block_on(store.put(&[Put {
            key,
            end_epoch: 1,
            flags: 0,
            data: &data,
        }])) {
            Ok(()) => stored.push((key, data)),
            Err(StoreError::NoSpace { .. }) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(
        refused > 0 && !stored.is_empty(),
        "the disk filled up: {refused} refused"
    );
    let message = block_on(store.put(&[Put {
        key: Key {
            blob_id: [99; 32],
            kind: RecordKind::Primary,
            shard: 1,
        },
        end_epoch: 1,
        flags: 0,
        data: &[1; 3000],
    }]))
    .unwrap_err()
    .to_string();
    assert!(message.contains("no space"), "{message}");
    for (key, data) in &stored {
        assert_eq!(
            block_on(store.get(key)).unwrap().as_deref(),
            Some(&data[..])
        );
    }
    let (mut reopened, report) = block_on(Store::open(dir.crash_image(1))).expect("reopens");
    assert_eq!(report.torn_tail_bytes, 0);
    for (key, data) in &stored {
        assert_eq!(
            block_on(reopened.get(key)).unwrap().as_deref(),
            Some(&data[..])
        );
    }
    dir.set_faults(Faults::default());
    let key = Key {
        blob_id: [200; 32],
        kind: RecordKind::Primary,
        shard: 1,
    };
    block_on(store.put(&[Put {
        key,
        end_epoch: 1,
        flags: 0,
        data: b"after",
    }]))
    .expect("space again");
}

/// Deleted and expired records give their space back: segments whose live bytes fell low are
/// copied forward and removed; survivors read back, before and after a restart, and deleted
/// blobs never come back.
#[test]
fn reclaiming_frees_deleted_and_expired_space_and_keeps_the_rest() {
    let dir = MemDir::new(3);
    let options = StoreOptions {
        segment_bytes_max: 64 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    let key = |blob: u8, shard: u16| Key {
        blob_id: [blob; 32],
        kind: RecordKind::Primary,
        shard,
    };
    let data = |blob: u8, shard: u16| vec![blob ^ shard as u8; 2000 + usize::from(blob) * 10];
    for blob in 0..40u8 {
        for shard in 0..3 {
            let end_epoch = if blob % 4 == 1 { 2 } else { 9 };
            block_on(store.put(&[Put {
                key: key(blob, shard),
                end_epoch,
                flags: 0,
                data: &data(blob, shard),
            }]))
            .unwrap();
        }
    }
    let total_bytes = |dir: &MemDir| -> u64 {
        (1..100)
            .filter_map(|id| dir.file_bytes(&segment_name(id)))
            .sum()
    };
    let before = total_bytes(&dir);
    let segments_before = store.segment_count();
    for blob in (0..40u8).filter(|b| b % 4 == 0) {
        block_on(store.delete_blob(&[blob; 32], 9)).unwrap();
    }
    assert_eq!(
        store.expire(3),
        30,
        "blobs with end epoch 2 expire at epoch 3"
    );
    let report = block_on(store.reclaim(0.6)).unwrap();
    assert!(report.segments_removed > 0, "{report:?}");
    assert!(store.segment_count() < segments_before + 1);
    let after = total_bytes(&dir);
    assert!(
        after < before * 3 / 4,
        "space came back: {before} -> {after}"
    );
    let survivors: Vec<u8> = (0..40u8).filter(|b| b % 4 == 2 || b % 4 == 3).collect();
    let check_all = |store: &mut Store<MemDir>| {
        for blob in 0..40u8 {
            for shard in 0..3 {
                let got = block_on(store.get(&key(blob, shard))).unwrap();
                if survivors.contains(&blob) {
                    assert_eq!(
                        got.as_deref(),
                        Some(&data(blob, shard)[..]),
                        "blob {blob} shard {shard}"
                    );
                } else {
                    assert_eq!(got, None, "blob {blob} shard {shard} stays gone");
                }
            }
        }
    };
    check_all(&mut store);
    let (mut reopened, report) = block_on(Store::open_with(dir.crash_image(5), options)).unwrap();
    assert!(report.corrupt_regions.is_empty(), "{report:?}");
    reopened.expire(3);
    check_all(&mut reopened);
}

/// A deletion is remembered (with its end epoch) until that epoch has passed, across seals,
/// reclaiming and restarts, and a later store of the blob's metadata supersedes it; metadata
/// flags survive the same.
#[test]
fn deletions_are_remembered_until_their_end_epoch() {
    let dir = MemDir::new(21);
    let options = StoreOptions {
        segment_bytes_max: 64 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    let key = |blob: u8, kind: RecordKind| Key {
        blob_id: [blob; 32],
        kind,
        shard: if kind == RecordKind::Metadata { 0 } else { 1 },
    };
    for blob in 1..=5u8 {
        let flags = if blob == 5 { 0 } else { FLAG_DELETABLE };
        block_on(store.put(&[
            Put {
                key: key(blob, RecordKind::Metadata),
                end_epoch: 9,
                flags,
                data: b"metadata",
            },
            Put {
                key: key(blob, RecordKind::Primary),
                end_epoch: 9,
                flags: 0,
                data: &[blob; 3000],
            },
        ]))
        .unwrap();
    }
    block_on(store.delete_blob(&[1; 32], 4)).unwrap();
    block_on(store.delete_blob(&[2; 32], 7)).unwrap();
    block_on(store.delete_blob(&[3; 32], 8)).unwrap();
    // Blob 3 is stored again (permanent) after its deletion.
    block_on(store.put(&[Put {
        key: key(3, RecordKind::Metadata),
        end_epoch: 9,
        flags: 0,
        data: b"metadata",
    }]))
    .unwrap();
    let expect = |store: &mut Store<MemDir>, epoch_passed: bool| {
        assert_eq!(store.deleted(&[1; 32]), (!epoch_passed).then_some(4));
        assert_eq!(store.deleted(&[2; 32]), Some(7));
        assert_eq!(store.deleted(&[3; 32]), None, "stored again after deletion");
        assert_eq!(store.deleted(&[4; 32]), None);
        let listed: Vec<u8> = store.deleted_after(None).map(|(id, _)| id[0]).collect();
        assert_eq!(listed, if epoch_passed { vec![2] } else { vec![1, 2] });
        assert_eq!(
            store.deleted_after(Some(&[1; 32])).collect::<Vec<_>>(),
            vec![([2; 32], 7)]
        );
        for blob in [1u8, 2] {
            assert_eq!(
                block_on(store.get(&key(blob, RecordKind::Primary))).unwrap(),
                None
            );
        }
        assert_eq!(
            store.flags(&key(4, RecordKind::Metadata)),
            Some(FLAG_DELETABLE)
        );
        assert_eq!(store.flags(&key(5, RecordKind::Metadata)), Some(0));
        assert_eq!(store.flags(&key(3, RecordKind::Metadata)), Some(0));
    };
    expect(&mut store, false);
    // Seal the segment (footers carry flags and tombstones) and reopen.
    for i in 0..40u8 {
        block_on(store.put(&[Put {
            key: key(100 + i, RecordKind::Primary),
            end_epoch: 9,
            flags: 0,
            data: &[i; 3000],
        }]))
        .unwrap();
    }
    let (mut store, report) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    assert!(report.segments_from_footer > 0, "{report:?}");
    expect(&mut store, false);
    // Reclaiming every sealed segment carries tombstones and flags forward.
    block_on(store.reclaim(1.0)).unwrap();
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    expect(&mut store, false);
    store.expire(5);
    expect(&mut store, true);
}

/// Reclaiming in small steps, with writes and deletions between them, frees the same space as
/// one pass and loses nothing: records deleted or rewritten mid-pass are not copied.
#[test]
fn reclaiming_in_steps_interleaves_with_writes_and_deletions() {
    let dir = MemDir::new(5);
    let options = StoreOptions {
        segment_bytes_max: 64 * 1024,
        ..StoreOptions::default()
    };
    let (mut store, _) = block_on(Store::open_with(dir.clone(), options)).unwrap();
    let key = |blob: u8| Key {
        blob_id: [blob; 32],
        kind: RecordKind::Primary,
        shard: 0,
    };
    let data = |blob: u8| vec![blob; 3000];
    for blob in 0..100u8 {
        block_on(store.put(&[Put {
            key: key(blob),
            end_epoch: 9,
            flags: 0,
            data: &data(blob),
        }]))
        .unwrap();
    }
    for blob in (0..100u8).filter(|b| b % 3 != 0) {
        block_on(store.delete_blob(&[blob; 32], 9)).unwrap();
    }
    let segments_before = store.segment_count();
    store.start_reclaim(0.5);
    let mut steps = 0;
    let mut live: Vec<u8> = (0..100u8).filter(|b| b % 3 == 0).collect();
    loop {
        let step = block_on(store.reclaim_step(8 * 1024)).unwrap();
        steps += 1;
        // Between steps: one more deletion and one new blob.
        if let Some(blob) = live.pop() {
            block_on(store.delete_blob(&[blob; 32], 9)).unwrap();
        }
        let new = 100 + steps as u8;
        block_on(store.put(&[Put {
            key: key(new),
            end_epoch: 9,
            flags: 0,
            data: &data(new),
        }]))
        .unwrap();
        live.insert(0, new);
        if step.pass_complete {
            break;
        }
        assert!(steps < 1000, "the pass ends");
    }
    assert!(steps > 3, "bounded steps: {steps}");
    assert!(store.segment_count() < segments_before, "space came back");
    assert!(store.counters().reclaim_bytes_moved > 0);
    let (mut reopened, _) = block_on(Store::open_with(dir.crash_image(1), options)).unwrap();
    for blob in 0..=(100 + steps as u8) {
        let got = block_on(reopened.get(&key(blob))).unwrap();
        if live.contains(&blob) {
            assert_eq!(got.as_deref(), Some(&data(blob)[..]), "blob {blob}");
        } else {
            assert_eq!(got, None, "blob {blob} stays deleted");
        }
    }
}

/// Records of 512 KiB and more are read in pieces, all in flight at once, each checksummed as
/// it arrives: they read back exactly, a flipped bit in any piece (or in the header) makes the
/// record corrupt, and an I/O error on a piece is an error, never a short or wrong record.
#[test]
fn large_records_are_read_in_pieces_and_checked_whole() {
    let key = |blob: u8| Key {
        blob_id: [blob; 32],
        kind: RecordKind::Secondary,
        shard: 3,
    };
    let sizes = [524_288 - 72, 700_001, 1 << 20, 1_500_000];
    let data = |i: usize| -> Vec<u8> { (0..sizes[i]).map(|j| (j * 7 + i) as u8).collect() };
    for (case, flip_at) in [None, Some(10u64), Some(300_000), Some(1_000_000)]
        .into_iter()
        .enumerate()
    {
        let dir = MemDir::new(case as u64);
        let (mut store, _) = block_on(Store::open(dir.clone())).unwrap();
        for i in 0..sizes.len() {
            block_on(store.put(&[Put {
                key: key(i as u8),
                end_epoch: 1,
                flags: 0,
                data: &data(i),
            }]))
            .unwrap();
        }
        // The last record starts after the others (one commit each, padded to whole 4 KiB
        // blocks): flip a bit inside it, at `flip_at`.
        let last_at = sizes[..3]
            .iter()
            .fold(4096u64, |at, s| (at + *s as u64 + 72).div_ceil(4096) * 4096);
        if let Some(at) = flip_at {
            dir.flip_bit(&segment_name(1), (last_at + at) * 8 + 3);
        }
        for i in 0..sizes.len() {
            let got = block_on(store.get(&key(i as u8)));
            if i == 3 && flip_at.is_some() {
                assert!(
                    matches!(got, Err(StoreError::Corrupt { .. })),
                    "case {case}"
                );
            } else {
                assert!(got.unwrap().unwrap() == data(i), "case {case} record {i}");
            }
        }
    }
    // An I/O error on one of the pieces: an error, then a clean read once the device recovers.
    let dir = MemDir::new(99);
    let (mut store, _) = block_on(Store::open(dir.clone())).unwrap();
    block_on(store.put(&[Put {
        key: key(0),
        end_epoch: 1,
        flags: 0,
        data: &data(3),
    }]))
    .unwrap();
    dir.set_faults(Faults {
        read_error_per_mille: 500,
        ..Faults::default()
    });
    let mut errors = 0;
    for _ in 0..20 {
        match block_on(store.get(&key(0))) {
            Ok(Some(bytes)) => assert!(bytes == data(3)),
            Err(StoreError::Io { .. }) => errors += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(errors > 0, "some reads hit an injected error");
    dir.set_faults(Faults::default());
    assert!(block_on(store.get(&key(0))).unwrap().unwrap() == data(3));
}

/// The scrubber walks every record at a bounded number of bytes per call, finds a flipped bit
/// in a record nobody reads, and drops that record so that it is healed rather than served.
#[test]
fn the_scrubber_finds_cold_corruption() {
    let dir = MemDir::new(11);
    let (mut store, _) = block_on(Store::open(dir.clone())).unwrap();
    let keys: Vec<Key> = (0..50u8)
        .map(|blob| Key {
            blob_id: [blob; 32],
            kind: RecordKind::Secondary,
            shard: 2,
        })
        .collect();
    for key in &keys {
        block_on(store.put(&[Put {
            key: *key,
            end_epoch: 1,
            flags: 0,
            data: &[key.blob_id[0]; 1000],
        }]))
        .unwrap();
    }
    // Each commit is one 4 KiB block after the 4 KiB header: flip a data bit of record 17.
    dir.flip_bit(&segment_name(1), (4096 + 17 * 4096 + 72 + 500) * 8);
    let mut found = Vec::new();
    let mut calls = 0;
    loop {
        let report = block_on(store.scrub(10_000)).unwrap();
        assert!(report.bytes_checked <= 10_000 + 1072, "bounded: {report:?}");
        found.extend(report.corrupt);
        calls += 1;
        if report.pass_complete {
            break;
        }
        assert!(calls < 100, "a pass ends");
    }
    assert_eq!(found, vec![keys[17]]);
    assert_eq!(store.len(), 49);
    assert_eq!(
        block_on(store.get(&keys[17])).unwrap(),
        None,
        "dropped, to be healed"
    );
    assert!(calls > 1, "the pass took several bounded calls");
}

/// Shards are spread over data directories: losing one directory (a dead disk replaced by an
/// empty one) loses only its shards' slivers; every other sliver and all metadata survive.
#[test]
fn losing_one_disk_loses_only_its_shards() {
    use floe_storage::disks::Disks;
    let dirs: Vec<MemDir> = (0..3).map(MemDir::new).collect();
    let options = StoreOptions::default();
    let (mut disks, _) = block_on(Disks::open(dirs.clone(), options)).unwrap();
    let mut puts = Vec::new();
    for blob in 0..5u8 {
        puts.push((
            Key {
                blob_id: [blob; 32],
                kind: RecordKind::Metadata,
                shard: 0,
            },
            vec![blob; 300],
        ));
        for shard in 0..9u16 {
            let data = vec![blob ^ shard as u8; 500];
            puts.push((
                Key {
                    blob_id: [blob; 32],
                    kind: RecordKind::Primary,
                    shard,
                },
                data,
            ));
        }
    }
    let batch: Vec<Put> = puts
        .iter()
        .map(|(key, data)| Put {
            key: *key,
            end_epoch: 1,
            flags: 0,
            data,
        })
        .collect();
    block_on(disks.put(&batch)).unwrap();
    // Disk 1 dies and is replaced by an empty one.
    let mut after = dirs.clone();
    after[1] = MemDir::new(99);
    let (mut disks, _) = block_on(Disks::open(after, options)).unwrap();
    for (key, data) in &puts {
        let got = block_on(disks.get(key)).unwrap();
        if key.kind == RecordKind::Primary && disks.disk_of(key.shard) == 1 {
            assert_eq!(got, None, "{key:?} was on the lost disk");
        } else {
            assert_eq!(got.as_deref(), Some(&data[..]), "{key:?} survives");
        }
    }
}

/// One blob's metadata and a primary sliver of each of `shards` shards.
fn blob_records(blob: u8, shards: u16) -> Vec<(Key, Vec<u8>)> {
    let mut records = vec![(
        Key {
            blob_id: [blob; 32],
            kind: RecordKind::Metadata,
            shard: 0,
        },
        vec![blob; 300],
    )];
    for shard in 0..shards {
        records.push((
            Key {
                blob_id: [blob; 32],
                kind: RecordKind::Primary,
                shard,
            },
            vec![blob ^ shard as u8; 500],
        ));
    }
    records
}

/// `records` as one batch, ending at epoch 1.
fn batch_of(records: &[(Key, Vec<u8>)]) -> Vec<Put<'_>> {
    records
        .iter()
        .map(|(key, data)| Put {
            key: *key,
            end_epoch: 1,
            flags: 0,
            data,
        })
        .collect()
}

fn put_all(disks: &mut floe_storage::disks::Disks<MemDir>, records: &[(Key, Vec<u8>)]) {
    block_on(disks.put(&batch_of(records))).unwrap();
}

/// A directory whose device fails under a running store is retired at its first failed write
/// (which is stored on the other directories instead: the caller sees no error); its shards
/// move to the live directories (missing there until healed), and no other shard moves. The
/// retirement survives a restart, also once the old disk answers again with its old records;
/// an empty replacement takes the shards back, and the copies healed elsewhere leave the index.
/// Regression (issue 18): one failed disk failed every write (metadata goes to every
/// directory), and its shards were never healed onto the other disks.
#[test]
fn a_failed_disk_is_retired_its_shards_move_and_an_empty_replacement_takes_them_back() {
    use floe_storage::disks::{Disks, Opened};
    let dirs: Vec<MemDir> = (0..3).map(MemDir::new).collect();
    let options = StoreOptions::default();
    let (mut disks, _) = block_on(Disks::open(dirs.clone(), options)).unwrap();
    let before: Vec<usize> = (0..9).map(|s| disks.disk_of(s)).collect();
    let first = blob_records(1, 9);
    put_all(&mut disks, &first);

    dirs[1].set_faults(Faults {
        device_failed: true,
        ..Faults::default()
    });
    let second = blob_records(2, 9);
    put_all(&mut disks, &second);
    let retired = disks.take_retired();
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert_eq!(retired[0].0, 1);
    assert_eq!(disks.retired(), vec![1]);
    for shard in 0..9u16 {
        let now = disks.disk_of(shard);
        if before[usize::from(shard)] == 1 {
            assert_ne!(now, 1, "shard {shard} moved off the failed disk");
        } else {
            assert_eq!(now, before[usize::from(shard)], "shard {shard} stays");
        }
    }
    let reads = |disks: &mut Disks<MemDir>, records: &[(Key, Vec<u8>)], moved_missing: bool| {
        for (key, data) in records {
            let got = block_on(disks.get(key)).unwrap();
            let moved = key.kind == RecordKind::Primary && before[usize::from(key.shard)] == 1;
            if moved && moved_missing {
                assert_eq!(
                    got, None,
                    "{key:?} was on the failed disk: missing, to heal"
                );
                assert_eq!(disks.stored(key), None);
            } else {
                assert_eq!(got.as_deref(), Some(&data[..]), "{key:?}");
            }
        }
    };
    reads(&mut disks, &first, true);
    reads(&mut disks, &second, false);
    // Healed: the moved shards' slivers of the first blob written again.
    let healed: Vec<(Key, Vec<u8>)> = first
        .iter()
        .filter(|(k, _)| k.kind == RecordKind::Primary && before[usize::from(k.shard)] == 1)
        .cloned()
        .collect();
    put_all(&mut disks, &healed);
    reads(&mut disks, &first, false);
    drop(disks);

    // Restarted with the disk still dead, then with the old disk back: retired either way.
    for device_failed in [true, false] {
        dirs[1].set_faults(Faults {
            device_failed,
            ..Faults::default()
        });
        let (mut disks, opened) = block_on(Disks::open_each(
            dirs.iter().cloned().map(Ok).collect(),
            options,
        ))
        .unwrap();
        assert!(matches!(opened[1], Opened::Retired(_)), "{opened:?}");
        assert_eq!(disks.retired(), vec![1]);
        reads(&mut disks, &first, false);
        reads(&mut disks, &second, false);
    }
    assert!(
        block_on(Disks::open(dirs.clone(), options)).is_err(),
        "open() wants every directory"
    );

    // Replaced by an empty disk: its shards go back (missing there until healed again).
    let mut replaced = dirs.clone();
    replaced[1] = MemDir::new(77);
    let (mut disks, opened) = block_on(Disks::open_each(
        replaced.iter().cloned().map(Ok).collect(),
        options,
    ))
    .unwrap();
    assert!(matches!(opened[1], Opened::Replaced(_)), "{opened:?}");
    assert!(disks.retired().is_empty());
    for shard in 0..9u16 {
        assert_eq!(disks.disk_of(shard), before[usize::from(shard)]);
    }
    reads(&mut disks, &first, true);
    reads(&mut disks, &second, true);
    // A restart keeps it serving (the marker says none is retired).
    drop(disks);
    let (disks, opened) = block_on(Disks::open_each(
        replaced.iter().cloned().map(Ok).collect(),
        options,
    ))
    .unwrap();
    assert!(matches!(opened[1], Opened::Serving(_)), "{opened:?}");
    assert!(disks.retired().is_empty());
}

/// A full disk is not a failed one: a store that does not fit answers `NoSpace`, and a read
/// error on a full disk (its probe write fails with ENOSPC too) retires nothing.
#[test]
fn a_full_disk_is_not_retired() {
    use floe_storage::disks::Disks;
    let dirs: Vec<MemDir> = (0..2).map(MemDir::new).collect();
    let (mut disks, _) = block_on(Disks::open(dirs.clone(), StoreOptions::default())).unwrap();
    let records = blob_records(5, 4);
    put_all(&mut disks, &records);
    dirs[1].set_faults(Faults {
        capacity_bytes: Some(0),
        ..Faults::default()
    });
    let more = blob_records(6, 4);
    let batch = batch_of(&more);
    assert!(matches!(
        block_on(disks.put(&batch)),
        Err(StoreError::NoSpace { .. })
    ));
    dirs[1].set_faults(Faults {
        capacity_bytes: Some(0),
        read_error_per_mille: 1000,
        ..Faults::default()
    });
    let on_full = records
        .iter()
        .find(|(k, _)| k.kind == RecordKind::Primary && disks.disk_of(k.shard) == 1)
        .unwrap();
    assert!(block_on(disks.get(&on_full.0)).is_err());
    assert!(disks.take_retired().is_empty());
    assert!(disks.retired().is_empty());
}

/// The last live directory is never retired: a node with one disk answers errors while it
/// fails, and serves again when it comes back.
#[test]
fn the_last_directory_is_never_retired() {
    use floe_storage::disks::Disks;
    let dir = MemDir::new(4);
    let (mut disks, _) = block_on(Disks::open(vec![dir.clone()], StoreOptions::default())).unwrap();
    let records = blob_records(3, 4);
    dir.set_faults(Faults {
        device_failed: true,
        ..Faults::default()
    });
    let batch = batch_of(&records);
    assert!(block_on(disks.put(&batch)).is_err());
    assert!(disks.take_retired().is_empty());
    dir.set_faults(Faults::default());
    block_on(disks.put(&batch)).unwrap();
    assert_eq!(
        block_on(disks.get(&records[1].0)).unwrap().as_deref(),
        Some(&records[1].1[..])
    );
}

/// Listing metadata pages through blobs in ID order, skipping their slivers, with end epochs.
#[test]
fn metadata_listing_pages_in_blob_order() {
    let (mut store, _) = block_on(Store::open(MemDir::new(5))).unwrap();
    let mut expected = Vec::new();
    for blob in (0..60u8).rev() {
        let blob_id = [blob; 32];
        if blob % 3 != 0 {
            block_on(store.put(&[Put {
                key: Key {
                    blob_id,
                    kind: RecordKind::Metadata,
                    shard: 0,
                },
                end_epoch: u32::from(blob),
                flags: 0,
                data: b"metadata",
            }]))
            .unwrap();
            expected.push((blob_id, u32::from(blob)));
        }
        for shard in 0..4 {
            for kind in [RecordKind::Primary, RecordKind::Secondary] {
                let key = Key {
                    blob_id,
                    kind,
                    shard,
                };
                block_on(store.put(&[Put {
                    key,
                    end_epoch: 1,
                    flags: 0,
                    data: b"sliver",
                }]))
                .unwrap();
            }
        }
    }
    expected.sort();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.metadata_after(after.as_ref(), 7);
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        listed.extend(page);
    }
    assert_eq!(listed, expected);
    assert!(store.metadata_after(Some(&[255; 32]), 7).is_empty());
}
