//! Encoding a blob into `n` sliver pairs and its metadata.
//!
//! The expanded `n x n` matrix is never held whole. Memory is the output itself (primary
//! slivers row-major, secondary slivers column-major) plus one 32-byte leaf hash per matrix cell
//! (`n^2 * 32` bytes) and per-thread scratch:
//!
//! 1. rows: the blob is already primary slivers `0..k_p`; each is extended to `n` symbols and
//!    scattered, transposed, into the secondary slivers (their rows `0..k_p`);
//! 2. columns: each secondary sliver `c` is extended to `n` symbols; rows `k_p..n` of the first
//!    `k_s` columns are scattered into primary slivers `k_p..n`; all `n` symbols are leaf-hashed
//!    (every symbol is hashed exactly once, since row and column trees share their leaves) and
//!    the column's Merkle root is taken;
//! 3. row roots are taken from the stored leaf hashes, a block of rows at a time so that the
//!    column-major leaf matrix is read in cache-line runs.
//!
//! Each step runs in parallel on the current rayon pool; install a one-thread pool for
//! single-core figures.

use rayon::prelude::*;

use crate::config::{BlobLayout, EncodingConfig};
use crate::error::ConfigError;
use crate::hash::{leaf_hashes, Digest, HashScratch};
use crate::merkle::{root_in_place, root_of_leaf_hashes};
use crate::metadata::{BlobId, BlobMetadata, SliverPairHashes};
use crate::rs::{RsEncoder, CODEWORDS_PER_BATCH, ENCODE_PACK_BELOW_SYMBOL_BYTES};
use crate::sliver::{Sliver, SliverKind};
use crate::util::DisjointWriter;

/// Rows whose roots one task takes together in step 3. Why: 16 rows of 32-byte leaf hashes are
/// 512 contiguous bytes of a column, i.e. eight cache lines per gather.
const ROWS_PER_ROOT_TASK: usize = 16;

/// Rows or columns one encoding task takes when symbols are long. Why: eight columns of
/// symbols of a few hundred bytes fit in L2 while turning the scatter into runs of kilobytes.
const LONG_SYMBOLS_PER_TASK_MAX: usize = 8;

/// Fewest leaves hashed per call in step 2. Why: eight lanes of the BLAKE2b kernel, eight
/// times over, so that a column of n = 10 does not leave most lanes idle.
const LEAVES_PER_HASH_BATCH_MIN: usize = 64;

/// A blob encoded into `n` sliver pairs, with its metadata and blob ID.
pub struct EncodedBlob {
    layout: BlobLayout,
    blob_id: BlobId,
    metadata: BlobMetadata,
    /// Primary slivers `0..n`, row-major, `k_s * ss` bytes each.
    primary: Vec<u8>,
    /// Secondary slivers `0..n`, by sliver (column) index, `k_p * ss` bytes each.
    secondary: Vec<u8>,
}

impl EncodedBlob {
    /// Layout of the blob.
    pub fn layout(&self) -> &BlobLayout {
        &self.layout
    }

    /// The blob ID.
    pub fn blob_id(&self) -> &BlobId {
        &self.blob_id
    }

    /// The metadata (hashes of every sliver).
    pub fn metadata(&self) -> &BlobMetadata {
        &self.metadata
    }

    /// Primary sliver `index` (row `index`).
    pub fn primary_sliver(&self, index: usize) -> &[u8] {
        let bytes = self.layout.primary_sliver_bytes();
        &self.primary[index * bytes..(index + 1) * bytes]
    }

    /// Secondary sliver `index` (column `index`).
    pub fn secondary_sliver(&self, index: usize) -> &[u8] {
        let bytes = self.layout.secondary_sliver_bytes();
        &self.secondary[index * bytes..(index + 1) * bytes]
    }

    /// The sliver of `kind` with `index` as bytes.
    pub fn sliver(&self, kind: SliverKind, index: usize) -> &[u8] {
        match kind {
            SliverKind::Primary => self.primary_sliver(index),
            SliverKind::Secondary => self.secondary_sliver(index),
        }
    }

