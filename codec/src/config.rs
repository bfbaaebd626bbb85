//! Encoding parameters derived from the number of shards `n`, and from the blob length.

use crate::error::ConfigError;

/// Smallest committee the RS2 code supports: `f = 1` needs `n >= 4`.
pub const N_SHARDS_MIN: u16 = 4;
/// Largest `n` floe accepts. Why: the metadata is `n * 64` bytes and the Merkle work is `n^2`
/// leaf hashes per blob; 4096 keeps both bounded (256 KiB, 16 M hashes) while leaving ample room
/// above Walrus's 1000.
pub const N_SHARDS_MAX: u16 = 4096;
/// Walrus's shard count, and floe's default: the same bytes get the same blob ID as on Walrus.
pub const N_SHARDS_DEFAULT: u16 = 1000;
/// Largest symbol size the format allows (bytes); symbols are always even-sized for the
/// GF(2^16) Reed-Solomon code.
pub const SYMBOL_BYTES_MAX: usize = 65534;

/// The shape of the code for one committee size `n`.
///
/// Invariant: `n = k_p + 2f = k_s + f`, `f = (n - 1) / 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EncodingConfig {
    n_shards: u16,
}

impl EncodingConfig {
    /// Builds the configuration for `n_shards`, refusing sizes outside
    /// [`N_SHARDS_MIN`]..=[`N_SHARDS_MAX`].
    pub fn new(n_shards: u16) -> Result<Self, ConfigError> {
        if !(N_SHARDS_MIN..=N_SHARDS_MAX).contains(&n_shards) {
            return Err(ConfigError::ShardCount {
                n_shards: n_shards.into(),
            });
        }
        Ok(Self { n_shards })
    }

    /// Like [`EncodingConfig::new`] but for a count read from untrusted input of any width.
    pub fn from_count(n_shards: u64) -> Result<Self, ConfigError> {
        let n = u16::try_from(n_shards).map_err(|_| ConfigError::ShardCount { n_shards })?;
        Self::new(n)
    }

    /// Number of shards (and of sliver pairs) `n`.
    pub fn n_shards(&self) -> usize {
        self.n_shards.into()
    }

    /// Faults tolerated, `f = floor((n - 1) / 3)`.
    pub fn n_faults(&self) -> usize {
        (self.n_shards() - 1) / 3
    }

    /// `k_p = n - 2f`: source symbols per column, i.e. the number of source rows.
    pub fn n_primary_source(&self) -> usize {
        self.n_shards() - 2 * self.n_faults()
    }

    /// `k_s = n - f`: source symbols per row, i.e. the number of source columns.
    pub fn n_secondary_source(&self) -> usize {
        self.n_shards() - self.n_faults()
    }

    /// Source symbols in the blob matrix, `k_p * k_s`.
    pub fn n_source_symbols(&self) -> usize {
        self.n_primary_source() * self.n_secondary_source()
    }

    /// Largest blob this `n` can encode: `k_p * k_s * 65534` bytes.
    pub fn blob_bytes_max(&self) -> u64 {
        self.n_source_symbols() as u64 * SYMBOL_BYTES_MAX as u64
    }

    /// The layout (symbol size, sliver sizes) for a blob of `blob_bytes` bytes.
    pub fn layout(&self, blob_bytes: u64) -> Result<BlobLayout, ConfigError> {
        let max = self.blob_bytes_max();
        if blob_bytes > max {
            return Err(ConfigError::BlobTooLarge {
                blob_bytes,
                blob_bytes_max: max,
                n_shards: self.n_shards(),
            });
        }
        let per_symbol = blob_bytes.max(1).div_ceil(self.n_source_symbols() as u64);
        let symbol_bytes = per_symbol.next_multiple_of(2) as usize;
        assert!(
            symbol_bytes <= SYMBOL_BYTES_MAX,
            "checked against blob_bytes_max above"
        );
        Ok(BlobLayout {
            config: *self,
            blob_bytes,
            symbol_bytes,
        })
    }
}

