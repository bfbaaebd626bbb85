//! The Merkle tree of the RS2 format: leaves `H(0x00 || data)`, inner nodes
//! `H(0x01 || left || right)`, odd levels padded with the all-zero node, proofs listing the
//! siblings from leaf to root.

use crate::hash::{inner_hash, leaf_hash, Digest, HashScratch, INNER_PREFIX};

/// The node that pads a level with an odd number of nodes.
pub const EMPTY_NODE: Digest = [0u8; 32];

/// Bytes of the input of an inner hash: prefix, left, right.
const INNER_INPUT_BYTES: usize = 1 + 2 * 32;

/// Computes the root over `level` (leaf hashes), using the slice itself as working space: each
/// level's parents overwrite the front of the slice. An empty tree has the empty node as root.
pub fn root_in_place(level: &mut [Digest], scratch: &mut HashScratch) -> Digest {
    if level.is_empty() {
        return EMPTY_NODE;
    }
    let mut len = level.len();
    while len > 1 {
        len = next_level(level, len, scratch);
    }
    level[0]
}

/// Merkle root over `leaves` (already leaf-hashed), which are left as they are.
pub fn root_of_leaf_hashes(leaves: &[Digest], scratch: &mut HashScratch) -> Digest {
    let mut level = std::mem::take(&mut scratch.digests);
    level.clear();
    level.extend_from_slice(leaves);
    let root = root_in_place(&mut level, scratch);
    scratch.digests = level;
    root
}

/// Merkle root over raw leaf data items.
pub fn root_of_items<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Digest {
    let mut level: Vec<Digest> = items.into_iter().map(leaf_hash).collect();
    root_in_place(&mut level, &mut HashScratch::default())
}

/// Hashes the `len` nodes at the front of `level` pairwise (an odd last node pairs with the
/// empty node) into the front of `level`; returns the number of parents.
fn next_level(level: &mut [Digest], len: usize, scratch: &mut HashScratch) -> usize {
    let n_parents = len.div_ceil(2);
    let slots = &mut scratch.inner;
    slots.prepare(n_parents, INNER_INPUT_BYTES);
    for parent in 0..n_parents {
        let left = &level[2 * parent];
        let right = level
            .get(2 * parent + 1)
            .filter(|_| 2 * parent + 1 < len)
            .unwrap_or(&EMPTY_NODE);
        let message: &mut [u8; INNER_INPUT_BYTES] = slots
            .message_mut(parent)
            .try_into()
            .expect("slots sized for inner nodes");
        message[0] = INNER_PREFIX;
        // Fixed-size copies: the compiler emits two 32-byte moves, no `memcpy` call.
        *<&mut [u8; 32]>::try_from(&mut message[1..33]).expect("32 bytes") = *left;
        *<&mut [u8; 32]>::try_from(&mut message[33..]).expect("32 bytes") = *right;
    }
    // Every child was copied into the slots above, so overwriting the front is safe.
    slots.hash_into(&mut level[..n_parents]);
    n_parents
}

/// A Merkle proof: the siblings from the leaf up to (not including) the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleProof {
    pub siblings: Vec<Digest>,
}

impl MerkleProof {
    /// Does the leaf with hash `leaf` at `leaf_index` lead to `root` through these siblings?
    pub fn verify_leaf_hash(&self, root: &Digest, leaf: Digest, leaf_index: usize) -> bool {
        let mut node = leaf;
        let mut index = leaf_index;
        for sibling in &self.siblings {
            node = if index.is_multiple_of(2) {
                inner_hash(&node, sibling)
            } else {
                inner_hash(sibling, &node)
            };
            index /= 2;
        }
        index == 0 && node == *root
    }

    /// Does `data` at `leaf_index` lead to `root`?
    pub fn verify(&self, root: &Digest, data: &[u8], leaf_index: usize) -> bool {
        self.verify_leaf_hash(root, leaf_hash(data), leaf_index)
    }
}

/// Every level above the leaves, bottom up; the last holds the root alone (none for one leaf).
pub fn levels(leaves: &[Digest], scratch: &mut HashScratch) -> Vec<Vec<Digest>> {
    let mut levels: Vec<Vec<Digest>> = Vec::new();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let len = level.len();
        let len = next_level(&mut level, len, scratch);
        level.truncate(len);
        levels.push(level.clone());
    }
    levels
}

/// The proof for `leaf_index` from the leaves and the levels of [`levels`].
pub fn proof_from_levels(
    leaves: &[Digest],
    levels: &[Vec<Digest>],
    leaf_index: usize,
) -> MerkleProof {
    assert!(leaf_index < leaves.len(), "leaf index within the tree");
    let mut siblings = Vec::with_capacity(levels.len());
    let mut index = leaf_index;
    for level in std::iter::once(leaves).chain(levels.iter().map(Vec::as_slice)) {
        if level.len() == 1 {
            break;
        }
        siblings.push(level.get(index ^ 1).copied().unwrap_or(EMPTY_NODE));
        index /= 2;
    }
    MerkleProof { siblings }
}

/// Builds the proof for `leaf_index` from all leaf hashes of the tree.
pub fn proof(leaves: &[Digest], leaf_index: usize, scratch: &mut HashScratch) -> MerkleProof {
    proof_from_levels(leaves, &levels(leaves, scratch), leaf_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deliberately naive tree, written straight from the spec's definition.
    fn naive_root(items: &[Vec<u8>]) -> Digest {
        let mut level: Vec<Digest> = items.iter().map(|i| leaf_hash(i)).collect();
        while level.len() > 1 {
            if level.len() % 2 == 1 {
                level.push([0; 32]);
            }
            level = level.chunks(2).map(|p| inner_hash(&p[0], &p[1])).collect();
        }
        level[0]
    }

    #[test]
    fn roots_and_proofs_agree_with_the_naive_tree() {
        for n in 1..40usize {
            let items: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i % 5 + 1]).collect();
            let root = root_of_items(items.iter().map(|v| v.as_slice()));
            assert_eq!(root, naive_root(&items), "n = {n}");
            let leaves: Vec<Digest> = items.iter().map(|i| leaf_hash(i)).collect();
            let mut scratch = HashScratch::default();
            for (index, item) in items.iter().enumerate() {
                let proof = proof(&leaves, index, &mut scratch);
                assert!(proof.verify(&root, item, index), "n = {n} index {index}");
                let levels = levels(&leaves, &mut scratch);
                assert_eq!(proof_from_levels(&leaves, &levels, index), proof);
                assert!(!proof.verify(&root, b"other", index));
                if n > 1 {
                    assert!(!proof.verify(&root, item, (index + 1) % n));
                }
            }
        }
    }
}
