//! BLAKE2b-256 of eight equally long messages at once, one message per 64-bit lane of an
//! AVX-512 register.
//!
//! Why a kernel of our own: the Merkle trees of RS2 hash millions of short inputs (a 1-byte blob
//! at n = 1000 is three million single-block hashes), so the cost is the compression function
//! itself. `blake2b_simd`'s multi-buffer path uses four AVX2 lanes and emulates 64-bit rotations
//! with shuffles; AVX-512 has eight lanes and a native rotate (`vprorq`). Machines without
//! AVX-512 use `blake2b_simd` (see `hash.rs`); the tests compare both with the `blake2` crate.
//!
//! Messages sit in *slots*: message `i` is at `slots[i * slot_bytes..][..input_bytes]` and the
//! slot is zero from `input_bytes` up to the next multiple of 128, so every block, the last one
//! included, can be loaded straight from the slot.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::hash::{Digest, DIGEST_BYTES};

/// Bytes of a BLAKE2b block.
pub const BLOCK_BYTES: usize = 128;
/// Lanes per call.
pub const LANES: usize = 8;

const IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// The message schedule; the rounds in `hash8` spell these rows out literally.
#[cfg(test)]
const SIGMA: [[usize; 16]; 12] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
];

/// Is the kernel usable on this CPU?
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

#[inline(always)]
unsafe fn g(v: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize, x: __m512i, y: __m512i) {
    // SAFETY (whole body): only register arithmetic; callers are `avx512f` functions.
    unsafe {
        v[a] = _mm512_add_epi64(_mm512_add_epi64(v[a], v[b]), x);
        v[d] = _mm512_ror_epi64::<32>(_mm512_xor_si512(v[d], v[a]));
        v[c] = _mm512_add_epi64(v[c], v[d]);
        v[b] = _mm512_ror_epi64::<24>(_mm512_xor_si512(v[b], v[c]));
        v[a] = _mm512_add_epi64(_mm512_add_epi64(v[a], v[b]), y);
        v[d] = _mm512_ror_epi64::<16>(_mm512_xor_si512(v[d], v[a]));
        v[c] = _mm512_add_epi64(v[c], v[d]);
        v[b] = _mm512_ror_epi64::<63>(_mm512_xor_si512(v[b], v[c]));
    }
}