/// How one blob of a given length maps onto the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLayout {
    /// The code.
    pub config: EncodingConfig,
    /// Unencoded length of the blob.
    pub blob_bytes: u64,
    /// Symbol size `ss`: even, at least 2, at most [`SYMBOL_BYTES_MAX`].
    pub symbol_bytes: usize,
}

impl BlobLayout {
    /// Bytes of one primary sliver: `k_s` symbols.
    pub fn primary_sliver_bytes(&self) -> usize {
        self.config.n_secondary_source() * self.symbol_bytes
    }

    /// Bytes of one secondary sliver: `k_p` symbols.
    pub fn secondary_sliver_bytes(&self) -> usize {
        self.config.n_primary_source() * self.symbol_bytes
    }

    /// Bytes of the zero-padded source matrix, `k_p * k_s * ss`.
    pub fn padded_blob_bytes(&self) -> usize {
        self.config.n_source_symbols() * self.symbol_bytes
    }

    /// Encoded bytes one shard stores for this blob: one primary and one secondary sliver.
    pub fn encoded_bytes_per_shard(&self) -> u64 {
        (self.primary_sliver_bytes() + self.secondary_sliver_bytes()) as u64
    }

    /// Encoded bytes over all shards (slivers only; the metadata is [`Self::metadata_bytes`]).
    pub fn encoded_bytes_total(&self) -> u64 {
        self.encoded_bytes_per_shard() * self.config.n_shards() as u64
    }

    /// Bytes of the metadata's hashes: `n * 64`.
    pub fn metadata_bytes(&self) -> u64 {
        self.config.n_shards() as u64 * 64
    }

    /// Bytes of the blob carried by systematic primary sliver `row_index` (< k_p); the last
    /// rows may carry fewer than a full sliver, or none, the rest being padding.
    pub fn blob_bytes_in_row(&self, row_index: usize) -> usize {
        let start = (row_index * self.primary_sliver_bytes()) as u64;
        (self.blob_bytes.saturating_sub(start)).min(self.primary_sliver_bytes() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_match_the_spec_examples() {
        for (n, k_p, k_s) in [
            (4, 2, 3),
            (7, 3, 5),
            (10, 4, 7),
            (100, 34, 67),
            (1000, 334, 667),
        ] {
            let config = EncodingConfig::new(n).unwrap();
            assert_eq!(config.n_primary_source(), k_p, "n = {n}");
            assert_eq!(config.n_secondary_source(), k_s, "n = {n}");
        }
    }

    #[test]
    fn max_blob_sizes_match_the_spec() {
        let max = |n| EncodingConfig::new(n).unwrap().blob_bytes_max();
        assert_eq!(max(10), 1_834_952);
        assert_eq!(max(100), 149_286_452);
        assert_eq!(max(1000), 14_599_533_452);
    }

    #[test]
    fn one_gib_at_n_1000_has_the_spec_sizes() {
        let layout = EncodingConfig::new(1000).unwrap().layout(1 << 30).unwrap();
        assert_eq!(layout.symbol_bytes, 4820);
        assert_eq!(layout.primary_sliver_bytes(), 3_214_940);
        assert_eq!(layout.secondary_sliver_bytes(), 1_609_880);
    }

    #[test]
    fn symbol_size_is_even_and_at_least_two() {
        let config = EncodingConfig::new(10).unwrap();
        assert_eq!(config.layout(0).unwrap().symbol_bytes, 2);
        assert_eq!(config.layout(33).unwrap().symbol_bytes, 2);
        assert_eq!(config.layout(29).unwrap().symbol_bytes, 2);
        assert_eq!(config.layout(57).unwrap().symbol_bytes, 4);
    }

    #[test]
    fn out_of_range_inputs_are_refused_with_the_limit() {
        assert!(EncodingConfig::new(3).is_err());
        assert!(EncodingConfig::new(N_SHARDS_MAX + 1).is_err());
        assert!(EncodingConfig::from_count(1 << 40).is_err());
        let config = EncodingConfig::new(10).unwrap();
        let err = config.layout(1_834_953).unwrap_err().to_string();
        assert!(err.contains("1834952"), "{err}");
        assert!(config.layout(1_834_952).is_ok());
    }
}
