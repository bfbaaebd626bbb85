//! BLAKE2b-256 (`H` in the spec), one input at a time and many at once.
//!
//! The Merkle work dominates encoding: at n = 1000 a 1-byte blob already needs one million leaf
//! hashes and two million inner hashes, each a single 128-byte BLAKE2b block. Hashing them one by
//! one leaves the SIMD lanes idle, so the hot paths go through [`hash_many`], which feeds
//! `blake2b_simd`'s multi-buffer implementation (four inputs per AVX2 pass).

use blake2b_simd::many::{HashManyJob, MAX_DEGREE};
use blake2b_simd::Params;

/// A 32-byte BLAKE2b-256 digest.
pub type Digest = [u8; DIGEST_BYTES];

/// Output length of `H`.
pub const DIGEST_BYTES: usize = 32;

/// Prefix of a Merkle leaf: `H(0x00 || data)`.
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an inner Merkle node: `H(0x01 || left || right)`.
pub const INNER_PREFIX: u8 = 0x01;

/// How many jobs are handed to `blake2b_simd` per call. Why: a multiple of every SIMD degree,
/// large enough to amortise the dispatch, small enough that the job array lives on the stack.
const JOBS_PER_BATCH: usize = 8 * MAX_DEGREE;

fn params() -> Params {
    let mut params = Params::new();
    params.hash_length(DIGEST_BYTES);
    params
}

/// `H(parts[0] || parts[1] || ...)`.
pub fn hash_parts(parts: &[&[u8]]) -> Digest {
    let mut state = params().to_state();
    for part in parts {
        state.update(part);
    }
    to_digest(&state.finalize())
}

/// `H(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Digest {
    hash_parts(&[&[LEAF_PREFIX], data])
}

/// `H(0x01 || left || right)`.
pub fn inner_hash(left: &Digest, right: &Digest) -> Digest {
    hash_parts(&[&[INNER_PREFIX], left, right])
}

fn to_digest(hash: &blake2b_simd::Hash) -> Digest {
    let mut digest = [0u8; DIGEST_BYTES];
    digest.copy_from_slice(hash.as_bytes());
    digest
}

/// Hashes `inputs.len() / input_bytes` equally sized, contiguous inputs into `out`.
///
/// `inputs` holds the messages back to back, each `input_bytes` long (prefix included).
pub fn hash_many(inputs: &[u8], input_bytes: usize, out: &mut [Digest]) {
    assert!(input_bytes > 0);
    assert_eq!(
        inputs.len(),
        input_bytes * out.len(),
        "one digest per input"
    );
    let params = params();
    for (inputs, out) in inputs
        .chunks(input_bytes * JOBS_PER_BATCH)
        .zip(out.chunks_mut(JOBS_PER_BATCH))
    {
        let mut jobs: [Option<HashManyJob<'_>>; JOBS_PER_BATCH] = [const { None }; JOBS_PER_BATCH];
        for (job, input) in jobs.iter_mut().zip(inputs.chunks_exact(input_bytes)) {
            *job = Some(HashManyJob::new(&params, input));
        }
        blake2b_simd::many::hash_many(jobs.iter_mut().flatten());
        for (digest, job) in out.iter_mut().zip(jobs.iter().flatten()) {
            *digest = to_digest(&job.to_hash());
        }
    }
}

/// Scratch space for [`leaf_hashes`] and the Merkle functions, reused across calls so that the
/// hot loops do not allocate.
#[derive(Default)]
pub struct HashScratch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) digests: Vec<Digest>,
}

/// Leaf hashes `H(0x00 || symbol)` of `symbols` (back to back, `symbol_bytes` each).
pub fn leaf_hashes(
    symbols: &[u8],
    symbol_bytes: usize,
    out: &mut [Digest],
    scratch: &mut HashScratch,
) {
    assert_eq!(symbols.len(), symbol_bytes * out.len());
    let input_bytes = symbol_bytes + 1;
    let buf = &mut scratch.bytes;
    buf.clear();
    buf.reserve(input_bytes * out.len());
    for symbol in symbols.chunks_exact(symbol_bytes) {
        buf.push(LEAF_PREFIX);
        buf.extend_from_slice(symbol);
    }
    hash_many(buf, input_bytes, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Digest as _};

    fn reference(data: &[u8]) -> Digest {
        Blake2b::<U32>::digest(data).into()
    }

    #[test]
    fn single_hashes_match_the_blake2_crate() {
        assert_eq!(leaf_hash(b"abc"), reference(b"\x00abc"));
        let (l, r) = ([7u8; 32], [9u8; 32]);
        let mut inner = vec![1u8];
        inner.extend_from_slice(&l);
        inner.extend_from_slice(&r);
        assert_eq!(inner_hash(&l, &r), reference(&inner));
    }

    #[test]
    fn hash_many_matches_one_at_a_time_for_every_batch_shape() {
        for count in [
            0,
            1,
            3,
            4,
            5,
            JOBS_PER_BATCH - 1,
            JOBS_PER_BATCH,
            3 * JOBS_PER_BATCH + 2,
        ] {
            for symbol_bytes in [2, 126, 127, 128, 300] {
                let symbols: Vec<u8> = (0..count * symbol_bytes)
                    .map(|i| (i * 31 % 251) as u8)
                    .collect();
                let mut out = vec![[0u8; 32]; count];
                leaf_hashes(
                    &symbols,
                    symbol_bytes,
                    &mut out,
                    &mut HashScratch::default(),
                );
                for (i, digest) in out.iter().enumerate() {
                    let symbol = &symbols[i * symbol_bytes..(i + 1) * symbol_bytes];
                    assert_eq!(
                        *digest,
                        leaf_hash(symbol),
                        "count {count} ss {symbol_bytes} i {i}"
                    );
                }
            }
        }
    }
}
