//! Decoding a blob from `k_p` primary or `k_s` secondary slivers, and verifying the result.
//!
//! What "verified" means here: the caller has checked the metadata against the blob ID
//! ([`BlobMetadata::verify`]); after decoding, every systematic row `0..k_p` of the result is
//! re-encoded and its Merkle root compared with the metadata's primary hash. The blob ID thus
//! commits to exactly the bytes returned, whichever slivers were used, and a sliver that lied
//! makes decoding fail instead of returning other bytes. When the systematic primary slivers
//! are all given, decoding is a copy and the row checks are the whole cost.
//!
//! [`verify_blob`] goes further and recomputes the blob ID from the decoded bytes (a full
//! re-encode), which also proves that the writer encoded the blob consistently.

use rayon::prelude::*;

use crate::config::BlobLayout;
use crate::encode::compute_metadata;
use crate::error::{DecodeError, SliverError};
use crate::metadata::{BlobId, BlobMetadata};
use crate::rs::{slot_unit, RsDecoder, CODEWORDS_PER_BATCH, DECODE_PACK_BELOW_SYMBOL_BYTES};
use crate::sliver::{verify_sliver, SliverKind, VerifyScratch};
use crate::util::DisjointWriter;

/// Decodes the blob from primary slivers `(index, bytes)`; at least `k_p` distinct indices.
///
/// Systematic slivers (`index < k_p`) are preferred; the rest are used only to fill gaps.
/// `metadata` must have been verified against the blob ID.
pub fn decode_primary(
    metadata: &BlobMetadata,
    slivers: &[(usize, &[u8])],
) -> Result<Vec<u8>, DecodeError> {
    decode_primary_inner(metadata, slivers, false)
}

/// Like [`decode_primary`] for slivers the caller has already verified one by one against
/// `metadata` ([`crate::verify_sliver`]), as a reader does when slivers arrive from peers: the
/// systematic rows taken straight from those slivers are not checked a second time, so that
/// decoding from the systematic slivers is a copy. Rows rebuilt by decoding are still checked.
pub fn decode_primary_verified(
    metadata: &BlobMetadata,
    verified_slivers: &[(usize, &[u8])],
) -> Result<Vec<u8>, DecodeError> {
    decode_primary_inner(metadata, verified_slivers, true)
}

fn decode_primary_inner(
    metadata: &BlobMetadata,
    slivers: &[(usize, &[u8])],
    inputs_verified: bool,
) -> Result<Vec<u8>, DecodeError> {
    let layout = metadata.layout().map_err(SliverError::from)?;
    let config = layout.config;
    let (n, k_p, k_s, ss) = (
        config.n_shards(),
        config.n_primary_source(),
        config.n_secondary_source(),
        layout.symbol_bytes,
    );
    let chosen = choose(&layout, SliverKind::Primary, slivers, k_p)?;
    let row_bytes = layout.primary_sliver_bytes();
    let mut matrix = vec![0u8; layout.padded_blob_bytes()];

    if chosen.iter().all(|(index, _)| *index < k_p) {
        for (index, data) in &chosen {
            matrix[index * row_bytes..(index + 1) * row_bytes].copy_from_slice(data);
        }
    } else {
        // Column c of the source matrix from the c-th symbol of each chosen row; a task decodes
        // a batch of columns, which share their erasure pattern.
        let present: Vec<usize> = chosen.iter().map(|(row, _)| *row).collect();
        let writer = DisjointWriter::new(&mut matrix);
        let per_task = columns_per_task(ss);
        (0..k_s.div_ceil(per_task)).into_par_iter().for_each_init(
            || (RsDecoder::default(), Vec::<u8>::new()),
            |(decoder, columns), task| {
                let first = task * per_task;
                let count = per_task.min(k_s - first);
                columns.resize(count * k_p * ss, 0);
                let mut outs: Vec<&mut [u8]> = columns.chunks_exact_mut(k_p * ss).collect();
                let symbol =
                    |c: usize, i: usize| &chosen[i].1[(first + c) * ss..(first + c + 1) * ss];
                decoder.decode_many(k_p, n, ss, &present, symbol, &mut outs);
                for row in 0..k_p {
                    // SAFETY: cells (row, first..first + count) are written by this task alone.
                    let run = unsafe { writer.slice_mut((row * k_s + first) * ss, count * ss) };
                    for (cell, column) in
                        run.chunks_exact_mut(ss).zip(columns.chunks_exact(k_p * ss))
                    {
                        cell.copy_from_slice(&column[row * ss..(row + 1) * ss]);
                    }
                }
            },
        );
    }
    // Rows that came straight from a verified sliver need no second check.
    let trusted: Vec<bool> = (0..k_p)
        .map(|row| inputs_verified && chosen.iter().any(|(index, _)| *index == row))
        .collect();
    check_rows(metadata, &layout, &matrix, &trusted)?;
    matrix.truncate(layout.blob_bytes as usize);
    Ok(matrix)
}