/// Hashes the eight messages whose slots start at byte offsets `lane_offsets` of `slots`.
///
/// # Safety
/// The CPU supports AVX-512F ([`available`]); every `lane_offsets[l] + blocks * 128 <=
/// slots.len()` where `blocks = max(1, ceil(input_bytes / 128))`, and the slot bytes past
/// `input_bytes` in the last block are zero.
#[target_feature(enable = "avx512f")]
pub unsafe fn hash8(
    slots: &[u8],
    lane_offsets: [usize; LANES],
    input_bytes: usize,
    out: &mut [Digest; LANES],
) {
    let blocks = input_bytes.div_ceil(BLOCK_BYTES).max(1);
    for offset in lane_offsets {
        assert!(
            offset + blocks * BLOCK_BYTES <= slots.len(),
            "slot within the buffer"
        );
    }
    let offsets = _mm512_set_epi64(
        lane_offsets[7] as i64,
        lane_offsets[6] as i64,
        lane_offsets[5] as i64,
        lane_offsets[4] as i64,
        lane_offsets[3] as i64,
        lane_offsets[2] as i64,
        lane_offsets[1] as i64,
        lane_offsets[0] as i64,
    );
    // h = IV, with the parameter block for an unkeyed 32-byte digest folded into h[0].
    let mut h: [__m512i; 8] = [_mm512_setzero_si512(); 8];
    for (i, lane) in h.iter_mut().enumerate() {
        let param = if i == 0 {
            0x0101_0000 | DIGEST_BYTES as u64
        } else {
            0
        };
        *lane = _mm512_set1_epi64((IV[i] ^ param) as i64);
    }
    let base = slots.as_ptr();
    for block in 0..blocks {
        let last = block + 1 == blocks;
        let mut m: [__m512i; 16] = [_mm512_setzero_si512(); 16];
        for (word, lane) in m.iter_mut().enumerate() {
            let at = _mm512_add_epi64(
                offsets,
                _mm512_set1_epi64((block * BLOCK_BYTES + word * 8) as i64),
            );
            // SAFETY: every lane reads 8 bytes inside its slot's block `block`, which the
            // assertion above keeps within `slots`.
            *lane = unsafe { _mm512_i64gather_epi64::<1>(at, base as *const i64) };
        }
        let counter = if last {
            input_bytes
        } else {
            (block + 1) * BLOCK_BYTES
        } as u64;
        let mut v: [__m512i; 16] = [_mm512_setzero_si512(); 16];
        v[..8].copy_from_slice(&h);
        for i in 0..8 {
            v[8 + i] = _mm512_set1_epi64(IV[i] as i64);
        }
        v[12] = _mm512_xor_si512(v[12], _mm512_set1_epi64(counter as i64));
        if last {
            v[14] = _mm512_xor_si512(v[14], _mm512_set1_epi64(-1));
        }
        // The twelve rounds fully unrolled with literal message indices (SIGMA), so that the
        // message words are plain register or stack operands: no index loads or address
        // arithmetic competing with the vector ports.
        macro_rules! round {
            ($($s:literal),*) => {{
                let s = [$($s),*];
                // SAFETY: register arithmetic under this function's target feature.
                unsafe {
                    g(&mut v, 0, 4, 8, 12, m[s[0]], m[s[1]]);
                    g(&mut v, 1, 5, 9, 13, m[s[2]], m[s[3]]);
                    g(&mut v, 2, 6, 10, 14, m[s[4]], m[s[5]]);
                    g(&mut v, 3, 7, 11, 15, m[s[6]], m[s[7]]);
                    g(&mut v, 0, 5, 10, 15, m[s[8]], m[s[9]]);
                    g(&mut v, 1, 6, 11, 12, m[s[10]], m[s[11]]);
                    g(&mut v, 2, 7, 8, 13, m[s[12]], m[s[13]]);
                    g(&mut v, 3, 4, 9, 14, m[s[14]], m[s[15]]);
                }
            }};
        }
        round!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        round!(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);
        round!(11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4);
        round!(7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8);
        round!(9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13);
        round!(2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9);
        round!(12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11);
        round!(13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10);
        round!(6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5);
        round!(10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0);
        round!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        round!(14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3);
        for i in 0..8 {
            h[i] = _mm512_xor_si512(h[i], _mm512_xor_si512(v[i], v[i + 8]));
        }
    }
    let mut words = [[0u64; LANES]; 4];
    for (i, row) in words.iter_mut().enumerate() {
        // SAFETY: `row` is 64 writable bytes; the unaligned store has no alignment need.
        unsafe { _mm512_storeu_si512(row.as_mut_ptr() as *mut __m512i, h[i]) };
    }
    for (lane, digest) in out.iter_mut().enumerate() {
        for (i, row) in words.iter().enumerate() {
            digest[i * 8..(i + 1) * 8].copy_from_slice(&row[lane].to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SIGMA;

    #[test]
    fn unrolled_rounds_spell_out_sigma() {
        let source = include_str!("blake2b_x8.rs");
        let rounds: Vec<Vec<usize>> = source
            .lines()
            .filter_map(|line| line.trim().strip_prefix("round!(")?.strip_suffix(");"))
            .map(|args| args.split(", ").map(|a| a.parse().unwrap()).collect())
            .collect();
        let expected: Vec<Vec<usize>> = SIGMA.iter().map(|row| row.to_vec()).collect();
        assert_eq!(rounds, expected);
    }
}
