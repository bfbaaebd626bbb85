//! Encoding a blob too large for memory, in strips: the same slivers, metadata and blob ID as
//! [`crate::encode`], with memory bounded by the strip size and the `n^2 * 32`-byte leaf-hash
//! matrix, whatever the blob's size.
//!
//! The caller keeps the blob and the slivers somewhere (files: the node spools the body to a
//! data disk) behind [`StripStore`]; the encoder reads and writes them a strip at a time, in the
//! order of [`crate::encode`]'s steps:
//!
//! 1. row strips: source rows `0..k_p` are read a strip at a time, each extended to `n`
//!    symbols, and the strip is written, transposed, into the secondary slivers (their rows
//!    `r0..r1`: one run of `(r1 - r0) * ss` bytes per secondary sliver);
//! 2. column strips: secondary slivers are read a strip at a time (contiguous), each extended
//!    to `n` symbols; rows `k_p..n` of the first `k_s` columns are written into the repair
//!    primary slivers `k_p..n` (one run per repair sliver); all `n` symbols are leaf-hashed and
//!    the column's Merkle root taken;
//! 3. row roots from the leaf matrix, as in [`crate::encode`].
//!
//! Primary slivers `0..k_p` are the blob itself (zero-padded): the encoder never writes them.
//! Memory: the leaf matrix, and per strip the strip's symbols (at most `strip_bytes`, and at
//! least one row or column of `n` symbols) twice over (source and expansion).

use std::io;

use rayon::prelude::*;

use crate::config::BlobLayout;
use crate::encode::{codewords_per_task, row_roots};
use crate::hash::{leaf_hashes, Digest, HashScratch};
use crate::merkle::root_of_leaf_hashes;
use crate::metadata::{BlobId, BlobMetadata, SliverPairHashes};
use crate::rs::RsEncoder;
use crate::util::DisjointWriter;

/// A task's scratch, kept across the strips of one encoding. Why: a strip is split into tasks
/// anew each time, and fresh buffers per task cost a page fault and a page clear per 4 KiB
/// (9% of a 1.2 GB encode's samples) plus a Reed-Solomon encoder set-up; freed with the
/// encoding, so that a big blob's scratch does not stay with the threads.
#[derive(Default)]
struct Scratch {
    encoder: RsEncoder,
    hashes: HashScratch,
    /// The columns of a task, expanded to `n` symbols.
    expanded: Vec<u8>,
}

/// Scratch for the tasks of one encoding, at most one per task running at once.
#[derive(Default)]
struct ScratchPool(std::sync::Mutex<Vec<Scratch>>);

impl ScratchPool {
    /// Runs `f` with a scratch from the pool (a new one if all are in use).
    fn with<T>(&self, f: impl FnOnce(&mut Scratch) -> T) -> T {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut scratch = taken.unwrap_or_default();
        let result = f(&mut scratch);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(scratch);
        result
    }
}

