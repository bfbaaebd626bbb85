//! Rebuilding one lost sliver from one symbol of each of `k` other slivers.
//!
//! To rebuild primary sliver `i` (row `i`), the holders of secondary slivers `j` each expand
//! their column to `n` symbols and send symbol `(i, j)` with a Merkle proof against the
//! column's hash; `k_s` such symbols decode row `i`. Secondary sliver `j` is rebuilt the same
//! way from `k_p` symbols `(i, j)` of primary slivers `i`. Traffic is one sliver plus proofs.

use crate::config::BlobLayout;
use crate::error::RecoveryError;
use crate::merkle::MerkleProof;
use crate::metadata::BlobMetadata;
use crate::rs::RsDecoder;
use crate::sliver::{verify_sliver, ExpandedSliver, SliverKind, VerifyScratch};

/// One symbol of an expanded sliver, sent to help rebuild a sliver of the other kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoverySymbol {
    /// Kind of the sliver the symbol comes from (the opposite of the one being rebuilt).
    pub source_kind: SliverKind,
    /// Index of the sliver the symbol comes from.
    pub source_index: usize,
    /// Index of the sliver being rebuilt: the symbol's position in the source's expansion.
    pub target_index: usize,
    pub data: Vec<u8>,
    /// Proof of `data` at `target_index` against the source sliver's hash.
    pub proof: MerkleProof,
}

impl ExpandedSliver {
    /// The symbol this sliver contributes to rebuilding sliver `target_index` of the other kind.
    pub fn recovery_symbol(&self, target_index: usize) -> RecoverySymbol {
        RecoverySymbol {
            source_kind: self.kind,
            source_index: self.index,
            target_index,
            data: self.symbol(target_index).to_vec(),
            proof: self.proof(target_index),
        }
    }
}

impl RecoverySymbol {
    /// Checks the symbol's size and proof against verified metadata.
    pub fn verify(
        &self,
        metadata: &BlobMetadata,
        layout: &BlobLayout,
    ) -> Result<(), RecoveryError> {
        let n = layout.config.n_shards();
        for index in [self.source_index, self.target_index] {
            if index >= n {
                return Err(RecoveryError::IndexOutOfRange { index, n_shards: n });
            }
        }
        if self.data.len() != layout.symbol_bytes {
            return Err(RecoveryError::SymbolSize {
                expected: layout.symbol_bytes,
                got: self.data.len(),
            });
        }
        let root = self.source_kind.expected_hash(metadata, self.source_index);
        if !self.proof.verify(root, &self.data, self.target_index) {
            return Err(RecoveryError::InvalidProof {
                source_index: self.source_index,
            });
        }
        Ok(())
    }
}

/// A rebuilt sliver, and the source slivers whose symbols failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredSliver {
    pub data: Vec<u8>,
    /// Source sliver indices whose symbols were rejected (bad size or proof): peers that lied.
    pub rejected_sources: Vec<usize>,
}

/// Rebuilds sliver `target_index` of `kind` from recovery symbols of the other kind.
///
/// Symbols that fail verification are skipped; the rebuild needs `k` verified symbols from
/// distinct source slivers (`k_s` for a primary sliver, `k_p` for a secondary one) and the result
/// is verified against the metadata before it is returned.
pub fn recover_sliver(
    metadata: &BlobMetadata,
    kind: SliverKind,
    target_index: usize,
    symbols: &[RecoverySymbol],
) -> Result<RecoveredSliver, RecoveryError> {
    let layout = metadata.layout().map_err(crate::SliverError::from)?;
    let n = layout.config.n_shards();
    if target_index >= n {
        return Err(RecoveryError::IndexOutOfRange {
            index: target_index,
            n_shards: n,
        });
    }
    // A primary sliver is a row: its symbols come from columns, i.e. secondary slivers.
    let needed = kind.n_symbols(&layout);
    let mut seen = vec![false; n];
    let mut chosen: Vec<(usize, &[u8])> = Vec::with_capacity(needed);
    let mut rejected_sources = Vec::new();
    for symbol in symbols {
        if chosen.len() == needed {
            break;
        }
        if symbol.source_kind != kind.orthogonal() || symbol.target_index != target_index {
            continue;
        }
        if symbol.verify(metadata, &layout).is_err() {
            rejected_sources.push(symbol.source_index);
            continue;
        }
        if seen[symbol.source_index] {
            continue;
        }
        seen[symbol.source_index] = true;
        chosen.push((symbol.source_index, &symbol.data));
    }
    if chosen.len() < needed {
        return Err(RecoveryError::NotEnoughSymbols {
            needed,
            got: chosen.len(),
        });
    }
    let mut sliver = vec![0u8; needed * layout.symbol_bytes];
    RsDecoder::default().decode(needed, n, layout.symbol_bytes, chosen, &mut sliver);
    verify_sliver(
        metadata,
        &layout,
        kind,
        target_index,
        layout.symbol_bytes,
        &sliver,
        &mut VerifyScratch::default(),
    )?;
    Ok(RecoveredSliver {
        data: sliver,
        rejected_sources,
    })
}