    /// An owned copy of one sliver, as sent over the wire.
    pub fn to_sliver(&self, kind: SliverKind, index: usize) -> Sliver {
        Sliver {
            kind,
            index: self.wire_index(index),
            symbol_bytes: self.wire_symbol_bytes(),
            data: self.sliver(kind, index).to_vec(),
        }
    }

    /// One sliver's BCS body (what `encode_sliver(&self.to_sliver(..))` gives), copied once.
    pub fn sliver_bcs(&self, kind: SliverKind, index: usize) -> Vec<u8> {
        crate::bcs::encode_sliver_parts(
            self.sliver(kind, index),
            self.wire_symbol_bytes(),
            self.wire_index(index),
        )
    }

    fn wire_index(&self, index: usize) -> u16 {
        u16::try_from(index).expect("n <= N_SHARDS_MAX fits u16")
    }

    fn wire_symbol_bytes(&self) -> u16 {
        u16::try_from(self.layout.symbol_bytes).expect("ss <= 65534")
    }

    /// Sliver pair `pair_index`: primary sliver `p` and secondary sliver `n - 1 - p`.
    pub fn sliver_pair(&self, pair_index: usize) -> (&[u8], &[u8]) {
        let n = self.layout.config.n_shards();
        (
            self.primary_sliver(pair_index),
            self.secondary_sliver(n - 1 - pair_index),
        )
    }
}

/// Encodes `blob` into slivers and metadata.
pub fn encode(config: &EncodingConfig, blob: &[u8]) -> Result<EncodedBlob, ConfigError> {
    Encoder::new(*config).encode(blob)
}

/// Encodes a blob given by value (see [`Encoder::encode_owned`]).
pub fn encode_owned(config: &EncodingConfig, blob: Vec<u8>) -> Result<EncodedBlob, ConfigError> {
    Encoder::new(*config).encode_owned(blob)
}

/// Computes only the metadata and blob ID (see [`Encoder::compute_metadata`]).
pub fn compute_metadata(
    config: &EncodingConfig,
    blob: &[u8],
) -> Result<(BlobId, BlobMetadata), ConfigError> {
    Encoder::new(*config).compute_metadata(blob)
}

/// An encoder for one code that keeps its `n^2 * 32`-byte leaf-hash matrix between blobs.
///
/// Why: at n = 1000 that matrix is 32 MB, and a fresh allocation costs a page fault and a
/// kernel page clear per 4 KiB on every blob, about a tenth of encoding a small blob. A node
/// that encodes blob after blob keeps one `Encoder` per worker; one-off callers use [`encode`].
pub struct Encoder {
    config: EncodingConfig,
    leaves: Vec<Digest>,
}

impl Encoder {
    /// An encoder for `config`; the scratch is allocated on first use.
    pub fn new(config: EncodingConfig) -> Self {
        Self {
            config,
            leaves: Vec::new(),
        }
    }

    /// Encodes `blob` into slivers and metadata.
    pub fn encode(&mut self, blob: &[u8]) -> Result<EncodedBlob, ConfigError> {
        let layout = self.config.layout(blob.len() as u64)?;
        let mut primary =
            Vec::with_capacity(self.config.n_shards() * layout.primary_sliver_bytes());
        primary.extend_from_slice(blob);
        self.encode_owned(primary)
    }

    /// Encodes a blob given by value: its buffer becomes the primary slivers, so that encoding
    /// does not hold a second copy of the blob. Reserve `n * primary_sliver_bytes` capacity up
    /// front (see [`BlobLayout`]) to avoid a reallocation.
    pub fn encode_owned(&mut self, blob: Vec<u8>) -> Result<EncodedBlob, ConfigError> {
        let layout = self.config.layout(blob.len() as u64)?;
        let (blob_id, metadata, primary, secondary) = run(layout, blob, true, &mut self.leaves);
        Ok(EncodedBlob {
            layout,
            blob_id,
            metadata,
            primary,
            secondary,
        })
    }

