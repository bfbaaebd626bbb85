//! Slivers: one row (primary) or one column (secondary) of the expanded matrix, and their
//! verification against the metadata.

use std::fmt;

use crate::config::BlobLayout;
use crate::error::SliverError;
use crate::hash::{leaf_hashes, Digest, HashScratch};
use crate::merkle::{self, root_of_leaf_hashes, MerkleProof};
use crate::metadata::BlobMetadata;
use crate::rs::RsEncoder;

/// Which axis a sliver runs along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SliverKind {
    /// Row `i` of the expanded matrix, `k_s` symbols.
    Primary,
    /// Column `j` of the expanded matrix, `k_p` symbols.
    Secondary,
}

impl SliverKind {
    /// The other axis.
    pub fn orthogonal(self) -> Self {
        match self {
            Self::Primary => Self::Secondary,
            Self::Secondary => Self::Primary,
        }
    }

    /// Symbols in one sliver of this kind: `k_s` for primary, `k_p` for secondary.
    pub fn n_symbols(self, layout: &BlobLayout) -> usize {
        match self {
            Self::Primary => layout.config.n_secondary_source(),
            Self::Secondary => layout.config.n_primary_source(),
        }
    }

    /// Bytes of one sliver of this kind.
    pub fn sliver_bytes(self, layout: &BlobLayout) -> usize {
        self.n_symbols(layout) * layout.symbol_bytes
    }

    /// The metadata hash this sliver's Merkle root must equal.
    pub fn expected_hash(self, metadata: &BlobMetadata, sliver_index: usize) -> &Digest {
        match self {
            Self::Primary => metadata.primary_hash(sliver_index),
            Self::Secondary => metadata.secondary_hash(sliver_index),
        }
    }