/// Decodes the blob from secondary slivers `(index, bytes)`; at least `k_s` distinct indices.
///
/// `metadata` must have been verified against the blob ID.
pub fn decode_secondary(
    metadata: &BlobMetadata,
    slivers: &[(usize, &[u8])],
) -> Result<Vec<u8>, DecodeError> {
    let layout = metadata.layout().map_err(SliverError::from)?;
    let config = layout.config;
    let (n, k_s, ss) = (
        config.n_shards(),
        config.n_secondary_source(),
        layout.symbol_bytes,
    );
    let chosen = choose(&layout, SliverKind::Secondary, slivers, k_s)?;
    let all_systematic = chosen.iter().all(|(column, _)| *column < k_s);
    let row_bytes = layout.primary_sliver_bytes();
    let mut matrix = vec![0u8; layout.padded_blob_bytes()];
    // Row r of the source matrix from the r-th symbol of each chosen column; a task decodes a
    // batch of rows, which share their erasure pattern.
    let present: Vec<usize> = chosen.iter().map(|(column, _)| *column).collect();
    let per_task = columns_per_task(ss);
    matrix
        .par_chunks_mut(per_task * row_bytes)
        .enumerate()
        .for_each_init(RsDecoder::default, |decoder, (task, rows)| {
            let first = task * per_task;
            let mut outs: Vec<&mut [u8]> = rows.chunks_exact_mut(row_bytes).collect();
            if all_systematic {
                for (r, row) in outs.iter_mut().enumerate() {
                    for (column, data) in &chosen {
                        let at = (first + r) * ss;
                        row[column * ss..(column + 1) * ss].copy_from_slice(&data[at..at + ss]);
                    }
                }
            } else {
                let symbol =
                    |r: usize, i: usize| &chosen[i].1[(first + r) * ss..(first + r + 1) * ss];
                decoder.decode_many(k_s, n, ss, &present, symbol, &mut outs);
            }
        });
    check_rows(metadata, &layout, &matrix, &[])?;
    matrix.truncate(layout.blob_bytes as usize);
    Ok(matrix)
}

/// Recomputes the blob ID of `blob` (a full re-encode at `n` shards) and compares.
pub fn verify_blob(blob: &[u8], blob_id: &BlobId, n_shards: usize) -> Result<(), DecodeError> {
    let config = crate::EncodingConfig::from_count(n_shards as u64)
        .map_err(|e| SliverError::Metadata(e.into()))?;
    let (computed, _) =
        compute_metadata(&config, blob).map_err(|e| SliverError::Metadata(e.into()))?;
    if computed != *blob_id {
        return Err(DecodeError::BlobIdMismatch);
    }
    Ok(())
}

/// Bytes of a packed shard a decoding task aims at. Why: large enough to pay the per-call
/// erasure locator once for many codewords, small enough that a task's packed copy (n shards)
/// stays within tens of megabytes at n = 1000.
const DECODE_PACKED_SHARD_BYTES_MAX: usize = 32 * 1024;

/// Codewords one decoding task takes: a packed batch when symbols are short enough, else one.
fn columns_per_task(symbol_bytes: usize) -> usize {
    let unit = slot_unit(symbol_bytes);
    if symbol_bytes >= DECODE_PACK_BELOW_SYMBOL_BYTES
        || unit * symbol_bytes > DECODE_PACKED_SHARD_BYTES_MAX
    {
        return 1;
    }
    let fitting = DECODE_PACKED_SHARD_BYTES_MAX / symbol_bytes / unit * unit;
    fitting.clamp(unit, CODEWORDS_PER_BATCH)
}

/// Picks `needed` distinct, well-shaped slivers, systematic ones first.
fn choose<'a>(
    layout: &BlobLayout,
    kind: SliverKind,
    slivers: &[(usize, &'a [u8])],
    needed: usize,
) -> Result<Vec<(usize, &'a [u8])>, DecodeError> {
    let n = layout.config.n_shards();
    let expected_bytes = kind.sliver_bytes(layout);
    let mut seen = vec![false; n];
    let mut chosen: Vec<(usize, &[u8])> = Vec::with_capacity(needed);
    for &(index, data) in slivers {
        if index >= n {
            return Err(SliverError::IndexOutOfRange { index, n_shards: n }.into());
        }
        if data.len() != expected_bytes {
            return Err(SliverError::Length {
                expected: expected_bytes,
                got: data.len(),
            }
            .into());
        }
        if !std::mem::replace(&mut seen[index], true) {
            chosen.push((index, data));
        }
    }
    if chosen.len() < needed {
        return Err(DecodeError::NotEnoughSlivers {
            kind,
            needed,
            got: chosen.len(),
        });
    }
    chosen.sort_by_key(|(index, _)| *index);
    chosen.truncate(needed);
    Ok(chosen)
}

/// Checks every systematic row of the decoded matrix against the metadata, but those marked in
/// `trusted`.
fn check_rows(
    metadata: &BlobMetadata,
    layout: &BlobLayout,
    matrix: &[u8],
    trusted: &[bool],
) -> Result<(), DecodeError> {
    let row_bytes = layout.primary_sliver_bytes();
    let untrusted =
        |(row_index, _): &(usize, &[u8])| !trusted.get(*row_index).copied().unwrap_or(false);
    matrix
        .par_chunks(row_bytes)
        .enumerate()
        .filter(untrusted)
        .try_for_each_init(VerifyScratch::default, |scratch, (row_index, row)| {
            verify_sliver(
                metadata,
                layout,
                SliverKind::Primary,
                row_index,
                layout.symbol_bytes,
                row,
                scratch,
            )
            .map_err(|_| DecodeError::Inconsistent { row_index })
        })
}
