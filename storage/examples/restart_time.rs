//! Measures how long a store takes to open (recover) with many slivers, on the real backend.
//!
//! `cargo run --release -p floe-storage --example restart_time -- <dir> [slivers] [sliver bytes]`
//!
//! The first run fills `<dir>` (in commits of 1000 slivers); every run then times `Store::open`.
//! Defaults: one million slivers of 1334 bytes (a primary sliver of a 1 KiB blob at n = 1000).

use std::time::Instant;

use floe_storage::format::RecordKind;
use floe_storage::glommio_dir::GlommioDir;
use floe_storage::store::{Key, Put, Store};
use glommio::LocalExecutorBuilder;

const SLIVERS_PER_COMMIT: usize = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .expect("usage: restart_time <dir> [slivers] [sliver bytes]")
        .clone();
    let slivers: usize = args
        .get(2)
        .map_or(1_000_000, |a| a.parse().expect("a count"));
    let sliver_bytes: usize = args.get(3).map_or(1334, |a| a.parse().expect("a size"));
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let (mut store, _) = Store::open(GlommioDir::open(&dir).await.unwrap())
                .await
                .unwrap();
            if store.is_empty() {
                let started = Instant::now();
                let data = vec![0x5au8; sliver_bytes];
                for first in (0..slivers).step_by(SLIVERS_PER_COMMIT) {
                    let keys: Vec<Key> = (first..(first + SLIVERS_PER_COMMIT).min(slivers))
                        .map(|i| {
                            let mut blob_id = [0u8; 32];
                            blob_id[..8].copy_from_slice(&(i as u64 / 1000).to_le_bytes());
                            Key {
                                blob_id,
                                kind: RecordKind::Primary,
                                shard: (i % 1000) as u16,
                            }
                        })
                        .collect();
                    let batch: Vec<Put> = keys
                        .iter()
                        .map(|key| Put {
                            key: *key,
                            end_epoch: 1,
                            flags: 0,
                            data: &data,
                        })
                        .collect();
                    store.put(&batch).await.unwrap();
                }
                let secs = started.elapsed().as_secs_f64();
                let bytes = slivers as f64 * sliver_bytes as f64;
                println!(
                    "filled {slivers} slivers of {sliver_bytes} B in {secs:.1} s ({:.0} MB/s)",
                    bytes / secs / 1e6
                );
            }
            drop(store);
            for run in 0..3 {
                let started = Instant::now();
                let (store, report) = Store::open(GlommioDir::open(&dir).await.unwrap())
                    .await
                    .unwrap();
                println!(
                    "open #{run}: {} records in {} segments recovered in {:.3} s",
                    store.len(),
                    report.segments,
                    started.elapsed().as_secs_f64()
                );
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
