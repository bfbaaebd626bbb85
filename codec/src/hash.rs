//! BLAKE2b-256 (`H` in the spec), one input at a time and many at once.
//!
//! The Merkle work dominates encoding: at n = 1000 a 1-byte blob already needs one million leaf
//! hashes and two million inner hashes, each a single 128-byte BLAKE2b block. Hashing them one by
//! one leaves the SIMD lanes idle, so the hot paths lay their messages out in [`Slots`] and hash
//! them eight at a time with the AVX-512 kernel of `blake2b_x8`, or four at a time with
//! `blake2b_simd`'s AVX2 path where AVX-512 is missing.

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

/// Symbols up to this size are copied into leaf messages byte by byte rather than by `memcpy`.
const SHORT_COPY_BYTES_MAX: usize = 16;

/// Bytes of a BLAKE2b block: a slot is a whole number of blocks.
const BLOCK_BYTES: usize = 128;

/// How many jobs the fallback hands to `blake2b_simd` per call. Why: a multiple of every SIMD
/// degree, large enough to amortise the dispatch, small enough to live on the stack.
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

/// Equally long messages laid out for batched hashing: message `i` starts at `i * slot_bytes`,
/// and each slot is zero past its message up to a whole number of BLAKE2b blocks.
///
/// Invariant: every byte of `buf` outside the first `input_bytes` of each slot is zero.
/// Writers only touch message bytes, so the invariant survives reuse with the same
/// `input_bytes`; a new length re-zeroes the buffer.
#[derive(Default)]
pub struct Slots {
    buf: Vec<u8>,
    input_bytes: usize,
    slot_bytes: usize,
    count: usize,
}

impl Slots {
    /// Lays out `count` messages of `input_bytes` each.
    pub fn prepare(&mut self, count: usize, input_bytes: usize) {
        if input_bytes != self.input_bytes {
            self.buf.clear();
            self.input_bytes = input_bytes;
            self.slot_bytes = input_bytes.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        }
        self.count = count;
        if self.buf.len() < count * self.slot_bytes {
            self.buf.resize(count * self.slot_bytes, 0);
        }
    }

    /// The bytes of message `index`, to be filled in.
    pub fn message_mut(&mut self, index: usize) -> &mut [u8] {
        assert!(index < self.count);
        let at = index * self.slot_bytes;
        &mut self.buf[at..at + self.input_bytes]
    }

    /// Hashes the `count` messages into `out`.
    pub fn hash_into(&self, out: &mut [Digest]) {
        assert_eq!(out.len(), self.count, "one digest per message");
        #[cfg(target_arch = "x86_64")]
        if crate::blake2b_x8::available() {
            return self.hash_x8(out);
        }
        self.hash_portable(out);
    }

    #[cfg(target_arch = "x86_64")]
    fn hash_x8(&self, out: &mut [Digest]) {
        use crate::blake2b_x8::{hash8, LANES};
        let mut digests = [[0u8; DIGEST_BYTES]; LANES];
        for (batch, out) in out.chunks_mut(LANES).enumerate() {
            let first = batch * LANES;
            // Lanes past the end repeat the first message; their digests are dropped.
            let offsets: [usize; LANES] = std::array::from_fn(|lane| {
                let index = if lane < out.len() {
                    first + lane
                } else {
                    first
                };
                index * self.slot_bytes
            });
            // SAFETY: `available()` was checked by the caller; each offset is the start of a
            // slot of `slot_bytes` (whole blocks) within `buf`, zero past the message
            // (invariant of `Slots`).
            unsafe { hash8(&self.buf, offsets, self.input_bytes, &mut digests) };
            out.copy_from_slice(&digests[..out.len()]);
        }
    }

