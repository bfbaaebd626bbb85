//! Codec benchmarks, each beside its floor: the raw `reed-solomon-simd` work of the same
//! encodes, and BLAKE2b streamed over the same bytes (every encoded sliver), in the same run.
//!
//! `encode` allocates everything per blob, as a one-off caller (and Walrus's encoder) does;
//! `encode_reused` keeps one `Encoder` (its 32 MB leaf matrix at n = 1000) across blobs, as a
//! node does.
//!
//! Names are `n{n}/{size}/{op}/{threads}`, `threads` being `t1` (a one-thread pool: the
//! single-core figure) or `tall` (all cores). Filter with criterion's usual argument, e.g.
//! `cargo bench -p floe-benches --bench codec -- 'n1000/1MiB'`. The 1 GiB cases at n = 1000 run
//! only with `FLOE_BENCH_LARGE=1` (they need about 6 GiB of memory and minutes).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use floe_codec::{
    compute_metadata, decode_primary, decode_primary_verified, encode, verify_sliver, EncodedBlob,
    Encoder, EncodingConfig, SliverKind, VerifyScratch,
};
use rayon::ThreadPool;
use reed_solomon_simd::ReedSolomonEncoder;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn cases() -> Vec<(u16, usize, &'static str)> {
    let mut cases = vec![
        (10, KIB, "1KiB"),
        (10, MIB, "1MiB"),
        (10, 1_834_952, "max1834952B"),
        (100, MIB, "1MiB"),
        (100, 32 * MIB, "32MiB"),
        (100, 128 * MIB, "128MiB"),
        (1000, KIB, "1KiB"),
        (1000, MIB, "1MiB"),
        (1000, 32 * MIB, "32MiB"),
    ];
    if std::env::var_os("FLOE_BENCH_LARGE").is_some() {
        cases.push((1000, 1024 * MIB, "1GiB"));
    }
    cases
}

/// Deterministic pseudo-random bytes (xorshift, eight bytes per step), so every run encodes the
/// same blob.
fn blob(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn pools() -> Vec<(&'static str, ThreadPool)> {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let all = rayon::ThreadPoolBuilder::new().build().unwrap();
    vec![("t1", one), ("tall", all)]
}

/// The Reed-Solomon work of one encode with nothing around it: `k_p` row encodes and `n`
/// column encodes of the blob's shapes, one reused encoder, as Walrus's encoder does it.
fn rs_floor(config: &EncodingConfig, data: &[u8], ss: usize) {
    let (n, k_p, k_s) = (
        config.n_shards(),
        config.n_primary_source(),
        config.n_secondary_source(),
    );
    let mut encoder = ReedSolomonEncoder::new(k_s, n - k_s, ss).unwrap();
    let row_bytes = k_s * ss;
    let zero = vec![0u8; row_bytes];
    for r in 0..k_p {
        let row = data
            .get(r * row_bytes..(r + 1) * row_bytes)
            .unwrap_or(&zero);
        encoder.reset(k_s, n - k_s, ss).unwrap();
        for symbol in row.chunks_exact(ss) {
            encoder.add_original_shard(symbol).unwrap();
        }
        std::hint::black_box(encoder.encode().unwrap().recovery(0));
    }
    for c in 0..n {
        encoder.reset(k_p, n - k_p, ss).unwrap();
        for r in 0..k_p {
            let at = (r * k_s + c % k_s) * ss;
            encoder
                .add_original_shard(data.get(at..at + ss).unwrap_or(&zero[..ss]))
                .unwrap();
        }
        std::hint::black_box(encoder.encode().unwrap().recovery(0));
    }
}

fn bench_codec(c: &mut Criterion) {
    for (n, size, label) in cases() {
        let config = EncodingConfig::new(n).unwrap();
        let data = blob(size);
        let encoded: EncodedBlob = encode(&config, &data).unwrap();
        let layout = *encoded.layout();
        let k_p = config.n_primary_source();
        let systematic: Vec<(usize, &[u8])> =
            (0..k_p).map(|i| (i, encoded.primary_sliver(i))).collect();
        // A fixed "random" choice of k_p slivers with as few systematic ones as n allows:
        // the last k_p indices, which at every n here are all non-systematic.
        let others: Vec<(usize, &[u8])> = (config.n_shards() - k_p..config.n_shards())
            .map(|i| (i, encoded.primary_sliver(i)))
            .collect();
        let large = size >= 128 * MIB;

        let mut group = c.benchmark_group(format!("n{n}/{label}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(if large { 20 } else { 4 }));
        group.throughput(Throughput::Bytes(size as u64));
        for (threads, pool) in pools() {
            if large && threads == "t1" && n == 1000 {
                continue;
            }
            group.bench_function(BenchmarkId::new("encode", threads), |b| {
                b.iter(|| pool.install(|| encode(&config, &data).unwrap()))
            });
            let mut encoder = Encoder::new(config);
            group.bench_function(BenchmarkId::new("encode_reused", threads), |b| {
                b.iter(|| pool.install(|| encoder.encode(&data).unwrap()))
            });
            group.bench_function(BenchmarkId::new("metadata", threads), |b| {
                b.iter(|| pool.install(|| compute_metadata(&config, &data).unwrap()))
            });
            group.bench_function(BenchmarkId::new("decode_systematic", threads), |b| {
                b.iter(|| pool.install(|| decode_primary(encoded.metadata(), &systematic).unwrap()))
            });
            // As a reader does: each sliver verified on arrival, then decoded without a second
            // check of the rows taken straight from them.
            group.bench_function(
                BenchmarkId::new("decode_systematic_verified", threads),
                |b| {
                    b.iter(|| {
                        pool.install(|| {
                            decode_primary_verified(encoded.metadata(), &systematic).unwrap()
                        })
                    })
                },
            );
            group.bench_function(BenchmarkId::new("decode_nonsystematic", threads), |b| {
                b.iter(|| pool.install(|| decode_primary(encoded.metadata(), &others).unwrap()))
            });
        }
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            let index = config.n_shards() / 2;
            let sliver = encoded.sliver(kind, index);
            let mut scratch = VerifyScratch::default();
            group.bench_function(BenchmarkId::new(format!("verify_{kind}"), "t1"), |b| {
                b.iter(|| {
                    verify_sliver(
                        encoded.metadata(),
                        &layout,
                        kind,
                        index,
                        layout.symbol_bytes,
                        sliver,
                        &mut scratch,
                    )
                    .unwrap()
                })
            });
        }
        group.bench_function(BenchmarkId::new("floor_rs", "t1"), |b| {
            b.iter(|| rs_floor(&config, &data, layout.symbol_bytes))
        });
        // BLAKE2b streamed over every encoded byte (all primary and secondary slivers, about
        // the n^2 * ss bytes of the expanded matrix), in one pass and one state.
        group.bench_function(BenchmarkId::new("floor_blake2b", "t1"), |b| {
            b.iter(|| {
                let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
                for kind in [SliverKind::Primary, SliverKind::Secondary] {
                    for index in 0..config.n_shards() {
                        state.update(encoded.sliver(kind, index));
                    }
                }
                state.finalize()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