    /// Lower-case name, as used in URLs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

impl fmt::Display for SliverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An owned sliver as it travels on the wire: its index, symbol size and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sliver {
    pub kind: SliverKind,
    /// Row index (primary) or column index (secondary), `< n`.
    pub index: u16,
    pub symbol_bytes: u16,
    pub data: Vec<u8>,
}

/// A sliver extended along its own axis to all `n` symbols, with the leaf hashes of its Merkle
/// tree: what a node computes to verify a sliver or to answer recovery-symbol requests.
pub struct ExpandedSliver {
    pub kind: SliverKind,
    pub index: usize,
    pub symbol_bytes: usize,
    /// `n` symbols back to back.
    pub symbols: Vec<u8>,
    /// `n` leaf hashes.
    pub leaves: Vec<Digest>,
    /// The Merkle root over `leaves`.
    pub root: Digest,
    /// Every level of the tree above the leaves, kept so that a proof costs no hashing.
    levels: Vec<Vec<Digest>>,
}

/// Reusable working space for sliver verification.
#[derive(Default)]
pub struct VerifyScratch {
    encoder: RsEncoder,
    hash: HashScratch,
    symbols: Vec<u8>,
    leaves: Vec<Digest>,
}

fn check_shape(
    layout: &BlobLayout,
    kind: SliverKind,
    index: usize,
    symbol_bytes: usize,
    data: &[u8],
) -> Result<(), SliverError> {
    let n = layout.config.n_shards();
    if index >= n {
        return Err(SliverError::IndexOutOfRange { index, n_shards: n });
    }
    if symbol_bytes != layout.symbol_bytes {
        return Err(SliverError::SymbolSize {
            expected: layout.symbol_bytes,
            got: symbol_bytes,
        });
    }
    let expected = kind.sliver_bytes(layout);
    if data.len() != expected {
        return Err(SliverError::Length {
            expected,
            got: data.len(),
        });
    }
    Ok(())
}

/// Extends `data` (one sliver) along its axis into `symbols` (all `n` symbols).
fn expand_into(
    layout: &BlobLayout,
    kind: SliverKind,
    data: &[u8],
    encoder: &mut RsEncoder,
    symbols: &mut Vec<u8>,
) {
    let n = layout.config.n_shards();
    let ss = layout.symbol_bytes;
    symbols.clear();
    symbols.reserve(n * ss);
    symbols.extend_from_slice(data);
    encoder.encode(kind.n_symbols(layout), n, ss, data, |_, symbol| {
        symbols.extend_from_slice(symbol)
    });
}

/// Extends a sliver to `n` symbols into `scratch.symbols` and leaf-hashes them into
/// `scratch.leaves`.
fn expand_and_hash_leaves(
    layout: &BlobLayout,
    kind: SliverKind,
    data: &[u8],
    scratch: &mut VerifyScratch,
) {
    expand_into(
        layout,
        kind,
        data,
        &mut scratch.encoder,
        &mut scratch.symbols,
    );
    scratch.leaves.resize(layout.config.n_shards(), [0; 32]);
    leaf_hashes(
        &scratch.symbols,
        layout.symbol_bytes,
        &mut scratch.leaves,
        &mut scratch.hash,
    );
}

/// Computes the Merkle root of a sliver, re-encoded to `n` symbols, without checking it.
pub fn sliver_root(
    layout: &BlobLayout,
    kind: SliverKind,
    data: &[u8],
    scratch: &mut VerifyScratch,
) -> Digest {
    expand_and_hash_leaves(layout, kind, data, scratch);
    root_of_leaf_hashes(&scratch.leaves, &mut scratch.hash)
}

/// Verifies one sliver against verified metadata: index, symbol size, length, and that its
/// re-encoding along the other axis hashes to the metadata's root for it.
pub fn verify_sliver(
    metadata: &BlobMetadata,
    layout: &BlobLayout,
    kind: SliverKind,
    index: usize,
    symbol_bytes: usize,
    data: &[u8],
    scratch: &mut VerifyScratch,
) -> Result<(), SliverError> {
    assert_eq!(
        metadata.n_shards(),
        layout.config.n_shards(),
        "layout of this metadata"
    );
    check_shape(layout, kind, index, symbol_bytes, data)?;
    let root = sliver_root(layout, kind, data, scratch);
    if root != *kind.expected_hash(metadata, index) {
        return Err(SliverError::HashMismatch { kind, index });
    }
    Ok(())
}

impl Sliver {
    /// Verifies this sliver against verified metadata (see [`verify_sliver`]).
    pub fn verify(&self, metadata: &BlobMetadata) -> Result<(), SliverError> {
        let layout = metadata.layout()?;
        verify_sliver(
            metadata,
            &layout,
            self.kind,
            self.index.into(),
            self.symbol_bytes.into(),
            &self.data,
            &mut VerifyScratch::default(),
        )
    }
}

impl ExpandedSliver {
    /// Expands a sliver and checks it against the metadata; the result can serve recovery
    /// symbols with proofs.
    pub fn new(
        metadata: &BlobMetadata,
        layout: &BlobLayout,
        kind: SliverKind,
        index: usize,
        data: &[u8],
    ) -> Result<Self, SliverError> {
        check_shape(layout, kind, index, layout.symbol_bytes, data)?;
        let mut scratch = VerifyScratch::default();
        expand_and_hash_leaves(layout, kind, data, &mut scratch);
        let (symbols, leaves) = (
            std::mem::take(&mut scratch.symbols),
            std::mem::take(&mut scratch.leaves),
        );
        let levels = merkle::levels(&leaves, &mut scratch.hash);
        let root = levels.last().map_or(leaves[0], |top| top[0]);
        if root != *kind.expected_hash(metadata, index) {
            return Err(SliverError::HashMismatch { kind, index });
        }
        Ok(Self {
            kind,
            index,
            symbol_bytes: layout.symbol_bytes,
            symbols,
            leaves,
            root,
            levels,
        })
    }

    /// Symbol `position` (0..n) of the expanded sliver.
    pub fn symbol(&self, position: usize) -> &[u8] {
        &self.symbols[position * self.symbol_bytes..(position + 1) * self.symbol_bytes]
    }

    /// The Merkle proof of symbol `position` against this sliver's root.
    pub fn proof(&self, position: usize) -> MerkleProof {
        merkle::proof_from_levels(&self.leaves, &self.levels, position)
    }
}
