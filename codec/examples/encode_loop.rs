//! Encodes one pseudo-random blob over and over: a clean target for `perf record` and
//! `valgrind --tool=callgrind`, without criterion's setup in the profile.
//!
//! `cargo run --release -p floe-codec --example encode_loop -- <n> <blob bytes> <iterations> [op]`
//! where `op` is `encode` (default), `metadata` or `decode` (from the last k_p primary slivers).

use std::time::Instant;

use floe_codec::{decode_primary, Encoder, EncodingConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (n, len, iterations) = (arg(1, 1000) as u16, arg(2, 1024), arg(3, 10));
    let op = args.get(4).map_or("encode", String::as_str);
    let config = EncodingConfig::new(n).expect("valid n");
    let blob: Vec<u8> = (0..len)
        .map(|i| (i as u64).wrapping_mul(0x9e37_79b9) as u8)
        .collect();
    let mut encoder = Encoder::new(config);
    let encoded = encoder.encode(&blob).expect("blob fits");
    let k_p = config.n_primary_source();
    let others: Vec<(usize, &[u8])> = (config.n_shards() - k_p..config.n_shards())
        .map(|i| (i, encoded.primary_sliver(i)))
        .collect();
    let started = Instant::now();
    for _ in 0..iterations {
        match op {
            "encode" => drop(encoder.encode(&blob).expect("blob fits")),
            "metadata" => drop(encoder.compute_metadata(&blob).expect("blob fits")),
            "decode" => drop(decode_primary(encoded.metadata(), &others).expect("decodes")),
            other => panic!("unknown op {other}"),
        }
    }
    let per = started.elapsed().as_secs_f64() / iterations as f64;
    println!("{op} n = {n}, {len} bytes: {:.2} ms per blob", per * 1e3);
}