    /// Computes only the metadata and blob ID (the primary slivers past `k_p` are not kept).
    pub fn compute_metadata(&mut self, blob: &[u8]) -> Result<(BlobId, BlobMetadata), ConfigError> {
        let layout = self.config.layout(blob.len() as u64)?;
        let mut padded = Vec::with_capacity(layout.padded_blob_bytes());
        padded.extend_from_slice(blob);
        let (blob_id, metadata, _, _) = run(layout, padded, false, &mut self.leaves);
        Ok((blob_id, metadata))
    }
}

/// Rows (step 1) or columns (step 2) one task takes.
///
/// Several per task, so that the transposed writes land as contiguous runs rather than one
/// symbol per cache line, and so that symbols packed for Reed-Solomon (see
/// `RsEncoder::encode_many`) fill whole packed shards: for short symbols a task takes a whole
/// packed batch (at most 32 * n * 64 bytes of columns: 2 MiB at n = 1000). Long symbols are not
/// packed; a task then takes few enough that small n still spreads over the pool.
pub(crate) fn codewords_per_task(n: usize, symbol_bytes: usize) -> usize {
    if symbol_bytes < ENCODE_PACK_BELOW_SYMBOL_BYTES {
        CODEWORDS_PER_BATCH
    } else {
        (n / (2 * rayon::current_num_threads())).clamp(1, LONG_SYMBOLS_PER_TASK_MAX)
    }
}

