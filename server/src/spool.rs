//! Big blobs on their way in: the body spooled to a data disk, encoded in strips
//! ([`floe_codec::encode_in_strips`]) into sliver files beside it, and read back a batch of
//! slivers at a time to be stored here and sent to peers. Anonymous memory stays bounded
//! whatever the blob's size: one body chunk, the encoder's strips and leaf matrix, and the
//! batches in flight (see [`Spooled::memory_bytes`]).
//!
//! The files live in `spool_dir` (default `<first data dir>/spool`), one set per upload, and
//! are removed when the upload's [`Spooled`] is dropped, however the request ends (a client
//! that hangs up, an error, a panic); a node killed mid-upload removes what is left when it
//! starts ([`clean`]). The files are never part of the store: a partial upload is never
//! visible. File I/O runs on glommio's blocking pool, off the core.
//!
//! Boundary: spool files only; what is stored and where is the publisher's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use floe_codec::{
    encode_in_strips, encode_sliver, BlobId, BlobLayout, BlobMetadata, Sliver, SliverKind,
    StripStore,
};
use hyper::StatusCode;

use crate::http::body::BodySource;
use crate::http::error::ApiError;

/// Bytes of body gathered before one write to the spool file, at most. Why: large sequential
/// writes, and at most two chunks in memory (one being written, one filling).
pub const BODY_CHUNK_BYTES_MAX: usize = 4 << 20;

/// The encoder's strip size, at most. Why: enough rows (or columns) per strip that every core
/// has some (a 1.2 GB blob at n = 1000 has rows of 5.4 MB: one per strip of 8 MiB left one core
/// working), and large sequential spool I/O; the encoder holds twice this (or two rows of `n`
/// symbols, if larger) besides its leaf matrix.
pub const STRIP_BYTES_MAX: usize = 64 << 20;

/// How an upload uses memory, sized to the core's buffer budget.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Body bytes gathered per spool write.
    pub chunk_bytes: usize,
    /// The encoder's strip size.
    pub strip_bytes: usize,
}

impl Plan {
    /// At most a sixteenth of `budget` per body chunk and an eighth per strip.
    pub fn for_budget(budget: u64) -> Self {
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        Self {
            chunk_bytes: (budget / 16).clamp(64 << 10, BODY_CHUNK_BYTES_MAX),
            strip_bytes: (budget / 8).clamp(1 << 20, STRIP_BYTES_MAX),
        }
    }

    /// The most anonymous memory an upload of `layout` holds at once besides its batches:
    /// two body chunks, the encoder's strips and its leaf matrix.
    pub fn memory_bytes(&self, layout: &BlobLayout) -> u64 {
        let n = layout.config.n_shards();
        (2 * self.chunk_bytes
            + floe_codec::strip_memory_bytes(layout, self.strip_bytes)
            + floe_codec::leaf_matrix_bytes(n)) as u64
    }
}

/// Uploads spooled on the node now, in bytes of disk they may take (for admission).
#[derive(Default)]
pub struct SpoolUse {
    bytes: AtomicU64,
}

