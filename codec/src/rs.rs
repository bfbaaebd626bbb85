//! The one-dimensional Reed-Solomon code under RS2: `reed-solomon-simd` over GF(2^16), exactly as
//! the format prescribes (`k` originals in order, `n - k` recovery shards from `recovery_iter`).
//!
//! The encoder and decoder keep their working space between calls (`reset`), so that the
//! thousands of small encodes of one blob do not allocate.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Codewords that [`RsEncoder::encode_many`] packs into one call when symbols are small.
pub const CODEWORDS_PER_BATCH: usize = 32;

/// Symbols at least this long are encoded one codeword per call. Why: `reed-solomon-simd` works
/// on 64-byte chunks (32 GF(2^16) elements); a shorter symbol would leave most of every chunk as
/// padding, which packing removes.
pub(crate) const PACK_BELOW_SYMBOL_BYTES: usize = 64;

/// Decoding packs longer symbols too. Why: every decode call first computes the erasure
/// locator over the whole field (a 65536-point transform, about a millisecond), the same for
/// every codeword that lost the same positions; packing pays it once per batch. Above this size
/// the per-call data work dominates and packing's byte shuffling would cost more than it saves.
pub(crate) const DECODE_PACK_BELOW_SYMBOL_BYTES: usize = 512;

/// A reusable encoder: `k` source symbols to `n` symbols.
#[derive(Default)]
pub struct RsEncoder {
    inner: Option<ReedSolomonEncoder>,
    packed: Vec<u8>,
    unpacked: Vec<u8>,
}

/// Position, in a packed shard, of the low byte of element `element` (the high byte is 32
/// further). This is `reed-solomon-simd`'s layout of whole 64-byte chunks: 32 low bytes, then
/// the 32 high bytes of the same elements.
fn packed_low_at(element: usize) -> usize {
    64 * (element / 32) + element % 32
}

/// Byte positions (low, high) of GF(2^16) element `element` within one symbol of
/// `symbol_bytes`, in `reed-solomon-simd`'s layout: whole 64-byte chunks hold 32 low bytes then
/// the 32 high bytes; a final partial chunk of `t` bytes holds `t/2` low bytes then `t/2` high.
fn element_at(element: usize, symbol_bytes: usize) -> (usize, usize) {
    let whole = symbol_bytes / 64 * 32;
    if element < whole {
        let at = 64 * (element / 32) + element % 32;
        (at, at + 32)
    } else {
        let tail_half = (symbol_bytes % 64) / 2;
        let at = 64 * (whole / 32) + (element - whole);
        (at, at + tail_half)
    }
}

/// Copies one symbol's elements into codeword slot `slot` of a packed shard.
fn pack_symbol(symbol: &[u8], slot: usize, shard: &mut [u8]) {
    let half = symbol.len() / 2;
    for e in 0..half {
        let (lo, hi) = element_at(e, symbol.len());
        let at = packed_low_at(slot * half + e);
        shard[at] = symbol[lo];
        shard[at + 32] = symbol[hi];
    }
}

/// The inverse of [`pack_symbol`].
fn unpack_symbol(shard: &[u8], slot: usize, symbol: &mut [u8]) {
    let half = symbol.len() / 2;
    for e in 0..half {
        let (lo, hi) = element_at(e, symbol.len());
        let at = packed_low_at(slot * half + e);
        symbol[lo] = shard[at];
        symbol[hi] = shard[at + 32];
    }
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
    /// each recovery symbol. Short symbols of up to [`CODEWORDS_PER_BATCH`] codewords share one
    /// encode: the code works element by element, so interleaving the codewords' GF(2^16)
    /// elements into one wider shard gives each codeword exactly its own recovery symbols.
    pub fn encode_many(
        &mut self,
        n_source: usize,
        n_total: usize,
        symbol_bytes: usize,
        sources: &[&[u8]],
        mut sink: impl FnMut(usize, usize, &[u8]),
    ) {
        assert!(sources.len() <= CODEWORDS_PER_BATCH);
        if symbol_bytes >= PACK_BELOW_SYMBOL_BYTES || sources.len() == 1 {
            for (codeword, source) in sources.iter().enumerate() {
                self.encode(n_source, n_total, symbol_bytes, source, |i, symbol| {
                    sink(codeword, i, symbol)
                });
            }
            return;
        }
        // INV: symbol_bytes is even, so CODEWORDS_PER_BATCH * symbol_bytes is a whole number of
        // 64-byte chunks and the packed shard has no tail of its own.
        let shard_bytes = CODEWORDS_PER_BATCH * symbol_bytes;
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
        let shard_bytes = CODEWORDS_PER_BATCH * symbol_bytes;
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
        for symbol_bytes in [2, 4, 6, 30, 62, 64, 66, 128, 152, 510] {
            for n_codewords in [1, 2, 5, 32] {
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
