//! Blob IDs and blob metadata: the hashes that commit to every sliver.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::config::{BlobLayout, EncodingConfig};
use crate::error::{BlobIdParseError, MetadataError};
use crate::hash::{hash_parts, Digest, HashScratch, LEAF_PREFIX};
use crate::merkle::root_in_place;

/// Encoding type byte of RS2 in the blob ID and the metadata.
pub const ENCODING_TYPE_RS2: u8 = 0x01;

/// Length of a blob ID's text form: 32 bytes of base64 without padding.
pub const BLOB_ID_TEXT_BYTES: usize = 43;

/// The 32-byte identity of a blob: `H(0x01 || u64_le(length) || root)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The blob ID read as a big-endian 256-bit integer, modulo `n`: the rotation from sliver
    /// pairs to shards.
    pub fn rotation(&self, n_shards: usize) -> usize {
        let n = n_shards as u64;
        self.0
            .iter()
            .fold(0u64, |acc, byte| (acc * 256 + u64::from(*byte)) % n) as usize
    }

    /// The shard that stores sliver pair `pair_index` of this blob.
    pub fn shard_for_pair(&self, pair_index: usize, n_shards: usize) -> usize {
        assert!(pair_index < n_shards);
        (pair_index + self.rotation(n_shards)) % n_shards
    }

    /// The sliver pair that shard `shard_index` stores for this blob.
    pub fn pair_for_shard(&self, shard_index: usize, n_shards: usize) -> usize {
        assert!(shard_index < n_shards);
        (shard_index + n_shards - self.rotation(n_shards)) % n_shards
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl FromStr for BlobId {
    type Err = BlobIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BlobIdParseError {
            input: s.chars().take(64).collect(),
        };
        if s.len() != BLOB_ID_TEXT_BYTES {
            return Err(err());
        }
        let mut bytes = [0u8; 32];
        let written = URL_SAFE_NO_PAD
            .decode_slice(s, &mut bytes)
            .map_err(|_| err())?;
        if written != 32 {
            return Err(err());
        }
        Ok(Self(bytes))
    }
}

/// The two hashes of one sliver pair `p`: the Merkle root of expanded row `p` (primary sliver
/// `p`) and of expanded column `n - 1 - p` (secondary sliver `n - 1 - p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliverPairHashes {
    pub primary: Digest,
    pub secondary: Digest,
}

/// The metadata of a blob: encoding type RS2, unencoded length and one hash pair per sliver pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMetadata {
    blob_bytes: u64,
    pair_hashes: Vec<SliverPairHashes>,
}

impl BlobMetadata {
    /// Wraps already computed hashes; nothing is checked yet (see [`Self::verify`]).
    pub fn new(blob_bytes: u64, pair_hashes: Vec<SliverPairHashes>) -> Self {
        Self {
            blob_bytes,
            pair_hashes,
        }
    }

    /// Unencoded length of the blob.
    pub fn blob_bytes(&self) -> u64 {
        self.blob_bytes
    }

    /// One hash pair per sliver pair, indexed by pair.
    pub fn pair_hashes(&self) -> &[SliverPairHashes] {
        &self.pair_hashes
    }

    /// Number of sliver pairs, which is the committee's `n`.
    pub fn n_shards(&self) -> usize {
        self.pair_hashes.len()
    }

    /// The code and layout this metadata describes.
    pub fn layout(&self) -> Result<BlobLayout, MetadataError> {
        let config = EncodingConfig::from_count(self.pair_hashes.len() as u64)?;
        Ok(config.layout(self.blob_bytes)?)
    }

    /// Hash of primary sliver `index` (row `index`).
    pub fn primary_hash(&self, sliver_index: usize) -> &Digest {
        &self.pair_hashes[sliver_index].primary
    }

    /// Hash of secondary sliver `index` (column `index`), kept in pair `n - 1 - index`.
    pub fn secondary_hash(&self, sliver_index: usize) -> &Digest {
        &self.pair_hashes[self.n_shards() - 1 - sliver_index].secondary
    }

    /// Recomputes the blob ID from the hashes.
    pub fn compute_blob_id(&self) -> BlobId {
        // Leaf p = H(0x00 || primary_hash[p] || secondary_hash[p]); batched like every leaf.
        const LEAF_INPUT_BYTES: usize = 1 + 64;
        let mut scratch = HashScratch::default();
        scratch
            .leaves
            .prepare(self.pair_hashes.len(), LEAF_INPUT_BYTES);
        for (i, pair) in self.pair_hashes.iter().enumerate() {
            let message = scratch.leaves.message_mut(i);
            message[0] = LEAF_PREFIX;
            message[1..33].copy_from_slice(&pair.primary);
            message[33..].copy_from_slice(&pair.secondary);
        }
        let mut level = vec![[0u8; 32]; self.pair_hashes.len()];
        scratch.leaves.hash_into(&mut level);
        let root = root_in_place(&mut level, &mut scratch);
        blob_id_from_root(self.blob_bytes, &root)
    }

    /// Checks that this is the metadata of `blob_id` for a committee of `n_shards`: the right
    /// number of hash pairs, a length the code allows, and the ID recomputes.
    pub fn verify(&self, blob_id: &BlobId, n_shards: usize) -> Result<(), MetadataError> {
        if self.pair_hashes.len() != n_shards {
            return Err(MetadataError::ShardCountMismatch {
                expected: n_shards,
                got: self.pair_hashes.len(),
            });
        }
        self.layout()?;
        let computed = self.compute_blob_id();
        if computed != *blob_id {
            return Err(MetadataError::BlobIdMismatch {
                expected: blob_id.to_string(),
                computed: computed.to_string(),
            });
        }
        Ok(())
    }
}

/// `H(encoding_type || u64_le(length) || root)`.
pub fn blob_id_from_root(blob_bytes: u64, root: &Digest) -> BlobId {
    BlobId(hash_parts(&[
        &[ENCODING_TYPE_RS2],
        &blob_bytes.to_le_bytes(),
        root,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_id_text_round_trips_and_rejects_garbage() {
        let id = BlobId([0xfb; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), BLOB_ID_TEXT_BYTES);
        assert!(
            text.contains('-') || text.contains('_'),
            "URL-safe alphabet: {text}"
        );
        assert_eq!(text.parse::<BlobId>().unwrap(), id);
        for bad in [
            "",
            "abc",
            &format!("{text}A"),
            &text.replace('-', "+"),
            &"=".repeat(43),
        ] {
            assert!(bad.parse::<BlobId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pair_to_shard_rotation_inverts() {
        let id = BlobId([0x5a; 32]);
        for n in [4, 10, 1000] {
            for pair in 0..n {
                let shard = id.shard_for_pair(pair, n);
                assert_eq!(id.pair_for_shard(shard, n), pair);
            }
        }
        // A big-endian 256-bit integer mod n, checked by hand for a small case: 0x01 followed
        // by 31 zero bytes is 2^248, and 2^248 mod 10 = 6.
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        assert_eq!(BlobId(bytes).rotation(10), 6);
    }
}
