//! `floe blob-id` of files too big to encode in memory: the codec's strip encoder
//! (`floe_codec::encode_in_strips`) reading the file where it lies and keeping the secondary
//! slivers in an unnamed temporary file (about 1.5x the file at n = 1000; gone when the
//! process ends). Memory: the strips and the `n^2 * 32`-byte leaf matrix, whatever the size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use floe_codec::{encode_in_strips, BlobId, EncodingConfig, StripStore};

/// Files larger than this are encoded in strips. Why: in memory a blob costs about 5.5x its
/// size while it is encoded; above a GiB that is more than a workstation has to spare.
pub const STRIPS_FROM_BYTES: u64 = 1 << 30;

/// The strip size. Why: as the node's (enough rows per strip for every core).
const STRIP_BYTES: usize = 64 << 20;

/// The encoder's view: the blob from the file, secondary slivers in a temporary file, repair
/// primary slivers dropped (the blob ID does not need them kept).
struct FileBlob {
    blob: File,
    blob_bytes: u64,
    row_bytes: u64,
    secondary: File,
}

fn read_padded(file: &File, offset: u64, out: &mut [u8], end: u64) -> io::Result<()> {
    let available = end.saturating_sub(offset).min(out.len() as u64) as usize;
    file.read_exact_at(&mut out[..available], offset)?;
    out[available..].fill(0);
    Ok(())
}

impl StripStore for FileBlob {
    fn read_rows(&mut self, first_row: usize, out: &mut [u8]) -> io::Result<()> {
        read_padded(
            &self.blob,
            first_row as u64 * self.row_bytes,
            out,
            self.blob_bytes,
        )
    }

    fn write_secondary(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.secondary.write_all_at(data, offset)
    }

    fn read_secondary(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.secondary.read_exact_at(out, offset)
    }

    fn write_repair(&mut self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// The blob ID of `path` at `config`, encoded in strips; the temporary file goes in `temp`.
pub fn blob_id(path: &Path, config: &EncodingConfig, temp: &Path) -> Result<BlobId> {
    let blob = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let blob_bytes = blob.metadata()?.len();
    let layout = config.layout(blob_bytes)?;
    let secondary = tempfile::tempfile_in(temp)
        .with_context(|| format!("creating a temporary file in {}", temp.display()))?;
    let mut store = FileBlob {
        blob,
        blob_bytes,
        row_bytes: layout.primary_sliver_bytes() as u64,
        secondary,
    };
    let mut leaves = Vec::new();
    let (blob_id, _) = encode_in_strips(&layout, &mut store, STRIP_BYTES, &mut leaves)
        .with_context(|| format!("encoding {}", path.display()))?;
    Ok(blob_id)
}
