//! Randomized properties of the codec over many blob sizes and committee sizes.
//!
//! Every test prints its seed; set `FLOE_TEST_SEED=<seed>` to replay a failure exactly.

use floe_codec::{
    decode_primary, decode_primary_verified, decode_secondary, encode, recover_sliver, verify_blob,
    verify_sliver, DecodeError, EncodedBlob, EncodingConfig, ExpandedSliver, SliverKind,
    VerifyScratch,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("FLOE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("{test}: seed {seed} (replay with FLOE_TEST_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// A random blob: mostly small, sometimes up to a few MiB, sometimes just at a boundary.
fn random_blob(rng: &mut StdRng, config: &EncodingConfig, max_bytes: usize) -> Vec<u8> {
    let max_bytes = max_bytes.min(config.blob_bytes_max() as usize);
    let len = match rng.gen_range(0..6) {
        0 => 0,
        1 => rng.gen_range(1..64),
        2 => config.n_source_symbols() * 2 * rng.gen_range(1..4),
        3 => max_bytes,
        _ => rng.gen_range(0..=max_bytes),
    };
    let mut blob = vec![0u8; len];
    rng.fill(&mut blob[..]);
    blob
}

/// Every k-subset of 0..n, in order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    fn go(start: usize, n: usize, k: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if current.len() == k {
            out.push(current.clone());
            return;
        }
        for i in start..n {
            current.push(i);
            go(i + 1, n, k, current, out);
            current.pop();
        }
    }
    go(0, n, k, &mut current, &mut out);
    out
}

fn pick<'a>(
    encoded: &'a EncodedBlob,
    kind: SliverKind,
    indices: &[usize],
) -> Vec<(usize, &'a [u8])> {
    indices
        .iter()
        .map(|&i| (i, encoded.sliver(kind, i)))
        .collect()
}

fn check_decodes(rng: &mut StdRng, n: u16, blob: &[u8], exhaustive: bool, random_subsets: usize) {
    let config = EncodingConfig::new(n).unwrap();
    let encoded = encode(&config, blob).unwrap();
    let metadata = encoded.metadata();
    metadata
        .verify(encoded.blob_id(), config.n_shards())
        .unwrap();
    let (n, k_p, k_s) = (
        config.n_shards(),
        config.n_primary_source(),
        config.n_secondary_source(),
    );

    let primary_sets = if exhaustive {
        subsets(n, k_p)
    } else {
        let all: Vec<usize> = (0..n).collect();
        let mut sets = vec![(0..k_p).collect(), (n - k_p..n).collect()];
        sets.extend((0..random_subsets).map(|_| all.choose_multiple(rng, k_p).copied().collect()));
        sets
    };
    for set in &primary_sets {
        let decoded = decode_primary(metadata, &pick(&encoded, SliverKind::Primary, set))
            .unwrap_or_else(|e| panic!("n {n} len {} primary {set:?}: {e}", blob.len()));
        assert!(decoded == blob, "n {n} len {} primary {set:?}", blob.len());
        let given = pick(&encoded, SliverKind::Primary, set);
        let decoded = decode_primary_verified(metadata, &given)
            .unwrap_or_else(|e| panic!("n {n} len {} verified {set:?}: {e}", blob.len()));
        assert!(decoded == blob, "n {n} len {} verified {set:?}", blob.len());
    }
    let all: Vec<usize> = (0..n).collect();
    for _ in 0..random_subsets.max(1) {
        let set: Vec<usize> = all.choose_multiple(rng, k_s).copied().collect();
        let decoded = decode_secondary(metadata, &pick(&encoded, SliverKind::Secondary, &set))
            .unwrap_or_else(|e| panic!("n {n} len {} secondary {set:?}: {e}", blob.len()));
        assert!(
            decoded == blob,
            "n {n} len {} secondary {set:?}",
            blob.len()
        );
    }
    // Fewer than k slivers is a clear error, not a panic.
    let short = pick(&encoded, SliverKind::Primary, &all[..k_p - 1]);
    assert!(matches!(
        decode_primary(metadata, &short),
        Err(DecodeError::NotEnoughSlivers { .. })
    ));
}

#[test]
fn any_k_p_primary_or_k_s_secondary_slivers_decode_the_blob() {
    let mut rng = rng("decode");
    for n in [4u16, 7] {
        for _ in 0..4 {
            let config = EncodingConfig::new(n).unwrap();
            let blob = random_blob(&mut rng, &config, 64 * 1024);
            check_decodes(&mut rng, n, &blob, true, 3);
        }
    }
    for (n, max_bytes, blobs, subsets) in [
        (10u16, 1 << 20, 6, 10),
        (31, 2 << 20, 4, 6),
        (100, 3 << 20, 3, 4),
    ] {
        for _ in 0..blobs {
            let config = EncodingConfig::new(n).unwrap();
            let blob = random_blob(&mut rng, &config, max_bytes);
            check_decodes(&mut rng, n, &blob, false, subsets);
        }
    }
}

