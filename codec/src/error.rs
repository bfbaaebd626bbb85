//! One error enum per operation at the crate boundary.

use thiserror::Error;

/// An `n` or a blob length the code cannot take.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "unsupported number of shards {n_shards}: RS2 needs {} <= n <= {}",
        crate::N_SHARDS_MIN,
        crate::N_SHARDS_MAX
    )]
    ShardCount { n_shards: u64 },
    #[error(
        "blob of {blob_bytes} bytes is too large: with n = {n_shards} shards the largest blob is \
         {blob_bytes_max} bytes (k_p * k_s * 65534)"
    )]
    BlobTooLarge {
        blob_bytes: u64,
        blob_bytes_max: u64,
        n_shards: usize,
    },
}

/// A blob ID string that is not 43 characters of URL-safe base64 for 32 bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid blob ID {input:?}: expected 43 characters of URL-safe base64 without padding")]
pub struct BlobIdParseError {
    pub input: String,
}

/// Metadata that does not belong to the blob ID it claims.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetadataError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("metadata has {got} sliver pair hashes, the committee has n = {expected} shards")]
    ShardCountMismatch { expected: usize, got: usize },
    #[error("metadata does not hash to the blob ID: expected {expected}, computed {computed}")]
    BlobIdMismatch { expected: String, computed: String },
}

/// A sliver that fails verification against its metadata.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SliverError {
    #[error("sliver index {index} is out of range for n = {n_shards}")]
    IndexOutOfRange { index: usize, n_shards: usize },
    #[error("sliver has symbol size {got}, the blob's symbol size is {expected}")]
    SymbolSize { expected: usize, got: usize },
    #[error("sliver has {got} bytes, expected {expected}")]
    Length { expected: usize, got: usize },
    #[error("{kind} sliver {index} does not match its hash in the metadata")]
    HashMismatch {
        kind: crate::SliverKind,
        index: usize,
    },
    #[error("metadata describes no valid layout: {0}")]
    Metadata(#[from] MetadataError),
}

/// A blob that cannot be decoded from the slivers given.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("need {needed} distinct {kind} slivers to decode, got {got}")]
    NotEnoughSlivers {
        kind: crate::SliverKind,
        needed: usize,
        got: usize,
    },
    #[error("sliver rejected: {0}")]
    Sliver(#[from] SliverError),
    #[error("sliver given as {got} where {expected} slivers were expected")]
    WrongKind {
        expected: crate::SliverKind,
        got: crate::SliverKind,
    },
    #[error(
        "decoded row {row_index} does not match the metadata: the slivers were not \
         consistently encoded"
    )]
    Inconsistent { row_index: usize },
    #[error("decoded blob does not hash to the blob ID: the encoding was inconsistent")]
    BlobIdMismatch,
}

/// A recovery symbol or a sliver rebuild that fails.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("recovery symbol from sliver {source_index} has no valid proof for its metadata hash")]
    InvalidProof { source_index: usize },
    #[error("recovery symbol has {got} bytes, the blob's symbol size is {expected}")]
    SymbolSize { expected: usize, got: usize },
    #[error("recovery symbol targets sliver {got}, the rebuild is for sliver {expected}")]
    WrongTarget { expected: usize, got: usize },
    #[error("index {index} is out of range for n = {n_shards}")]
    IndexOutOfRange { index: usize, n_shards: usize },
    #[error("need {needed} recovery symbols from distinct slivers, got {got}")]
    NotEnoughSymbols { needed: usize, got: usize },
    #[error("rebuilt sliver does not match the metadata: {0}")]
    Rebuilt(#[from] SliverError),
}

/// A byte range outside the blob.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("byte range [{start}, {end}) is not within a blob of {blob_bytes} bytes")]
pub struct RangeError {
    pub start: u64,
    pub end: u64,
    pub blob_bytes: u64,
}

/// A BCS body that is not a valid Walrus wire value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BcsError {
    #[error("body ends after {offset} bytes while reading {what}")]
    Truncated { what: &'static str, offset: usize },
    #[error("{count} unexpected bytes after the value")]
    TrailingBytes { count: usize },
    #[error("malformed ULEB128 length at byte {offset}")]
    BadLength { offset: usize },
    #[error("{what}: unknown tag {tag}")]
    UnknownTag { what: &'static str, tag: u64 },
    #[error("{what} declares {declared} bytes but only {available} remain")]
    LengthExceedsBody {
        what: &'static str,
        declared: u64,
        available: usize,
    },
    #[error("invalid value: {0}")]
    Invalid(String),
}
