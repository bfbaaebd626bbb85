//! The RS2 ("RedStuff") codec of floe, byte-compatible with Walrus.
//!
//! A blob is laid out as a `k_p x k_s` matrix of symbols, extended with a Reed-Solomon code
//! along rows and columns to `n x n`; row `i` (first `k_s` symbols) is primary sliver `i`,
//! column `j` (first `k_p` symbols) is secondary sliver `j`. Every expanded row and column has a
//! Merkle root; the `n` pairs of roots are the metadata, and the blob ID commits to them and
//! the length. Any `k_p` primary (or `k_s` secondary) slivers decode the blob; one lost sliver
//! is rebuilt from one symbol of each of `k_s` (or `k_p`) other slivers.
//!
//! This crate is pure: no files, sockets, clocks or async, and deterministic output. It uses
//! the current rayon pool for parallelism.
//!
//! ```
//! use floe_codec::{decode_primary, encode, EncodingConfig};
//!
//! let config = EncodingConfig::new(10)?;
//! let blob = b"walrus blob id v1 regression test";
//! let encoded = encode(&config, blob)?;
//! assert_eq!(encoded.blob_id().to_string(), "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY");
//!
//! // Any k_p = 4 primary slivers give the blob back, verified against the metadata.
//! let slivers: Vec<_> = [9, 2, 6, 5].iter().map(|&i| (i, encoded.primary_sliver(i))).collect();
//! let decoded = decode_primary(encoded.metadata(), &slivers)?;
//! assert_eq!(decoded, blob);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bcs;
mod blake2b_x8;
mod config;
mod decode;
mod encode;
mod error;
pub mod hash;
pub mod merkle;
mod metadata;
mod range;
mod recovery;
mod rs;
mod sliver;
mod strips;
mod util;

pub use bcs::{
    decode_metadata, decode_recovery_symbols, decode_sliver, decode_sliver_batch, encode_metadata,
    encode_recovery_symbols, encode_sliver, encode_sliver_batch, metadata_bcs_bytes_max,
    recovery_symbol_bytes_max, sliver_batch_bytes_max, sliver_bcs_bytes_max, sliver_header,
    uleb128_len, BatchEntry, SliverHeader, METADATA_VERSION_V1,
};
pub use config::{
    BlobLayout, EncodingConfig, N_SHARDS_DEFAULT, N_SHARDS_MAX, N_SHARDS_MIN, SYMBOL_BYTES_MAX,
};
pub use decode::{decode_primary, decode_primary_verified, decode_secondary, verify_blob};
pub use encode::{compute_metadata, encode, encode_owned, EncodedBlob, Encoder};
pub use error::{
    BcsError, BlobIdParseError, ConfigError, DecodeError, MetadataError, RangeError, RecoveryError,
    SliverError,
};
pub use metadata::{BlobId, BlobMetadata, SliverPairHashes, BLOB_ID_TEXT_BYTES, ENCODING_TYPE_RS2};
pub use range::{byte_range_rows, RowSpan};
pub use recovery::{recover_sliver, RecoveredSliver, RecoverySymbol};
pub use rs::{RsDecoder, RsEncoder};
pub use sliver::{sliver_root, verify_sliver, ExpandedSliver, Sliver, SliverKind, VerifyScratch};
pub use strips::{encode_in_strips, leaf_matrix_bytes, strip_memory_bytes, StripStore};