/// Removes what an earlier run left in the spool directory (a node killed mid-upload), and
/// creates it.
pub fn clean(dir: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("upload-"))
        {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Disk bytes a blob of `layout` takes in the spool: the blob, its secondary slivers and its
/// repair primary slivers.
pub fn disk_bytes(layout: &BlobLayout) -> u64 {
    let n = layout.config.n_shards() as u64;
    let k_p = layout.config.n_primary_source() as u64;
    layout.blob_bytes
        + n * layout.secondary_sliver_bytes() as u64
        + (n - k_p) * layout.primary_sliver_bytes() as u64
}

/// The three files of one upload.
struct Files {
    blob: File,
    secondary: File,
    repair: File,
    paths: Vec<PathBuf>,
}

impl Drop for Files {
    fn drop(&mut self) {
        // Unlinking gigabytes takes the file system a while: not on the serving core. A node
        // that stops first leaves them for the next start to remove (`clean`).
        let paths = std::mem::take(&mut self.paths);
        let removal = std::thread::Builder::new()
            .name("floe-spool-rm".into())
            .spawn(move || {
                for path in &paths {
                    let _ = std::fs::remove_file(path);
                }
            });
        if let Err(err) = removal {
            tracing::warn!(%err, "could not start removing spool files; the next start removes them");
        }
    }
}

/// A disk reservation against [`SpoolUse`]; given back on drop.
struct DiskReservation {
    use_: Arc<SpoolUse>,
    bytes: u64,
    dir: PathBuf,
}

impl DiskReservation {
    /// Promises `needed` bytes in all to this upload: 507 `noSpace` if the disk does not have
    /// them free, 503 `spoolBusy` if it does only without what uploads under way were promised
    /// (counted conservatively: their promises include what they already wrote).
    fn grow_to(&mut self, needed: u64) -> Result<(), ApiError> {
        if needed <= self.bytes {
            return Ok(());
        }
        let more = needed - self.bytes;
        let free = crate::metrics::fs_space(&self.dir).map_or(0, |(free, _)| free);
        // What this upload wrote so far is no longer free: count its promise once.
        if more > free {
            return Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "noSpace",
                format!(
                    "the spool disk ({}) has {free} bytes free; this blob needs {needed} while \
                     it is encoded (the blob and its slivers); nothing was stored",
                    self.dir.display()
                ),
            ));
        }
        let promised = self.use_.bytes.fetch_add(more, Ordering::AcqRel) - self.bytes;
        if promised + more > free {
            // Room for this one alone, not with the uploads under way: later.
            self.use_.bytes.fetch_sub(more, Ordering::AcqRel);
            return Err(ApiError::unavailable(
                "spoolBusy",
                format!(
                    "the spool disk ({}) has {free} bytes free, {promised} of them promised to \
                     uploads under way; this blob needs {needed}; retry when they are done",
                    self.dir.display()
                ),
            ));
        }
        self.bytes = needed;
        Ok(())
    }
}