    fn hash_portable(&self, out: &mut [Digest]) {
        let params = params();
        for (batch, out) in out.chunks_mut(JOBS_PER_BATCH).enumerate() {
            let mut jobs: [Option<HashManyJob<'_>>; JOBS_PER_BATCH] =
                [const { None }; JOBS_PER_BATCH];
            for (i, job) in jobs.iter_mut().take(out.len()).enumerate() {
                let at = (batch * JOBS_PER_BATCH + i) * self.slot_bytes;
                *job = Some(HashManyJob::new(
                    &params,
                    &self.buf[at..at + self.input_bytes],
                ));
            }
            blake2b_simd::many::hash_many(jobs.iter_mut().flatten());
            for (digest, job) in out.iter_mut().zip(jobs.iter().flatten()) {
                *digest = to_digest(&job.to_hash());
            }
        }
    }
}

/// Scratch space for [`leaf_hashes`] and the Merkle functions, reused across calls so that the
/// hot loops do not allocate. Leaves and inner nodes keep separate slots so that alternating
/// between them does not re-zero the buffers.
#[derive(Default)]
pub struct HashScratch {
    pub(crate) leaves: Slots,
    pub(crate) inner: Slots,
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
    let slots = &mut scratch.leaves;
    slots.prepare(out.len(), symbol_bytes + 1);
    for (i, symbol) in symbols.chunks_exact(symbol_bytes).enumerate() {
        let message = slots.message_mut(i);
        message[0] = LEAF_PREFIX;
        if symbol_bytes <= SHORT_COPY_BYTES_MAX {
            // A byte loop: for tiny symbols a `memcpy` call per leaf costs more than the copy.
            for (to, from) in message[1..].iter_mut().zip(symbol) {
                *to = *from;
            }
        } else {
            message[1..].copy_from_slice(symbol);
        }
    }
    slots.hash_into(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Digest as _};

    /// Hashes `inputs` (back to back, `input_bytes` each, no prefix added) into `out`.
    fn hash_many(inputs: &[u8], input_bytes: usize, out: &mut [Digest], slots: &mut Slots) {
        assert_eq!(
            inputs.len(),
            input_bytes * out.len(),
            "one digest per input"
        );
        slots.prepare(out.len(), input_bytes);
        for (i, input) in inputs.chunks_exact(input_bytes.max(1)).enumerate() {
            slots.message_mut(i).copy_from_slice(input);
        }
        slots.hash_into(out);
    }

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
    fn batched_hashes_match_the_blake2_crate_for_every_shape() {
        let mut slots = Slots::default();
        // Reusing one `Slots` across shapes also checks that stale bytes never leak in.
        for input_bytes in [1, 3, 65, 127, 128, 129, 255, 256, 257, 300, 65, 3] {
            for count in [1, 7, 8, 9, 16, 17, JOBS_PER_BATCH + 3, 3] {
                let inputs: Vec<u8> = (0..count * input_bytes)
                    .map(|i| (i * 31 % 251) as u8)
                    .collect();
                let mut out = vec![[0u8; 32]; count];
                hash_many(&inputs, input_bytes, &mut out, &mut slots);
                for (i, digest) in out.iter().enumerate() {
                    let input = &inputs[i * input_bytes..(i + 1) * input_bytes];
                    assert_eq!(
                        *digest,
                        reference(input),
                        "len {input_bytes} count {count} i {i}"
                    );
                }
                let mut portable = vec![[0u8; 32]; count];
                slots.hash_portable(&mut portable);
                assert_eq!(
                    portable, out,
                    "portable path, len {input_bytes} count {count}"
                );
            }
        }
    }

    #[test]
    fn leaf_hashes_prefix_each_symbol() {
        let symbols: Vec<u8> = (0..40).collect();
        let mut out = vec![[0u8; 32]; 10];
        leaf_hashes(&symbols, 4, &mut out, &mut HashScratch::default());
        for (i, digest) in out.iter().enumerate() {
            assert_eq!(*digest, leaf_hash(&symbols[i * 4..(i + 1) * 4]));
        }
    }
}