/// The three steps of the module docs. `primary` holds the blob; it is resized to the primary
/// slivers (all `n` when `keep_slivers`, else only the `k_p` systematic ones).
fn run(
    layout: BlobLayout,
    mut primary: Vec<u8>,
    keep_slivers: bool,
    leaves: &mut Vec<Digest>,
) -> (BlobId, BlobMetadata, Vec<u8>, Vec<u8>) {
    let config = layout.config;
    let n = config.n_shards();
    let k_p = config.n_primary_source();
    let k_s = config.n_secondary_source();
    let ss = layout.symbol_bytes;
    let primary_bytes = layout.primary_sliver_bytes();
    let secondary_bytes = layout.secondary_sliver_bytes();
    let n_primary_rows = if keep_slivers { n } else { k_p };
    primary.resize(n_primary_rows * primary_bytes, 0);
    let mut secondary = vec![0u8; n * secondary_bytes];

    let per_task = codewords_per_task(n, ss);

    // Step 1: extend the source rows; scatter all n symbols of row r into secondary slivers.
    let (source, extension) = primary.split_at_mut(k_p * primary_bytes);
    {
        let secondary_writer = DisjointWriter::new(&mut secondary);
        let at = |row: usize, column: usize| column * secondary_bytes + row * ss;
        source
            .par_chunks(per_task * primary_bytes)
            .enumerate()
            .for_each_init(RsEncoder::default, |encoder, (task, rows)| {
                let first_row = task * per_task;
                let rows: Vec<&[u8]> = rows.chunks_exact(primary_bytes).collect();
                for column in 0..k_s {
                    // SAFETY: cells (first_row.., column) are written by this task alone.
                    let run = unsafe {
                        secondary_writer.slice_mut(at(first_row, column), rows.len() * ss)
                    };
                    for (cell, row) in run.chunks_exact_mut(ss).zip(&rows) {
                        cell.copy_from_slice(&row[column * ss..(column + 1) * ss]);
                    }
                }
                encoder.encode_many(k_s, n, ss, &rows, |r, i, symbol| {
                    // SAFETY: as above, for the recovery columns k_s + i.
                    unsafe { secondary_writer.write(at(first_row + r, k_s + i), symbol) };
                });
            });
    }

    // Step 2: extend every column; keep rows k_p..n of columns 0..k_s as primary slivers;
    // leaf-hash all n^2 cells once (column-major) and take the column roots.
    // Every cell is overwritten in step 2 before step 3 reads it; stale values never leak.
    leaves.resize(n * n, [0u8; 32]);
    let column_roots: Vec<Digest> = {
        let extension_writer = DisjointWriter::new(extension);
        secondary
            .par_chunks(per_task * secondary_bytes)
            .zip(leaves.par_chunks_mut(per_task * n))
            .enumerate()
            .map_init(
                || {
                    (
                        RsEncoder::default(),
                        HashScratch::default(),
                        Vec::<u8>::new(),
                    )
                },
                |(encoder, scratch, expanded), (task, (sources, task_leaves))| {
                    let first_column = task * per_task;
                    let sources: Vec<&[u8]> = sources.chunks_exact(secondary_bytes).collect();
                    // expanded[c] = all n symbols of column first_column + c.
                    let column_bytes = n * ss;
                    expanded.resize(sources.len() * column_bytes, 0);
                    for (c, source) in sources.iter().enumerate() {
                        expanded[c * column_bytes..][..source.len()].copy_from_slice(source);
                    }
                    encoder.encode_many(k_p, n, ss, &sources, |c, i, symbol| {
                        let at = c * column_bytes + (k_p + i) * ss;
                        expanded[at..at + ss].copy_from_slice(symbol);
                    });
                    // Columns of this task that are primary slivers' columns (< k_s).
                    let kept = if keep_slivers {
                        k_s.saturating_sub(first_column).min(sources.len())
                    } else {
                        0
                    };
                    if kept > 0 {
                        for row in k_p..n {
                            let at = (row - k_p) * primary_bytes + first_column * ss;
                            // SAFETY: cells (row, first_column..+kept) are written by this task.
                            let run = unsafe { extension_writer.slice_mut(at, kept * ss) };
                            for (c, cell) in run.chunks_exact_mut(ss).enumerate() {
                                cell.copy_from_slice(
                                    &expanded[c * column_bytes + row * ss..][..ss],
                                );
                            }
                        }
                    }
                    // Leaves in batches of whole columns, at least LEAVES_PER_HASH_BATCH_MIN so that
                    // small n still fills the SIMD lanes, and no more than needed so that the
                    // message slots stay in L2.
                    let columns_per_batch = LEAVES_PER_HASH_BATCH_MIN.div_ceil(n);
                    for (symbols, leaves) in expanded
                        .chunks(columns_per_batch * column_bytes)
                        .zip(task_leaves.chunks_mut(columns_per_batch * n))
                    {
                        leaf_hashes(symbols, ss, leaves, scratch);
                    }
                    task_leaves
                        .chunks_exact(n)
                        .map(|column_leaves| root_of_leaf_hashes(column_leaves, scratch))
                        .collect::<Vec<_>>()
                },
            )
            .flatten_iter()
            .collect()
    };

    // Step 3: row roots from the column-major leaf matrix.
    let row_roots = row_roots(leaves, n);

    let pair_hashes = (0..n)
        .map(|pair| SliverPairHashes {
            primary: row_roots[pair],
            secondary: column_roots[n - 1 - pair],
        })
        .collect();
    let metadata = BlobMetadata::new(layout.blob_bytes, pair_hashes);
    let blob_id = metadata.compute_blob_id();
    (blob_id, metadata, primary, secondary)
}

