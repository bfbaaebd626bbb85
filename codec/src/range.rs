//! Byte ranges of a blob mapped onto its systematic primary slivers.

use crate::config::BlobLayout;
use crate::error::RangeError;

/// The part of one systematic primary sliver that a byte range covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowSpan {
    /// Primary sliver (row) index, `< k_p`.
    pub row_index: usize,
    /// First byte within the sliver.
    pub start_bytes: usize,
    /// One past the last byte within the sliver.
    pub end_bytes: usize,
}

/// Which systematic primary slivers, and which bytes of each, cover blob bytes `[start, end)`.
///
/// An empty range (`start == end <= length`) covers nothing and yields no spans.
pub fn byte_range_rows(
    layout: &BlobLayout,
    start: u64,
    end: u64,
) -> Result<Vec<RowSpan>, RangeError> {
    if start > end || end > layout.blob_bytes {
        return Err(RangeError {
            start,
            end,
            blob_bytes: layout.blob_bytes,
        });
    }
    let row_bytes = layout.primary_sliver_bytes() as u64;
    let mut spans = Vec::new();
    let mut at = start;
    while at < end {
        let row_index = at / row_bytes;
        let row_end = ((row_index + 1) * row_bytes).min(end);
        spans.push(RowSpan {
            row_index: row_index as usize,
            start_bytes: (at - row_index * row_bytes) as usize,
            end_bytes: (row_end - row_index * row_bytes) as usize,
        });
        at = row_end;
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, EncodingConfig};

    #[test]
    fn spans_reassemble_every_range_of_a_small_blob() {
        let config = EncodingConfig::new(4).unwrap();
        let blob: Vec<u8> = (0..97u8).collect();
        let encoded = encode(&config, &blob).unwrap();
        let layout = *encoded.layout();
        for start in 0..=blob.len() as u64 {
            for end in start..=blob.len() as u64 {
                let mut got = Vec::new();
                for span in byte_range_rows(&layout, start, end).unwrap() {
                    assert!(span.row_index < config.n_primary_source());
                    got.extend_from_slice(
                        &encoded.primary_sliver(span.row_index)[span.start_bytes..span.end_bytes],
                    );
                }
                assert_eq!(got, &blob[start as usize..end as usize], "[{start}, {end})");
            }
        }
    }

    #[test]
    fn ranges_past_the_end_or_reversed_are_refused() {
        let layout = EncodingConfig::new(4).unwrap().layout(10).unwrap();
        assert!(byte_range_rows(&layout, 0, 11).is_err());
        assert!(byte_range_rows(&layout, 5, 4).is_err());
        assert!(byte_range_rows(&layout, 10, 10).unwrap().is_empty());
    }
}
