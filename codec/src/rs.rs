//! The one-dimensional Reed-Solomon code under RS2: `reed-solomon-simd` over GF(2^16), exactly as
//! the format prescribes (`k` originals in order, `n - k` recovery shards from `recovery_iter`).
//!
//! The encoder and decoder keep their working space between calls (`reset`), so that the
//! thousands of small encodes of one blob do not allocate.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// A reusable encoder: `k` source symbols to `n` symbols.
#[derive(Default)]
pub struct RsEncoder {
    inner: Option<ReedSolomonEncoder>,
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

/// A reusable decoder: any `k` of `n` symbols back to the `k` source symbols.
#[derive(Default)]
pub struct RsDecoder {
    inner: Option<ReedSolomonDecoder>,
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
}
