//! The store on the real backend (glommio `DmaFile`, io_uring, O_DIRECT) in a temporary
//! directory: seeded random operations with restarts, a torn tail appended behind the store's
//! back, and segments sealed and started. Replay a failure with `FLOE_TEST_SEED=<seed>`.

use std::collections::BTreeMap;
use std::io::Write;

use floe_storage::format::{segment_name, RecordKind};
use floe_storage::glommio_dir::GlommioDir;
use floe_storage::store::{Key, Put, Store, StoreOptions};
use glommio::LocalExecutorBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Locked memory glommio registers for DMA buffers; within this machine's 8 MiB `ulimit -l`.
const IO_MEMORY_BYTES: usize = 1 << 20;

/// Runs a test body on a glommio executor of its own thread.
fn run<G, F>(body: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .io_memory(IO_MEMORY_BYTES)
        .spawn(body)
        .expect("glommio executor starts (is io_uring available and ulimit -l >= 1 MiB?)")
        .join()
        .expect("the test body passed (see its panic above)");
}

fn seed() -> u64 {
    let seed = std::env::var("FLOE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (replay with FLOE_TEST_SEED={seed})");
    seed
}

fn key(rng: &mut StdRng) -> Key {
    Key {
        blob_id: [rng.gen_range(0..8u8); 32],
        kind: [
            RecordKind::Metadata,
            RecordKind::Primary,
            RecordKind::Secondary,
        ][rng.gen_range(0..3)],
        shard: rng.gen_range(0..3),
    }
}

#[test]
fn random_operations_with_restarts_and_a_torn_tail() {
    let seed = seed();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().to_path_buf();
    run(move || async move {
        {
            let mut rng = StdRng::seed_from_u64(seed);
            let options = StoreOptions {
                segment_bytes_max: 256 * 1024,
                ..StoreOptions::default()
            };
            let mut model: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
            let mut store = Store::open_with(GlommioDir::open(&path).await.unwrap(), options)
                .await
                .unwrap()
                .0;
            for round in 0..6 {
                for _ in 0..40 {
                    if rng.gen_ratio(1, 10) {
                        let blob = [rng.gen_range(0..8u8); 32];
                        store.delete_blob(&blob, 3).await.unwrap();
                        model.retain(|k, _| k.blob_id != blob);
                        continue;
                    }
                    let puts: Vec<(Key, Vec<u8>)> = (0..rng.gen_range(1..5))
                        .map(|_| {
                            let len = rng.gen_range(0..12_000);
                            (key(&mut rng), (0..len).map(|_| rng.gen()).collect())
                        })
                        .collect();
                    let batch: Vec<Put> = puts
                        .iter()
                        .map(|(k, d)| Put {
                            key: *k,
                            end_epoch: 3,
                            flags: 0,
                            data: d,
                        })
                        .collect();
                    store.put(&batch).await.unwrap();
                    model.extend(puts);
                }
                drop(store);
                if round % 2 == 1 {
                    // A commit torn by power loss: garbage after the last commit.
                    let newest = (1..100)
                        .rev()
                        .map(segment_name)
                        .find(|n| path.join(n).exists())
                        .unwrap();
                    let mut file = std::fs::OpenOptions::new()
                        .append(true)
                        .open(path.join(newest))
                        .unwrap();
                    let garbage: Vec<u8> = (0..rng.gen_range(100..6000))
                        .map(|_| rng.gen_range(1..=255))
                        .collect();
                    file.write_all(&garbage).unwrap();
                }
                let (reopened, report) =
                    Store::open_with(GlommioDir::open(&path).await.unwrap(), options)
                        .await
                        .unwrap();
                store = reopened;
                assert!(report.corrupt_regions.is_empty(), "seed {seed}: {report:?}");
                assert_eq!(
                    report.segments_from_footer,
                    report.segments - 1,
                    "seed {seed}: sealed segments open from their footers: {report:?}"
                );
                if round % 2 == 1 {
                    assert!(report.torn_tail_bytes > 0, "seed {seed}: torn tail seen");
                }
                assert_eq!(store.len(), model.len(), "seed {seed} round {round}");
                for (k, data) in &model {
                    assert_eq!(
                        store.get(k).await.unwrap().as_deref(),
                        Some(&data[..]),
                        "seed {seed} {k:?}"
                    );
                    // The mapped read gives the same bytes, first (checked) and again.
                    for _ in 0..2 {
                        let shared = store.get_shared(k).await.unwrap().unwrap();
                        assert_eq!(&shared[..], &data[..], "seed {seed} {k:?} mapped");
                    }
                }
                // A scrub pass in direct reads at any offset, over sealed segments (footers,
                // trailers) and the active one (its torn tail not included): all intact.
                let mut checked = 0;
                for calls in 0.. {
                    assert!(calls < 1000, "seed {seed}: the pass ends");
                    let report = store.scrub(rng.gen_range(1..300_000)).await.unwrap();
                    assert!(report.corrupt.is_empty(), "seed {seed}: {report:?}");
                    checked += report.records_checked;
                    if report.pass_complete {
                        break;
                    }
                }
                assert!(checked >= model.len(), "seed {seed}: {checked} checked");
            }
            assert!(
                store.segment_count() > 1,
                "segments were sealed and started"
            );
        }
    });
}

/// A bit flipped under the store is caught by the first mapped read of the record, which then
/// treats it as missing; the mapping of a growing segment follows new commits.
#[test]
fn mapped_reads_check_checksums_and_follow_a_growing_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().to_path_buf();
    run(move || async move {
        let mut store = Store::open(GlommioDir::open(&path).await.unwrap())
            .await
            .unwrap()
            .0;
        let key = |shard| Key {
            blob_id: [1; 32],
            kind: RecordKind::Primary,
            shard,
        };
        for shard in 0..4u16 {
            let data = vec![shard as u8 + 1; 10_000];
            store
                .put(&[Put {
                    key: key(shard),
                    end_epoch: 1,
                    flags: 0,
                    data: &data,
                }])
                .await
                .unwrap();
            if shard != 2 {
                // Mapped after each commit: the next read must see past the old mapping's end.
                assert_eq!(
                    &store.get_shared(&key(shard)).await.unwrap().unwrap()[..],
                    &data[..]
                );
            }
        }
        // Flip a byte inside the data of shard 2's record, which no read has checked yet.
        let segment = path.join(segment_name(1));
        let bytes = std::fs::read(&segment).unwrap();
        let at = bytes
            .windows(64)
            .position(|w| w.iter().all(|b| *b == 3))
            .unwrap()
            + 100;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[bytes[at] ^ 0x40], at as u64).unwrap();
        assert!(matches!(
            store.get_shared(&key(2)).await,
            Err(floe_storage::store::StoreError::Corrupt { .. })
        ));
        assert_eq!(store.get_shared(&key(2)).await.unwrap(), None);
        assert_eq!(store.counters().corrupt_records, 1);
        assert_eq!(store.get_shared(&key(3)).await.unwrap().unwrap()[0], 4);
    });
}
