//! The real backend: files in a data directory, read and written with glommio's `DmaFile`
//! (io_uring, `O_DIRECT`: no page cache, so every write the store acknowledges went to the
//! device and was made durable by `fdatasync`).
//!
//! Shared reads map the segment instead ([`crate::mapped`]): the page cache serves hot data.
//!
//! Must run inside a glommio executor. glommio registers `io_memory` bytes of locked memory per
//! executor for its DMA buffers; `ulimit -l` must allow it (this machine allows 8 MiB, so tests
//! ask for 1 MiB; an operator raises the limit for production sizes, see README).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use std::cell::RefCell;

use crate::mapped::MappedFile;
use glommio::io::{DmaFile, OpenOptions};

use crate::device::{Dir, File};

/// A data directory on one disk.
#[derive(Clone, Debug)]
pub struct GlommioDir {
    path: PathBuf,
}

/// A segment file opened for direct I/O, and mapped for shared reads.
#[derive(Clone)]
pub struct GlommioFile {
    file: Rc<DmaFile>,
    path: Rc<Path>,
    /// The file mapped read-only, as long as it was when mapped; remapped when a read goes
    /// past it (the active segment grows).
    /// The whole mapping as one `Bytes`, so that a read is a slice of it (a reference count,
    /// no allocation).
    map: Rc<RefCell<Option<bytes::Bytes>>>,
}

fn to_io(err: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(err)
}

/// Name of the file [`GlommioDir::open`] probes polled I/O with; removed right after.
const IOPOLL_PROBE_NAME: &str = ".floe-iopoll-probe";

impl GlommioDir {
    /// The directory at `path`, created if missing. Call from the executor that will use it.
    ///
    /// glommio decides once per block device whether to complete its reads by polling
    /// (`IORING_SETUP_IOPOLL`), by trying a read on the first file it opens there. On an empty
    /// file that read does no I/O and wrongly succeeds, after which every read on a device
    /// without poll queues (virtio disks, most cloud volumes) fails with `EOPNOTSUPP` (glommio
    /// issue 605). So the directory is opened by first probing with a one-block file that has
    /// real data on the device.
    pub async fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating data directory {}: {e}", path.display()),
            )
        })?;
        let probe = path.join(IOPOLL_PROBE_NAME);
        {
            let mut file = std::fs::File::create(&probe)?;
            std::io::Write::write_all(&mut file, &[0u8; crate::format::BLOCK_BYTES])?;
            file.sync_all()?;
        }
        let file = DmaFile::open(&probe).await.map_err(to_io)?;
        file.close().await.map_err(to_io)?;
        std::fs::remove_file(&probe)?;
        Ok(Self { path })
    }

    async fn open_with(&self, name: &str, create_new: bool) -> io::Result<GlommioFile> {
        let path = self.path.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create_new)
            .dma_open(&path)
            .await
            .map_err(to_io)?;
        Ok(GlommioFile {
            file: Rc::new(file),
            path: path.into(),
            map: Rc::new(RefCell::new(None)),
        })
    }
}

impl Dir for GlommioDir {
    type File = GlommioFile;

    async fn create(&self, name: &str) -> io::Result<GlommioFile> {
        self.open_with(name, true).await
    }

    async fn open(&self, name: &str) -> io::Result<GlommioFile> {
        self.open_with(name, false).await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        // Rare (a torn segment at startup, a reclaimed segment): a blocking unlink is fine.
        std::fs::remove_file(self.path.join(name))
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            if let Some(name) = entry?.file_name().to_str() {
                if name != IOPOLL_PROBE_NAME {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    async fn sync(&self) -> io::Result<()> {
        // fsync on the directory makes file creation and removal durable.
        std::fs::File::open(&self.path)?.sync_all()
    }
}

impl GlommioFile {
    /// Exactly `len` bytes at `offset`, in glommio's DMA buffer.
    async fn read_exactly(&self, offset: u64, len: usize) -> io::Result<glommio::io::ReadResult> {
        let read = self.file.read_at(offset, len).await.map_err(to_io)?;
        if read.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: read {} of {len} bytes at {offset}",
                    self.path.display(),
                    read.len()
                ),
            ));
        }
        Ok(read)
    }
}

impl File for GlommioFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        Ok(self.read_exactly(offset, len).await?.to_vec())
    }

    async fn read_into(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        out.copy_from_slice(&self.read_exactly(offset, out.len()).await?);
        Ok(())
    }

    async fn read_shared(&self, offset: u64, len: usize) -> io::Result<bytes::Bytes> {
        let end = offset as usize + len;
        let current = self.map.borrow().clone();
        let map = match current {
            Some(map) if map.len() >= end => map,
            _ => {
                // The active segment grows: map it again, as long as it is now. Views of the
                // old mapping stay valid (they hold it).
                let map = MappedFile::open(&self.path)?.into_bytes();
                *self.map.borrow_mut() = Some(map.clone());
                map
            }
        };
        if map.len() < end {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: mapped read of {len} bytes at {offset} past the end ({})",
                    self.path.display(),
                    map.len()
                ),
            ));
        }
        Ok(map.slice(offset as usize..end))
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            let mut buffer = self.file.alloc_dma_buffer(rest.len());
            buffer.as_bytes_mut().copy_from_slice(rest);
            let written = self
                .file
                .write_at(buffer, offset + done as u64)
                .await
                .map_err(to_io)?;
            if written == 0 {
                // A device that takes nothing more is full; say so, as the next try would.
                return Err(io::Error::from_raw_os_error(crate::device::ENOSPC));
            }
            // A short write (a nearly full disk takes what fits): write the rest, which either
            // fits or fails with the reason.
            done += written;
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(to_io)
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(to_io)
    }
}