impl Drop for DiskReservation {
    fn drop(&mut self) {
        self.use_.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// An upload being spooled, then its encoding.
pub struct Spooled {
    plan: Plan,
    files: Arc<Files>,
    disk: DiskReservation,
    layout: Option<BlobLayout>,
    blob_id: Option<BlobId>,
    metadata: Option<BlobMetadata>,
}

/// Why a spooled upload failed.
fn spool_error(what: &str, err: io::Error) -> ApiError {
    if err.raw_os_error() == Some(libc::ENOSPC) || err.kind() == io::ErrorKind::StorageFull {
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "noSpace",
            format!("the spool disk is full while {what}; nothing was stored"),
        );
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "spoolError",
        format!("{what}: {err}"),
    )
}

static NEXT_UPLOAD: AtomicU64 = AtomicU64::new(0);

impl Spooled {
    /// Creates an upload's files in `dir`; disk space is promised as the body grows
    /// ([`Spooled::promise`]).
    pub fn create(dir: &Path, use_: &Arc<SpoolUse>, plan: Plan) -> Result<Self, ApiError> {
        let disk = DiskReservation {
            use_: use_.clone(),
            bytes: 0,
            dir: dir.to_path_buf(),
        };
        let id = format!(
            "upload-{}-{}",
            std::process::id(),
            NEXT_UPLOAD.fetch_add(1, Ordering::Relaxed)
        );
        let paths: Vec<PathBuf> = ["blob", "secondary", "repair"]
            .iter()
            .map(|kind| dir.join(format!("{id}.{kind}")))
            .collect();
        let open = |path: &PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| spool_error("creating a spool file", e))
        };
        let mut opened = Vec::with_capacity(paths.len());
        for path in &paths {
            match open(path) {
                Ok(file) => opened.push(file),
                Err(err) => {
                    for made in &paths[..opened.len()] {
                        let _ = std::fs::remove_file(made);
                    }
                    return Err(err);
                }
            }
        }
        let [blob, secondary, repair]: [File; 3] = opened.try_into().expect("one file per path");
        Ok(Self {
            plan,
            files: Arc::new(Files {
                blob,
                secondary,
                repair,
                paths,
            }),
            disk,
            layout: None,
            blob_id: None,
            metadata: None,
        })
    }

    /// Promises the disk space a blob of `layout` takes while it is encoded (the blob and its
    /// slivers): 507 `noSpace` if the spool disk cannot hold it, 503 `spoolBusy` if it can
    /// once the uploads under way are done.
    pub fn promise(&mut self, layout: &BlobLayout) -> Result<(), ApiError> {
        self.disk.grow_to(disk_bytes(layout))
    }

    /// Writes the body to the blob file in chunks of the plan's size, at most `limit` bytes in
    /// all, promising disk space as it grows; a body that fails (stalls, ends early) is an
    /// error. Returns the blob's length.
    pub async fn receive(
        &mut self,
        config: &floe_codec::EncodingConfig,
        body: &mut impl BodySource,
        limit: u64,
    ) -> Result<u64, ApiError> {
        let mut written = 0u64;
        let chunk_bytes = self.plan.chunk_bytes;
        let mut chunk = BytesMut::with_capacity(chunk_bytes);
        loop {
            let done = match body.next_data().await? {
                Some(data) => {
                    chunk.extend_from_slice(&data);
                    false
                }
                None => true,
            };
            if written + chunk.len() as u64 > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bodyTooLarge",
                    format!("the body is longer than {limit} bytes, the largest blob here"),
                ));
            }
            if chunk.len() >= chunk_bytes || (done && !chunk.is_empty()) {
                let so_far = config.layout(written + chunk.len() as u64).map_err(|e| {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "bodyTooLarge", e.to_string())
                })?;
                self.promise(&so_far)?;
                let full = std::mem::replace(&mut chunk, BytesMut::with_capacity(chunk_bytes));
                let files = self.files.clone();
                let at = written;
                written += full.len() as u64;
                glommio::executor()
                    .spawn_blocking(move || files.blob.write_all_at(&full, at))
                    .await
                    .map_err(|e| spool_error("spooling the body", e))?;
            }
            if done {
                return Ok(written);
            }
        }
    }

    /// Encodes the spooled blob of `layout` on the blocking pool; sets the blob ID and metadata.
    pub async fn encode(&mut self, layout: BlobLayout) -> Result<(), ApiError> {
        let files = self.files.clone();
        let strip_bytes = self.plan.strip_bytes;
        let encoded = glommio::executor()
            .spawn_blocking(move || {
                let mut store = FileStrips {
                    files: &files,
                    row_bytes: layout.primary_sliver_bytes() as u64,
                    blob_bytes: layout.blob_bytes,
                };
                let mut leaves = Vec::new();
                encode_in_strips(&layout, &mut store, strip_bytes, &mut leaves)
            })
            .await
            .map_err(|e| spool_error("encoding the spooled blob", e))?;
        self.layout = Some(layout);
        self.blob_id = Some(encoded.0);
        self.metadata = Some(encoded.1);
        Ok(())
    }

    pub fn layout(&self) -> &BlobLayout {
        self.layout.as_ref().expect("encoded")
    }

    pub fn blob_id(&self) -> &BlobId {
        self.blob_id.as_ref().expect("encoded")
    }

    pub fn metadata(&self) -> &BlobMetadata {
        self.metadata.as_ref().expect("encoded")
    }

    /// The BCS bodies of the slivers `wanted` (kind and sliver index), read on the blocking
    /// pool.
    pub async fn slivers(
        &self,
        wanted: Vec<(SliverKind, usize)>,
    ) -> Result<Vec<Vec<u8>>, ApiError> {
        let files = self.files.clone();
        let layout = *self.layout();
        glommio::executor()
            .spawn_blocking(move || {
                wanted
                    .into_iter()
                    .map(|(kind, index)| read_sliver(&files, &layout, kind, index))
                    .collect::<io::Result<Vec<_>>>()
            })
            .await
            .map_err(|e| spool_error("reading spooled slivers", e))
    }
}

