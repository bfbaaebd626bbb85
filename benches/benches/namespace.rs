//! ListObjectsV2's work in the namespace: one page of 1,000 keys (the first, one in the
//! middle by continuation, and one rolled up at a delimiter) from buckets of 10 thousand and
//! 1 million keys. A page must cost the same whatever the bucket holds (issue 16).
//!
//!     cargo bench -p floe-benches --bench namespace
//!
//! Building the million-key bucket takes a few seconds (one bulk transaction); the database is
//! in a temporary directory on the working directory's disk (redb, page cache warm).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use floe_storage::namespace::{Namespace, Object, Piece};

fn object(i: u64) -> Object {
    Object {
        pieces: vec![Piece {
            blob_id: *blake2b_simd::blake2b(&i.to_le_bytes())
                .as_array()
                .first_chunk()
                .unwrap(),
            size: 1 << 20,
        }],
        size: 1 << 20,
        etag: format!("{i:032x}"),
        last_modified_unix_seconds: 1_700_000_000,
        content_type: Some("application/octet-stream".into()),
        ..Object::default()
    }
}

/// A bucket of `keys` keys `shard-NNNNN/file-NNNNNNNN` (100 files per directory).
fn bucket(dir: &std::path::Path, keys: u64) -> Namespace {
    let ns = Namespace::open(&dir.join(format!("ns-{keys}.redb"))).unwrap();
    ns.create_bucket("data").unwrap();
    let batch = 100_000;
    for start in (0..keys).step_by(batch as usize) {
        let objects: Vec<(String, Object)> = (start..(start + batch).min(keys))
            .map(|i| (format!("shard-{:05}/file-{i:08}", i / 100), object(i)))
            .collect();
        ns.put_objects("data", &objects).unwrap();
    }
    ns
}

fn list(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut group = c.benchmark_group("list_objects_v2_page");
    group.sample_size(20);
    for keys in [10_000u64, 1_000_000] {
        let ns = bucket(dir.path(), keys);
        let middle = format!("shard-{:05}/file-{:08}", keys / 200, keys / 2);
        group.bench_with_input(BenchmarkId::new("first_1000", keys), &keys, |b, _| {
            b.iter(|| {
                let page = ns.list("data", "", None, None, 1000).unwrap();
                assert_eq!(page.objects.len(), 1000);
            })
        });
        group.bench_with_input(BenchmarkId::new("middle_1000", keys), &keys, |b, _| {
            b.iter(|| {
                let page = ns.list("data", "", None, Some(&middle), 1000).unwrap();
                assert_eq!(page.objects.len(), 1000);
            })
        });
        // 1,000 directories rolled up, one seek each.
        group.bench_with_input(BenchmarkId::new("delimiter_1000", keys), &keys, |b, _| {
            b.iter(|| {
                let page = ns.list("data", "", Some("/"), None, 1000).unwrap();
                assert_eq!(page.common_prefixes.len(), (keys / 100).min(1000) as usize);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, list);
criterion_main!(benches);