/// Row roots from the column-major leaf matrix (`leaves[c * n + r]`), a block of rows per task
/// so that the matrix is read in cache-line runs.
pub(crate) fn row_roots(leaves: &[Digest], n: usize) -> Vec<Digest> {
    (0..n.div_ceil(ROWS_PER_ROOT_TASK))
        .into_par_iter()
        .map_init(
            || (HashScratch::default(), Vec::<Digest>::new()),
            |(scratch, gathered), block| {
                let rows = block * ROWS_PER_ROOT_TASK..((block + 1) * ROWS_PER_ROOT_TASK).min(n);
                // gathered[r * n + c] = leaf (rows.start + r, c).
                gathered.resize(rows.len() * n, [0; 32]);
                for (c, column_leaves) in leaves.chunks_exact(n).enumerate() {
                    for (r, leaf) in column_leaves[rows.clone()].iter().enumerate() {
                        gathered[r * n + c] = *leaf;
                    }
                }
                gathered
                    .chunks_exact_mut(n)
                    .map(|row_leaves| root_in_place(row_leaves, scratch))
                    .collect::<Vec<_>>()
            },
        )
        .flatten_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::root_of_items;

    /// A straightforward encoder written from the spec: the whole n x n matrix, one RS call per
    /// row and column, one hash at a time. The fast path must agree with it byte for byte.
    /// Matrix indices are spelled out on purpose, to read like the spec.
    #[allow(clippy::needless_range_loop)]
    fn naive(n: u16, blob: &[u8]) -> (BlobId, Vec<Vec<u8>>) {
        let config = EncodingConfig::new(n).unwrap();
        let layout = config.layout(blob.len() as u64).unwrap();
        let (n, k_p, k_s, ss) = (
            config.n_shards(),
            config.n_primary_source(),
            config.n_secondary_source(),
            layout.symbol_bytes,
        );
        let mut padded = blob.to_vec();
        padded.resize(k_p * k_s * ss, 0);
        let mut m = vec![vec![vec![0u8; ss]; n]; n];
        for r in 0..k_p {
            for c in 0..k_s {
                m[r][c] = padded[(r * k_s + c) * ss..][..ss].to_vec();
            }
            let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k_s, n - k_s, ss).unwrap();
            for c in 0..k_s {
                enc.add_original_shard(&m[r][c]).unwrap();
            }
            let rec: Vec<Vec<u8>> = enc
                .encode()
                .unwrap()
                .recovery_iter()
                .map(<[u8]>::to_vec)
                .collect();
            for (i, s) in rec.into_iter().enumerate() {
                m[r][k_s + i] = s;
            }
        }
        for c in 0..n {
            let mut enc = reed_solomon_simd::ReedSolomonEncoder::new(k_p, n - k_p, ss).unwrap();
            for r in 0..k_p {
                enc.add_original_shard(&m[r][c]).unwrap();
            }
            let rec: Vec<Vec<u8>> = enc
                .encode()
                .unwrap()
                .recovery_iter()
                .map(<[u8]>::to_vec)
                .collect();
            for (i, s) in rec.into_iter().enumerate() {
                m[k_p + i][c] = s;
            }
        }
        let pairs = (0..n)
            .map(|p| SliverPairHashes {
                primary: root_of_items(m[p].iter().map(Vec::as_slice)),
                secondary: root_of_items((0..n).map(|r| m[r][n - 1 - p].as_slice())),
            })
            .collect();
        let id = BlobMetadata::new(blob.len() as u64, pairs).compute_blob_id();
        let primaries = (0..n).map(|r| m[r][..k_s].concat()).collect();
        (id, primaries)
    }

    #[test]
    fn fast_encoder_agrees_with_the_naive_one() {
        for n in [4u16, 5, 7, 10, 13] {
            // One encoder for every length: its reused scratch must not leak between blobs.
            let mut encoder = Encoder::new(EncodingConfig::new(n).unwrap());
            for len in [4097usize, 0, 1, 33, 100, 1000, 20_000] {
                let blob: Vec<u8> = (0..len).map(|i| (i * 7 + n as usize) as u8).collect();
                let config = EncodingConfig::new(n).unwrap();
                let encoded = encoder.encode(&blob).unwrap();
                let (id, primaries) = naive(n, &blob);
                assert_eq!(*encoded.blob_id(), id, "n {n} len {len}");
                for (i, p) in primaries.iter().enumerate() {
                    assert_eq!(
                        encoded.primary_sliver(i),
                        p.as_slice(),
                        "n {n} len {len} row {i}"
                    );
                }
                let (meta_id, metadata) = compute_metadata(&config, &blob).unwrap();
                assert_eq!(meta_id, id);
                assert_eq!(&metadata, encoded.metadata());
            }
        }
    }
}