#[test]
fn any_single_flipped_bit_in_a_sliver_is_rejected() {
    let mut rng = rng("flip");
    for n in [4u16, 7, 10, 31, 100] {
        let config = EncodingConfig::new(n).unwrap();
        let blob = random_blob(&mut rng, &config, 256 * 1024);
        let encoded = encode(&config, &blob).unwrap();
        let layout = *encoded.layout();
        let mut scratch = VerifyScratch::default();
        for kind in [SliverKind::Primary, SliverKind::Secondary] {
            for _ in 0..8 {
                let index = rng.gen_range(0..config.n_shards());
                let mut sliver = encoded.sliver(kind, index).to_vec();
                let (metadata, ss) = (encoded.metadata(), layout.symbol_bytes);
                verify_sliver(metadata, &layout, kind, index, ss, &sliver, &mut scratch).unwrap();
                let bit = rng.gen_range(0..sliver.len() * 8);
                sliver[bit / 8] ^= 1 << (bit % 8);
                let result =
                    verify_sliver(metadata, &layout, kind, index, ss, &sliver, &mut scratch);
                assert!(result.is_err(), "n {n} {kind} {index} bit {bit} accepted");
                sliver[bit / 8] ^= 1 << (bit % 8);
                // Right bytes, wrong claims: another index, symbol size or length.
                let other = (index + 1) % config.n_shards();
                // (Identical slivers, as in an all-zero blob, legitimately share a hash.)
                if encoded.sliver(kind, other) != sliver.as_slice() {
                    let result =
                        verify_sliver(metadata, &layout, kind, other, ss, &sliver, &mut scratch);
                    assert!(result.is_err(), "n {n} {kind} {index} accepted as {other}");
                }
                assert!(verify_sliver(
                    metadata,
                    &layout,
                    kind,
                    index,
                    ss + 2,
                    &sliver,
                    &mut scratch
                )
                .is_err());
                assert!(verify_sliver(
                    metadata,
                    &layout,
                    kind,
                    index,
                    ss,
                    &sliver[ss..],
                    &mut scratch
                )
                .is_err());
                assert!(verify_sliver(
                    metadata,
                    &layout,
                    kind,
                    config.n_shards(),
                    ss,
                    &sliver,
                    &mut scratch
                )
                .is_err());
            }
        }
        // A decoder fed a corrupted sliver fails instead of returning other bytes.
        let k_p = config.n_primary_source();
        let mut slivers: Vec<Vec<u8>> = (config.n_shards() - k_p..config.n_shards())
            .map(|i| encoded.primary_sliver(i).to_vec())
            .collect();
        let victim = rng.gen_range(0..slivers.len());
        let bit = rng.gen_range(0..slivers[victim].len() * 8);
        slivers[victim][bit / 8] ^= 1 << (bit % 8);
        let given: Vec<(usize, &[u8])> = slivers
            .iter()
            .enumerate()
            .map(|(i, s)| (config.n_shards() - k_p + i, s.as_slice()))
            .collect();
        match decode_primary(encoded.metadata(), &given) {
            Err(DecodeError::Inconsistent { .. }) => {}
            other => panic!("n {n}: corrupted sliver gave {:?}", other.map(|b| b.len())),
        }
        match decode_primary_verified(encoded.metadata(), &given) {
            Err(DecodeError::Inconsistent { .. }) => {}
            other => panic!(
                "n {n}: corrupted sliver (as verified) gave {:?}",
                other.map(|b| b.len())
            ),
        }
    }
}

#[test]
fn every_lost_sliver_is_rebuilt_from_recovery_symbols() {
    let mut rng = rng("recover");
    for n in [4u16, 7, 10, 31, 100] {
        let config = EncodingConfig::new(n).unwrap();
        let blob = random_blob(&mut rng, &config, 128 * 1024);
        let encoded = encode(&config, &blob).unwrap();
        let (metadata, layout) = (encoded.metadata(), *encoded.layout());
        let n = config.n_shards();
        let expanded = |kind: SliverKind| -> Vec<ExpandedSliver> {
            (0..n)
                .map(|i| {
                    ExpandedSliver::new(metadata, &layout, kind, i, encoded.sliver(kind, i))
                        .unwrap()
                })
                .collect()
        };
        let (primaries, secondaries) = (
            expanded(SliverKind::Primary),
            expanded(SliverKind::Secondary),
        );
        for (kind, helpers) in [
            (SliverKind::Primary, &secondaries),
            (SliverKind::Secondary, &primaries),
        ] {
            for target in 0..n {
                // Symbols from a random set of other slivers, one of them lying.
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng);
                let mut symbols: Vec<_> = order
                    .iter()
                    .map(|&h| helpers[h].recovery_symbol(target))
                    .collect();
                let liar = rng.gen_range(0..symbols.len());
                symbols[liar].data[0] ^= 0x40;
                let recovered = recover_sliver(metadata, kind, target, &symbols)
                    .unwrap_or_else(|e| panic!("n {n} {kind} {target}: {e}"));
                assert_eq!(
                    recovered.data,
                    encoded.sliver(kind, target),
                    "n {n} {kind} {target}"
                );
                let needed = kind.n_symbols(&layout);
                if liar < needed {
                    assert_eq!(
                        recovered.rejected_sources,
                        vec![order[liar]],
                        "liar reported"
                    );
                }
                // Traffic: k symbols of ss bytes, i.e. one sliver, plus log n proof nodes each.
                let proof_nodes = symbols[0].proof.siblings.len();
                assert!(proof_nodes <= (n as f64).log2().ceil() as usize);
                // Too few symbols is a clear error.
                assert!(recover_sliver(metadata, kind, target, &symbols[..needed - 1]).is_err());
            }
        }
    }
}

#[test]
fn full_verification_recomputes_the_blob_id() {
    let mut rng = rng("verify_blob");
    let config = EncodingConfig::new(10).unwrap();
    let mut blob = random_blob(&mut rng, &config, 100_000);
    blob.push(1);
    let encoded = encode(&config, &blob).unwrap();
    verify_blob(&blob, encoded.blob_id(), 10).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    assert!(verify_blob(&blob, encoded.blob_id(), 10).is_err());
}
