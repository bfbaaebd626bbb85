//! The one-dimensional Reed-Solomon code under RS2: `reed-solomon-simd` over GF(2^16), exactly as
//! the format prescribes (`k` originals in order, `n - k` recovery shards from `recovery_iter`).
//!
//! The encoder and decoder keep their working space between calls (`reset`), so that the
//! thousands of small encodes of one blob do not allocate.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Most codewords packed into one call (see [`RsEncoder::encode_many`]).
pub const CODEWORDS_PER_BATCH: usize = 32;

/// Encoding packs symbols shorter than this. Why: `reed-solomon-simd` works on 64-byte chunks
/// (32 GF(2^16) elements) and pads a symbol's last chunk; packing several codewords into one
/// shard removes that padding (a 2-byte symbol is 97% padding) and the per-call overhead.
/// Measured: for a 152-byte symbol (32 MiB at n = 1000), whose padding is 21%, packing's extra
/// copies cost as much as they save, so only sub-chunk symbols are packed.
pub(crate) const ENCODE_PACK_BELOW_SYMBOL_BYTES: usize = 64;

/// Decoding packs longer symbols too. Why: every decode call first computes the erasure
/// locator over the whole field (a 65536-point transform, about a millisecond), the same for
/// every codeword that lost the same positions; packing pays it once per batch.
pub(crate) const DECODE_PACK_BELOW_SYMBOL_BYTES: usize = 4096;

/// A reusable encoder: `k` source symbols to `n` symbols.
#[derive(Default)]
pub struct RsEncoder {
    inner: Option<ReedSolomonEncoder>,
    packed: Vec<u8>,
    unpacked: Vec<u8>,
}

/// The smallest number of codeword slots, at least `count`, whose packed shard is a whole
/// number of 64-byte chunks (`slots * symbol_bytes % 64 == 0`), so that the packed shard has no
/// tail of its own. At most `CODEWORDS_PER_BATCH`, which always qualifies for even symbols.
pub(crate) fn packed_slots(count: usize, symbol_bytes: usize) -> usize {
    assert!(count <= CODEWORDS_PER_BATCH && symbol_bytes.is_multiple_of(2));
    count.next_multiple_of(slot_unit(symbol_bytes))
}

/// Codeword slots come in multiples of this for `symbol_bytes`: `32 / gcd(ss / 2, 32)`.
pub(crate) fn slot_unit(symbol_bytes: usize) -> usize {
    let half = symbol_bytes / 2;
    let mut gcd = (half, CODEWORDS_PER_BATCH);
    while gcd.1 != 0 {
        gcd = (gcd.1, gcd.0 % gcd.1);
    }
    CODEWORDS_PER_BATCH / gcd.0
}

/// Calls `copy(symbol_at, shard_at, len)` for the runs of bytes that move between one symbol of
/// `symbol_bytes` and codeword slot `slot` of a packed shard.
///
/// `reed-solomon-simd` reads a shard as GF(2^16) elements: each whole 64-byte chunk holds the
/// low bytes of 32 elements then their high bytes, and a final partial chunk of `t` bytes holds
/// `t/2` low bytes then `t/2` high bytes. The code works element by element, so interleaving
/// several codewords' elements into one wider shard (slot `s` takes packed elements
/// `s * ss/2 ..`) encodes each codeword exactly as alone. Runs of consecutive elements stay
/// consecutive on both sides except where a packed chunk ends, so a symbol moves in a handful of
/// `memcpy`s.
fn for_each_run(symbol_bytes: usize, slot: usize, mut copy: impl FnMut(usize, usize, usize)) {
    let half = symbol_bytes / 2;
    let whole_chunks = symbol_bytes / 64;
    let tail_half = (symbol_bytes % 64) / 2;
    // (first element, position of its low byte, distance to its high byte, elements)
    let chunk_runs = (0..whole_chunks).map(|j| (32 * j, 64 * j, 32, 32));
    let tail_run =
        (tail_half > 0).then_some((32 * whole_chunks, 64 * whole_chunks, tail_half, tail_half));
    for (first, low_at, high_offset, count) in chunk_runs.chain(tail_run) {
        let mut done = 0;
        while done < count {
            let element = slot * half + first + done;
            let lane = element % 32;
            let len = (count - done).min(32 - lane);
            let shard_low = 64 * (element / 32) + lane;
            copy(low_at + done, shard_low, len);
            copy(low_at + high_offset + done, shard_low + 32, len);
            done += len;
        }
    }
}

/// Position, in a packed shard, of the low byte of packed element `element` (its high byte is
/// 32 further): whole 64-byte chunks of 32 low bytes, then the 32 high bytes.
fn packed_low_at(element: usize) -> usize {
    64 * (element / 32) + element % 32
}

