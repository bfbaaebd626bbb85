//! Measures what reclaiming costs: write amplification (bytes the store writes per byte the
//! user stores) and space amplification (disk used per live byte), on the real backend.
//!
//! `cargo run --release -p floe-storage --example reclaim_amplification -- <dir> [fifo|random]
//! [live MiB] [written MiB] [live fraction]`
//!
//! Blobs of 16 slivers of 64 KiB (1 MiB) are stored one commit each until `live` MiB are
//! stored; from then on every new blob deletes one: the oldest (`fifo`: blobs that expire in
//! the order they came) or one picked uniformly at random (`random`: the worst case for
//! segment-granular reclaiming, every segment decays evenly). Every 64 MiB written, a
//! reclaiming pass runs: a segment at most `live fraction` live is rewritten (default 0.5, the
//! node's). Defaults: `random`, 1024 MiB live, 4096 MiB written. `<dir>` must be empty or
//! missing.

use std::time::Instant;

use floe_storage::format::RecordKind;
use floe_storage::glommio_dir::GlommioDir;
use floe_storage::store::{Key, Put, Store};
use glommio::LocalExecutorBuilder;
use rand::{Rng, SeedableRng};

const SLIVERS_PER_BLOB: usize = 16;
const SLIVER_BYTES: usize = 64 * 1024;
const RECLAIM_EVERY_BLOBS: u64 = 64;

fn disk_bytes(dir: &str) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: reclaim_amplification <dir> [fifo|random] [live MiB] [written MiB] [live fraction]";
    let dir = args.get(1).expect(usage).clone();
    let pattern = args.get(2).cloned().unwrap_or_else(|| "random".into());
    assert!(pattern == "fifo" || pattern == "random", "{usage}");
    let live_blobs: u64 = args.get(3).map_or(1024, |a| a.parse().expect(usage));
    let written_blobs: u64 = args.get(4).map_or(4096, |a| a.parse().expect(usage));
    // The node's threshold is `server::owner::RECLAIM_LIVE_FRACTION_MAX`.
    let fraction: f64 = args.get(5).map_or(0.5, |a| a.parse().expect(usage));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(disk_bytes(&dir), 0, "{dir} must be empty");
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let (mut store, _) = Store::open(GlommioDir::open(&dir).await.unwrap())
                .await
                .unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let data = vec![0x5au8; SLIVER_BYTES];
            let mut live: std::collections::VecDeque<u64> = Default::default();
            let mut disk_max = 0u64;
            let started = Instant::now();
            for blob in 0..written_blobs {
                let mut blob_id = [0u8; 32];
                blob_id[..8].copy_from_slice(&blob.to_le_bytes());
                let keys: Vec<Key> = (0..SLIVERS_PER_BLOB as u16)
                    .map(|shard| Key {
                        blob_id,
                        kind: RecordKind::Primary,
                        shard,
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
                live.push_back(blob);
                if live.len() as u64 > live_blobs {
                    let victim = if pattern == "fifo" {
                        live.pop_front().unwrap()
                    } else {
                        let i = rng.gen_range(0..live.len());
                        live.swap_remove_back(i).unwrap()
                    };
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&victim.to_le_bytes());
                    store.delete_blob(&id, 1).await.unwrap();
                }
                if (blob + 1) % RECLAIM_EVERY_BLOBS == 0 {
                    disk_max = disk_max.max(disk_bytes(&dir));
                    store.reclaim(fraction).await.unwrap();
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let c = store.counters().clone();
            let user = c.bytes_written - c.reclaim_bytes_moved;
            let live_bytes = live.len() as f64 * (SLIVERS_PER_BLOB * SLIVER_BYTES) as f64;
            println!(
                "{pattern}, threshold {fraction}: {written_blobs} MiB of blobs stored, {} MiB live \
                 at the end, {secs:.1} s",
                live.len()
            );
            println!(
                "  written by users {:.0} MB, moved by reclaiming {:.0} MB, freed {:.0} MB: \
                 write amplification {:.2}",
                user as f64 / 1e6,
                c.reclaim_bytes_moved as f64 / 1e6,
                c.reclaim_bytes_freed as f64 / 1e6,
                c.bytes_written as f64 / user as f64
            );
            println!(
                "  disk at most {:.0} MB (before a pass), {:.0} MB at the end, for {:.0} MB live: \
                 space amplification {:.2} at most, {:.2} at the end",
                disk_max as f64 / 1e6,
                disk_bytes(&dir) as f64 / 1e6,
                live_bytes / 1e6,
                disk_max as f64 / live_bytes,
                disk_bytes(&dir) as f64 / live_bytes
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