/// Where a strip encoding reads the blob and keeps the slivers it produces.
pub trait StripStore {
    /// Fills `out` with source rows from `first_row` on (`k_s * ss` bytes each): the blob's
    /// bytes at `first_row * k_s * ss`, zero past its end.
    fn read_rows(&mut self, first_row: usize, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` of the secondary slivers (sliver `j` at
    /// `j * secondary_sliver_bytes`, `k_p * ss` bytes each).
    fn write_secondary(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads what [`write_secondary`](Self::write_secondary) wrote.
    fn read_secondary(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset` of the repair primary slivers `k_p..n` (sliver `k_p + i` at
    /// `i * primary_sliver_bytes`, `k_s * ss` bytes each).
    fn write_repair(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// The most bytes a strip encoding of `layout` holds besides the leaf matrix, with strips of
/// `strip_bytes`: the source and the expansion of one strip.
pub fn strip_memory_bytes(layout: &BlobLayout, strip_bytes: usize) -> usize {
    let n = layout.config.n_shards();
    let line = n * layout.symbol_bytes;
    2 * strip_bytes.max(line)
}

/// Bytes of the leaf-hash matrix an encoding at `n` holds (`n^2 * 32`).
pub fn leaf_matrix_bytes(n: usize) -> usize {
    n * n * std::mem::size_of::<Digest>()
}

/// Encodes the blob of `layout` kept in `store` (see the module docs), in strips of about
/// `strip_bytes`; `leaves` is the reusable leaf matrix. Returns the blob ID and metadata.
pub fn encode_in_strips(
    layout: &BlobLayout,
    store: &mut impl StripStore,
    strip_bytes: usize,
    leaves: &mut Vec<Digest>,
) -> io::Result<(BlobId, BlobMetadata)> {
    let config = layout.config;
    let n = config.n_shards();
    let k_p = config.n_primary_source();
    let k_s = config.n_secondary_source();
    let ss = layout.symbol_bytes;
    let primary_bytes = layout.primary_sliver_bytes();
    let secondary_bytes = layout.secondary_sliver_bytes();
    let line = n * ss;
    let pool = ScratchPool::default();
    // Tasks small enough that a strip of few rows (or columns) still spreads over the pool.
    let threads = rayon::current_num_threads().max(1);
    let per_task_in = |codewords: usize| {
        codewords_per_task(n, ss)
            .min(codewords.div_ceil(threads))
            .max(1)
    };

    // Step 1: row strips into the secondary slivers.
    let rows_per_strip = (strip_bytes / line).clamp(1, k_p);
    let mut source = Vec::new();
    let mut strip = Vec::new();
    for first_row in (0..k_p).step_by(rows_per_strip) {
        let rows = rows_per_strip.min(k_p - first_row);
        source.resize(rows * primary_bytes, 0);
        store.read_rows(first_row, &mut source)?;
        // strip[c * rows * ss + r * ss] = cell (first_row + r, c).
        strip.resize(n * rows * ss, 0);
        let per_task = per_task_in(rows);
        {
            let writer = DisjointWriter::new(&mut strip);
            let at = |row: usize, column: usize| column * rows * ss + row * ss;
            source
                .par_chunks(per_task * primary_bytes)
                .enumerate()
                .for_each(|(task, task_rows)| {
                    pool.with(|Scratch { encoder, .. }| {
                        let first = task * per_task;
                        let task_rows: Vec<&[u8]> = task_rows.chunks_exact(primary_bytes).collect();
                        for column in 0..k_s {
                            // SAFETY: cells (first.., column) are written by this task alone.
                            let run = unsafe {
                                writer.slice_mut(at(first, column), task_rows.len() * ss)
                            };
                            for (cell, row) in run.chunks_exact_mut(ss).zip(&task_rows) {
                                cell.copy_from_slice(&row[column * ss..(column + 1) * ss]);
                            }
                        }
                        encoder.encode_many(k_s, n, ss, &task_rows, |r, i, symbol| {
                            // SAFETY: as above, for the recovery columns k_s + i.
                            unsafe { writer.write(at(first + r, k_s + i), symbol) };
                        });
                    })
                });
        }
        for (column, cells) in strip.chunks_exact(rows * ss).enumerate() {
            let offset = column * secondary_bytes + first_row * ss;
            store.write_secondary(offset as u64, cells)?;
        }
    }
    drop(strip);

    // Step 2: column strips: repair primary slivers, leaves and column roots.
    leaves.resize(n * n, [0u8; 32]);
    let columns_per_strip = (strip_bytes / line).clamp(1, n);
    let mut sources = Vec::new();
    let mut repair = Vec::new();
    let mut column_roots: Vec<Digest> = Vec::with_capacity(n);
    for first_column in (0..n).step_by(columns_per_strip) {
        let columns = columns_per_strip.min(n - first_column);
        sources.resize(columns * secondary_bytes, 0);
        store.read_secondary((first_column * secondary_bytes) as u64, &mut sources)?;
        // Columns of this strip that are primary slivers' columns (< k_s).
        let kept = k_s.saturating_sub(first_column).min(columns);
        // repair[(row - k_p) * kept * ss + c * ss] = cell (row, first_column + c).
        repair.resize((n - k_p) * kept * ss, 0);
        let strip_leaves = &mut leaves[first_column * n..(first_column + columns) * n];
        let per_task = per_task_in(columns);
        let roots: Vec<Digest> = {
            let repair_writer = DisjointWriter::new(&mut repair);
            sources
                .par_chunks(per_task * secondary_bytes)
                .zip(strip_leaves.par_chunks_mut(per_task * n))
                .enumerate()
                .map(|(task, (task_sources, task_leaves))| {
                    pool.with(
                        |Scratch {
                             encoder,
                             hashes: scratch,
                             expanded,
                         }| {
                            let first = task * per_task;
                            let task_sources: Vec<&[u8]> =
                                task_sources.chunks_exact(secondary_bytes).collect();
                            expanded.resize(task_sources.len() * line, 0);
                            for (c, source) in task_sources.iter().enumerate() {
                                expanded[c * line..][..source.len()].copy_from_slice(source);
                            }
                            encoder.encode_many(k_p, n, ss, &task_sources, |c, i, symbol| {
                                let at = c * line + (k_p + i) * ss;
                                expanded[at..at + ss].copy_from_slice(symbol);
                            });
                            let task_kept = kept.saturating_sub(first).min(task_sources.len());
                            for row in k_p..n {
                                for c in 0..task_kept {
                                    let at = (row - k_p) * kept * ss + (first + c) * ss;
                                    // SAFETY: cells (row, first + c) are written by this task alone.
                                    unsafe {
                                        repair_writer
                                            .write(at, &expanded[c * line + row * ss..][..ss])
                                    };
                                }
                            }
                            for (c, column_leaves) in task_leaves.chunks_exact_mut(n).enumerate() {
                                leaf_hashes(
                                    &expanded[c * line..(c + 1) * line],
                                    ss,
                                    column_leaves,
                                    scratch,
                                );
                            }
                            task_leaves
                                .chunks_exact(n)
                                .map(|column_leaves| root_of_leaf_hashes(column_leaves, scratch))
                                .collect::<Vec<_>>()
                        },
                    )
                })
                .flatten_iter()
                .collect()
        };
        column_roots.extend(roots);
        if kept > 0 {
            for (i, run) in repair.chunks_exact(kept * ss).enumerate() {
                let offset = i * primary_bytes + first_column * ss;
                store.write_repair(offset as u64, run)?;
            }
        }
    }

    // Step 3: row roots, and the metadata.
    let row_roots = row_roots(leaves, n);
    let pair_hashes = (0..n)
        .map(|pair| SliverPairHashes {
            primary: row_roots[pair],
            secondary: column_roots[n - 1 - pair],
        })
        .collect();
    let metadata = BlobMetadata::new(layout.blob_bytes, pair_hashes);
    let blob_id = metadata.compute_blob_id();
    Ok((blob_id, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EncodingConfig;
    use crate::sliver::SliverKind;

    /// Slivers kept in memory, with the blob.
    struct InMemory {
        blob: Vec<u8>,
        row_bytes: usize,
        secondary: Vec<u8>,
        repair: Vec<u8>,
    }

    impl StripStore for InMemory {
        fn read_rows(&mut self, first_row: usize, out: &mut [u8]) -> io::Result<()> {
            out.fill(0);
            let start = (first_row * self.row_bytes).min(self.blob.len());
            let end = (start + out.len()).min(self.blob.len());
            out[..end - start].copy_from_slice(&self.blob[start..end]);
            Ok(())
        }
        fn write_secondary(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.secondary[offset as usize..][..data.len()].copy_from_slice(data);
            Ok(())
        }
        fn read_secondary(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            out.copy_from_slice(&self.secondary[offset as usize..][..out.len()]);
            Ok(())
        }
        fn write_repair(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.repair[offset as usize..][..data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    #[test]
    fn strips_give_the_same_slivers_and_blob_id_as_the_whole_encoder() {
        for (n, len, strip_bytes) in [
            (10u16, 1usize, 1usize),
            (10, 1_000_000, 100_000),
            (100, 300_000, 1),
            (100, 2_000_000, 300_000),
            (13, 77_777, 5_000),
            (1000, 50_000, 1 << 20),
        ] {
            let config = EncodingConfig::new(n).unwrap();
            let blob: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let whole = crate::encode(&config, &blob).unwrap();
            let layout = *whole.layout();
            let n = usize::from(n);
            let k_p = config.n_primary_source();
            let mut store = InMemory {
                blob: blob.clone(),
                row_bytes: layout.primary_sliver_bytes(),
                secondary: vec![0; n * layout.secondary_sliver_bytes()],
                repair: vec![0; (n - k_p) * layout.primary_sliver_bytes()],
            };
            let mut leaves = Vec::new();
            let (blob_id, metadata) =
                encode_in_strips(&layout, &mut store, strip_bytes, &mut leaves).unwrap();
            assert_eq!(&blob_id, whole.blob_id(), "n = {n}, {len} bytes");
            assert_eq!(&metadata, whole.metadata());
            for j in 0..n {
                let at = j * layout.secondary_sliver_bytes();
                assert_eq!(
                    &store.secondary[at..at + layout.secondary_sliver_bytes()],
                    whole.sliver(SliverKind::Secondary, j),
                    "secondary {j}"
                );
            }
            for i in k_p..n {
                let at = (i - k_p) * layout.primary_sliver_bytes();
                assert_eq!(
                    &store.repair[at..at + layout.primary_sliver_bytes()],
                    whole.sliver(SliverKind::Primary, i),
                    "primary {i}"
                );
            }
        }
    }
}