/// Copies one symbol into codeword slot `slot` of a packed shard.
fn pack_symbol(symbol: &[u8], slot: usize, shard: &mut [u8]) {
    if symbol.len() < 64 {
        // One partial chunk: `half` low bytes then `half` high bytes, element by element.
        let half = symbol.len() / 2;
        for e in 0..half {
            let at = packed_low_at(slot * half + e);
            shard[at] = symbol[e];
            shard[at + 32] = symbol[half + e];
        }
        return;
    }
    for_each_run(symbol.len(), slot, |from, to, len| {
        copy_run(&symbol[from..from + len], &mut shard[to..to + len])
    });
}

/// Copies a run of at most 32 bytes. Why a loop: runs are short (often one or two bytes), and
/// a `memcpy` call per run costs more than the copy.
#[inline(always)]
fn copy_run(from: &[u8], to: &mut [u8]) {
    for (to, from) in to.iter_mut().zip(from) {
        *to = *from;
    }
}

/// The inverse of [`pack_symbol`].
fn unpack_symbol(shard: &[u8], slot: usize, symbol: &mut [u8]) {
    if symbol.len() < 64 {
        let half = symbol.len() / 2;
        for e in 0..half {
            let at = packed_low_at(slot * half + e);
            symbol[e] = shard[at];
            symbol[half + e] = shard[at + 32];
        }
        return;
    }
    for_each_run(symbol.len(), slot, |to, from, len| {
        copy_run(&shard[from..from + len], &mut symbol[to..to + len])
    });
}

impl RsEncoder {
    /// Encodes `n_source` symbols taken from `source` (back to back, `symbol_bytes` each) and
    /// calls `sink(i, symbol)` for the recovery symbols `i in 0..n_total - n_source`, in order.
    pub fn encode(
        &mut self,
        n_source: usize,
        n_total: usize,
        symbol_bytes: usize,
        source: &[u8],
        mut sink: impl FnMut(usize, &[u8]),
    ) {
        assert_eq!(source.len(), n_source * symbol_bytes, "k source symbols");
        let n_recovery = n_total - n_source;
        // INV: n_source, n_recovery and the even symbol size come from a checked EncodingConfig
        // and BlobLayout, which reed-solomon-simd supports for every n floe accepts.
        let encoder = match &mut self.inner {
            Some(encoder) => {
                encoder
                    .reset(n_source, n_recovery, symbol_bytes)
                    .expect("parameters checked by EncodingConfig");
                encoder
            }
            slot @ None => slot.insert(
                ReedSolomonEncoder::new(n_source, n_recovery, symbol_bytes)
                    .expect("parameters checked by EncodingConfig"),
            ),
        };
        for symbol in source.chunks_exact(symbol_bytes) {
            encoder
                .add_original_shard(symbol)
                .expect("exactly k shards of the configured size");
        }
        let result = encoder.encode().expect("all k shards were added");
        for (i, symbol) in result.recovery_iter().enumerate() {
            sink(i, symbol);
        }
    }
}

impl RsEncoder {
    /// Encodes several codewords of the same shape and calls `sink(codeword, i, symbol)` for
    /// each recovery symbol. Up to `CODEWORDS_PER_BATCH` codewords of short symbols share one
    /// encode, packed element by element (see `for_each_run`).
    pub fn encode_many(
        &mut self,
        n_source: usize,
        n_total: usize,
        symbol_bytes: usize,
        sources: &[&[u8]],
        mut sink: impl FnMut(usize, usize, &[u8]),
    ) {
        assert!(sources.len() <= CODEWORDS_PER_BATCH);
        if symbol_bytes >= ENCODE_PACK_BELOW_SYMBOL_BYTES || sources.len() == 1 {
            for (codeword, source) in sources.iter().enumerate() {
                self.encode(n_source, n_total, symbol_bytes, source, |i, symbol| {
                    sink(codeword, i, symbol)
                });
            }
            return;
        }
        let shard_bytes = packed_slots(sources.len(), symbol_bytes) * symbol_bytes;
        let mut packed = std::mem::take(&mut self.packed);
        packed.resize(n_source * shard_bytes, 0);
        for (codeword, source) in sources.iter().enumerate() {
            assert_eq!(source.len(), n_source * symbol_bytes);
            for (shard, symbol) in packed
                .chunks_exact_mut(shard_bytes)
                .zip(source.chunks_exact(symbol_bytes))
            {
                pack_symbol(symbol, codeword, shard);
            }
        }
        let mut unpacked = std::mem::take(&mut self.unpacked);
        unpacked.resize(symbol_bytes, 0);
        self.encode(n_source, n_total, shard_bytes, &packed, |i, shard| {
            for codeword in 0..sources.len() {
                unpack_symbol(shard, codeword, &mut unpacked);
                sink(codeword, i, &unpacked);
            }
        });
        self.packed = packed;
        self.unpacked = unpacked;
    }
}

/// A reusable decoder: any `k` of `n` symbols back to the `k` source symbols.
#[derive(Default)]
pub struct RsDecoder {
    inner: Option<ReedSolomonDecoder>,
    packed: Vec<u8>,
    restored: Vec<u8>,
}