/// One sliver's BCS body from the upload's files.
fn read_sliver(
    files: &Files,
    layout: &BlobLayout,
    kind: SliverKind,
    index: usize,
) -> io::Result<Vec<u8>> {
    let k_p = layout.config.n_primary_source();
    let (file, offset, len) = match kind {
        SliverKind::Primary if index < k_p => (
            &files.blob,
            (index * layout.primary_sliver_bytes()) as u64,
            layout.primary_sliver_bytes(),
        ),
        SliverKind::Primary => (
            &files.repair,
            ((index - k_p) * layout.primary_sliver_bytes()) as u64,
            layout.primary_sliver_bytes(),
        ),
        SliverKind::Secondary => (
            &files.secondary,
            (index * layout.secondary_sliver_bytes()) as u64,
            layout.secondary_sliver_bytes(),
        ),
    };
    let mut data = vec![0u8; len];
    read_padded(file, offset, &mut data)?;
    Ok(encode_sliver(&Sliver {
        kind,
        index: index as u16,
        symbol_bytes: layout.symbol_bytes as u16,
        data,
    }))
}

/// Reads `out.len()` bytes at `offset`, zeros past the file's end.
fn read_padded(file: &File, offset: u64, out: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        match file.read_at(&mut out[done..], offset + done as u64)? {
            0 => break,
            read => done += read,
        }
    }
    out[done..].fill(0);
    Ok(())
}

/// The encoder's view of an upload's files.
struct FileStrips<'a> {
    files: &'a Files,
    row_bytes: u64,
    blob_bytes: u64,
}

impl StripStore for FileStrips<'_> {
    fn read_rows(&mut self, first_row: usize, out: &mut [u8]) -> io::Result<()> {
        let offset = first_row as u64 * self.row_bytes;
        let available = self.blob_bytes.saturating_sub(offset).min(out.len() as u64) as usize;
        read_padded(&self.files.blob, offset, &mut out[..available])?;
        out[available..].fill(0);
        Ok(())
    }

    fn write_secondary(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.files.secondary.write_all_at(data, offset)
    }

    fn read_secondary(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_padded(&self.files.secondary, offset, out)
    }

    fn write_repair(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.files.repair.write_all_at(data, offset)
    }
}

/// Where the slivers of a blob being published come from: memory (small blobs, encoded at
/// once) or the spool (big ones).
pub enum Source {
    Memory(floe_codec::EncodedBlob),
    Spooled(Spooled),
}

impl Source {
    pub fn blob_id(&self) -> &BlobId {
        match self {
            Self::Memory(encoded) => encoded.blob_id(),
            Self::Spooled(spooled) => spooled.blob_id(),
        }
    }

    pub fn metadata(&self) -> &BlobMetadata {
        match self {
            Self::Memory(encoded) => encoded.metadata(),
            Self::Spooled(spooled) => spooled.metadata(),
        }
    }

    pub fn layout(&self) -> &BlobLayout {
        match self {
            Self::Memory(encoded) => encoded.layout(),
            Self::Spooled(spooled) => spooled.layout(),
        }
    }

    /// The BCS bodies of the slivers `wanted`.
    pub async fn slivers(
        self: &Rc<Self>,
        wanted: Vec<(SliverKind, usize)>,
    ) -> Result<Vec<Vec<u8>>, ApiError> {
        match &**self {
            Self::Memory(encoded) => Ok(wanted
                .into_iter()
                .map(|(kind, index)| encoded.sliver_bcs(kind, index))
                .collect()),
            Self::Spooled(spooled) => spooled.slivers(wanted).await,
        }
    }
}
