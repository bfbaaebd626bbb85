//! Sliver writes and cold reads through the store on the real backend, at queue depth 1, for
//! the side-by-side comparison with fio in `benches/storage_vs_fio.sh`.
//!
//! `store_bench <dir> write <sliver bytes> <count> <slivers per commit>`: a fresh store, `count`
//! slivers, one `fdatasync` per commit; prints MB/s.
//! `store_bench <dir> read <sliver bytes> <count> <reads>`: random reads (seeded) of the slivers
//! written before (O_DIRECT, so from the device); prints MB/s and reads/s.
//! `store_bench <dir> mapped <sliver bytes> <count> <reads>`: hot reads of the slivers written
//! before through `Store::get_shared` (mapped, in the page cache after a first pass that also
//! checks every checksum), each view copied once into a reused buffer as a consumer would;
//! then, on the same thread, the same number of plain memcpys of the same sizes from a heap
//! copy of the same bytes; prints both and the ratio mapped / memcpy.

use std::time::Instant;

use floe_storage::format::RecordKind;
use floe_storage::glommio_dir::GlommioDir;
use floe_storage::store::{Key, Put, Store};
use glommio::LocalExecutorBuilder;

fn key(i: usize) -> Key {
    let mut blob_id = [0u8; 32];
    blob_id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Key {
        blob_id,
        kind: RecordKind::Primary,
        shard: 0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: store_bench <dir> write|read <sliver bytes> <count> <per commit | reads>";
    let dir = args.get(1).expect(usage).clone();
    let mode = args.get(2).expect(usage).clone();
    let number = |i: usize| -> usize { args.get(i).expect(usage).parse().expect(usage) };
    let (sliver_bytes, count, extra) = (number(3), number(4), number(5));
    LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(move || async move {
            let (mut store, _) = Store::open(GlommioDir::open(&dir).await.unwrap())
                .await
                .unwrap();
            let data = vec![0xa5u8; sliver_bytes];
            let started = Instant::now();
            match mode.as_str() {
                "write" => {
                    for first in (0..count).step_by(extra) {
                        let keys: Vec<Key> = (first..(first + extra).min(count)).map(key).collect();
                        let batch: Vec<Put> = keys
                            .iter()
                            .map(|k| Put {
                                key: *k,
                                end_epoch: 1,
                                flags: 0,
                                data: &data,
                            })
                            .collect();
                        store.put(&batch).await.unwrap();
                    }
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "store write: {:.1} MB/s",
                        (count * sliver_bytes) as f64 / secs / 1e6
                    );
                }
                "read" => {
                    let mut state = 0x9e37_79b9_7f4a_7c15u64;
                    for _ in 0..extra {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let got = store
                            .get(&key(state as usize % count))
                            .await
                            .unwrap()
                            .expect("written");
                        assert_eq!(got.len(), sliver_bytes);
                    }
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "store read: {:.1} MB/s, {:.0} reads/s",
                        (extra * sliver_bytes) as f64 / secs / 1e6,
                        extra as f64 / secs
                    );
                }
                "mapped" => {
                    let mut heap = Vec::with_capacity(count * sliver_bytes);
                    for i in 0..count {
                        heap.extend_from_slice(&store.get_shared(&key(i)).await.unwrap().unwrap());
                    }
                    let mut out = vec![0u8; sliver_bytes];
                    let picks: Vec<usize> = {
                        let mut state = 0x9e37_79b9_7f4a_7c15u64;
                        (0..extra)
                            .map(|_| {
                                state ^= state << 13;
                                state ^= state >> 7;
                                state ^= state << 17;
                                state as usize % count
                            })
                            .collect()
                    };
                    let started = Instant::now();
                    for &i in &picks {
                        let view = store.get_shared(&key(i)).await.unwrap().unwrap();
                        out.copy_from_slice(&view);
                    }
                    let mapped = started.elapsed().as_secs_f64();
                    let started = Instant::now();
                    for &i in &picks {
                        out.copy_from_slice(&heap[i * sliver_bytes..(i + 1) * sliver_bytes]);
                        std::hint::black_box(&out);
                    }
                    let memcpy = started.elapsed().as_secs_f64();
                    let mb = |secs: f64| (extra * sliver_bytes) as f64 / secs / 1e6;
                    println!(
                        "mapped: {:.1} MB/s, memcpy: {:.1} MB/s, mapped / memcpy: {:.2}",
                        mb(mapped),
                        mb(memcpy),
                        memcpy / mapped
                    );
                }
                other => panic!("unknown mode {other}"),
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