impl RsDecoder {
    /// Decodes from exactly `n_source` distinct `(index, symbol)` pairs (`index < n_total`) and
    /// writes the source symbols back to back into `out` (`n_source * symbol_bytes` bytes).
    pub fn decode<'a>(
        &mut self,
        n_source: usize,
        n_total: usize,
        symbol_bytes: usize,
        symbols: impl IntoIterator<Item = (usize, &'a [u8])>,
        out: &mut [u8],
    ) {
        assert_eq!(out.len(), n_source * symbol_bytes);
        let n_recovery = n_total - n_source;
        let decoder = match &mut self.inner {
            Some(decoder) => {
                decoder
                    .reset(n_source, n_recovery, symbol_bytes)
                    .expect("parameters checked by EncodingConfig");
                decoder
            }
            slot @ None => slot.insert(
                ReedSolomonDecoder::new(n_source, n_recovery, symbol_bytes)
                    .expect("parameters checked by EncodingConfig"),
            ),
        };
        let mut present = 0usize;
        for (index, symbol) in symbols {
            assert!(index < n_total, "symbol index within the code");
            if index < n_source {
                out[index * symbol_bytes..(index + 1) * symbol_bytes].copy_from_slice(symbol);
                decoder
                    .add_original_shard(index, symbol)
                    .expect("distinct indices of the configured size");
            } else {
                decoder
                    .add_recovery_shard(index - n_source, symbol)
                    .expect("distinct indices of the configured size");
            }
            present += 1;
        }
        assert_eq!(present, n_source, "exactly k symbols given");
        let result = decoder.decode().expect("k distinct symbols suffice");
        for (index, symbol) in result.restored_original_iter() {
            out[index * symbol_bytes..(index + 1) * symbol_bytes].copy_from_slice(symbol);
        }
    }

    /// Decodes several codewords that lost the same positions: `present` lists the `n_source`
    /// positions held, `symbol(codeword, i)` gives codeword `codeword`'s symbol at `present[i]`,
    /// and `outs[codeword]` receives its source symbols. Short symbols share one decode, packed
    /// as in [`RsEncoder::encode_many`].
    pub fn decode_many<'a>(
        &mut self,
        n_source: usize,
        n_total: usize,
        symbol_bytes: usize,
        present: &[usize],
        symbol: impl Fn(usize, usize) -> &'a [u8],
        outs: &mut [&mut [u8]],
    ) {
        assert!(outs.len() <= CODEWORDS_PER_BATCH);
        if symbol_bytes >= DECODE_PACK_BELOW_SYMBOL_BYTES || outs.len() == 1 {
            for (codeword, out) in outs.iter_mut().enumerate() {
                let symbols = present
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| (p, symbol(codeword, i)));
                self.decode(n_source, n_total, symbol_bytes, symbols, out);
            }
            return;
        }
        let shard_bytes = packed_slots(outs.len(), symbol_bytes) * symbol_bytes;
        let mut packed = std::mem::take(&mut self.packed);
        packed.resize(present.len() * shard_bytes, 0);
        for (i, shard) in packed.chunks_exact_mut(shard_bytes).enumerate() {
            for codeword in 0..outs.len() {
                pack_symbol(symbol(codeword, i), codeword, shard);
            }
        }
        let mut restored = std::mem::take(&mut self.restored);
        restored.resize(n_source * shard_bytes, 0);
        let shards = present
            .iter()
            .copied()
            .zip(packed.chunks_exact(shard_bytes));
        self.decode(n_source, n_total, shard_bytes, shards, &mut restored);
        for (shard, position) in restored.chunks_exact(shard_bytes).zip(0..n_source) {
            for (codeword, out) in outs.iter_mut().enumerate() {
                let at = position * symbol_bytes;
                unpack_symbol(shard, codeword, &mut out[at..at + symbol_bytes]);
            }
        }
        self.packed = packed;
        self.restored = restored;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_encoding_equals_one_codeword_at_a_time() {
        for symbol_bytes in [2, 4, 6, 30, 62, 64, 66, 128, 152, 510, 1000] {
            for n_codewords in [1, 2, 5, 8, 32] {
                let (k, n) = (5, 13);
                let sources: Vec<Vec<u8>> = (0..n_codewords)
                    .map(|c| {
                        (0..k * symbol_bytes)
                            .map(|i| (i * 13 + c * 7 + 1) as u8)
                            .collect()
                    })
                    .collect();
                let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
                let mut batched = vec![vec![Vec::new(); n - k]; n_codewords];
                RsEncoder::default().encode_many(k, n, symbol_bytes, &refs, |c, i, s| {
                    batched[c][i] = s.to_vec()
                });
                for (c, source) in sources.iter().enumerate() {
                    let mut single = vec![Vec::new(); n - k];
                    RsEncoder::default()
                        .encode(k, n, symbol_bytes, source, |i, s| single[i] = s.to_vec());
                    assert_eq!(
                        batched[c], single,
                        "ss {symbol_bytes} codewords {n_codewords} c {c}"
                    );
                }
            }
        }
    }
}
