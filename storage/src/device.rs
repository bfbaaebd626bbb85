//! The narrow device interface the store is written against, and an in-memory implementation
//! that injects faults and produces crash images, for tests.
//!
//! The store only ever: creates, opens, lists and removes files in one directory; writes whole
//! blocks at block-aligned offsets; reads byte ranges; syncs a file; syncs the directory. That
//! is all a backend implements. The real backend (glommio `DmaFile`, io_uring, O_DIRECT) is the
//! next step of issue 3; the traits are `async` for it, and every future of [`MemDir`] is ready
//! at once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use crate::format::BLOCK_BYTES;

/// The errno of a full device (`ENOSPC` on Linux), as backends report it.
pub const ENOSPC: i32 = 28;

/// A directory of files (one data directory, on one disk).
// The store runs one instance per core (thread-per-core): futures are never sent across
// threads, so the trait does not promise `Send` futures.
#[allow(async_fn_in_trait)]
pub trait Dir {
    type File: File;
    /// Creates a new, empty file; an existing one is an error.
    async fn create(&self, name: &str) -> io::Result<Self::File>;
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creates and removes durable.
    async fn sync(&self) -> io::Result<()>;
}

/// One file of a [`Dir`].
#[allow(async_fn_in_trait)]
pub trait File {
    /// Reads exactly `len` bytes at `offset`; short files are an `UnexpectedEof` error.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Reads exactly `len` bytes at `offset` as a shared view. Backends that can map the file
    /// return a view of the mapping (no copy); the default reads into a new buffer.
    async fn read_shared(&self, offset: u64, len: usize) -> io::Result<bytes::Bytes> {
        self.read_at(offset, len).await.map(bytes::Bytes::from)
    }
    /// Reads exactly `out.len()` bytes at `offset` into `out`. Several may be in flight at
    /// once on one file (the store reads large records in pieces and checks each as it lands).
    async fn read_into(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let read = self.read_at(offset, out.len()).await?;
        out.copy_from_slice(&read);
        Ok(())
    }
    /// Writes whole blocks at a block-aligned offset.
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable.
    async fn sync(&self) -> io::Result<()>;
    async fn size_bytes(&self) -> io::Result<u64>;
}

/// Faults a [`MemDir`] injects, each drawn from a seeded generator (xorshift) so a failing
/// test replays from its seed.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Chance in 1/1000 that a read fails with an I/O error.
    pub read_error_per_mille: u32,
    /// Chance in 1/1000 that a write fails with an I/O error (after writing a random prefix).
    pub write_error_per_mille: u32,
    /// Chance in 1/1000 that a sync fails (the writes stay unsynced).
    pub sync_error_per_mille: u32,
    /// Total bytes the directory's files may occupy; a write past it fails with `ENOSPC`.
    pub capacity_bytes: Option<u64>,
    /// The device is gone: every operation fails with `EIO`, as on a dead disk.
    pub device_failed: bool,
}

#[derive(Clone, Default)]
struct MemFileState {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What reads see: durable plus the writes since the last sync.
    current: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct MemDirState {
    files: BTreeMap<String, Rc<RefCell<MemFileState>>>,
    /// Names as they were at the last directory sync.
    durable_names: Vec<String>,
    faults: Faults,
    rng: u64,
}

impl MemDirState {
    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next_random() % 1000 < u64::from(per_mille)
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn used_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| f.borrow().current.len() as u64)
            .sum()
    }
}

/// An in-memory [`Dir`] with fault injection and crash images.
#[derive(Clone)]
pub struct MemDir {
    state: Rc<RefCell<MemDirState>>,
}

/// A file of a [`MemDir`].
pub struct MemFile {
    dir: Rc<RefCell<MemDirState>>,
    file: Rc<RefCell<MemFileState>>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

/// The errno of a failed device (`EIO` on Linux).
pub const EIO: i32 = 5;

impl MemDirState {
    /// `EIO` while the device is failed ([`Faults::device_failed`]).
    fn alive(&self) -> io::Result<()> {
        if self.faults.device_failed {
            Err(io::Error::from_raw_os_error(EIO))
        } else {
            Ok(())
        }
    }
}

impl MemDir {
    /// An empty directory; `seed` drives every injected fault.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Rc::new(RefCell::new(MemDirState {
                rng: seed | 1,
                ..Default::default()
            })),
        }
    }

    /// Replaces the faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.state.borrow_mut().faults = faults;
    }

    /// The directory as it could be found after power loss now: files created since the last
    /// directory sync may be gone, and each unsynced write may have reached the disk whole, in
    /// part (a prefix of 512-byte sectors: a torn write) or not at all.
    pub fn crash_image(&self, seed: u64) -> MemDir {
        let mut state = self.state.borrow_mut();
        let image = MemDir::new(seed);
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        {
            let mut image_state = image.state.borrow_mut();
            for (name, file) in &state.files {
                if !state.durable_names.contains(name) && next() % 2 == 0 {
                    continue;
                }
                let file = file.borrow();
                let mut disk = file.durable.clone();
                for (offset, data) in &file.unsynced {
                    let sectors = data.len() / 512;
                    let kept = match next() % 3 {
                        0 => 0,
                        1 => sectors,
                        _ => (next() % (sectors as u64 + 1)) as usize,
                    };
                    apply(&mut disk, *offset, &data[..kept * 512]);
                }
                image_state.files.insert(
                    name.clone(),
                    Rc::new(RefCell::new(MemFileState {
                        durable: disk.clone(),
                        current: disk,
                        unsynced: Vec::new(),
                    })),
                );
            }
            image_state.durable_names = image_state.files.keys().cloned().collect();
        }
        state.rng ^= seed;
        image
    }

    /// Flips one bit of a file's durable and current bytes (silent corruption on the medium).
    pub fn flip_bit(&self, name: &str, bit: u64) {
        let state = self.state.borrow();
        let mut file = state.files.get(name).expect("file exists").borrow_mut();
        let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
        if byte < file.durable.len() {
            file.durable[byte] ^= mask;
        }
        if byte < file.current.len() {
            file.current[byte] ^= mask;
        }
    }

    /// Writes `data` over a file's durable and current bytes at `offset`, growing it if need
    /// be (arbitrary damage on the medium: what the fuzzer of on-disk records writes).
    pub fn overwrite(&self, name: &str, offset: u64, data: &[u8]) {
        let state = self.state.borrow();
        let mut file = state.files.get(name).expect("file exists").borrow_mut();
        apply(&mut file.durable, offset, data);
        apply(&mut file.current, offset, data);
    }

    /// Names of the files as they are now.
    pub fn names(&self) -> Vec<String> {
        self.state.borrow().files.keys().cloned().collect()
    }

    /// Size of a file's current bytes.
    pub fn file_bytes(&self, name: &str) -> Option<u64> {
        let state = self.state.borrow();
        state
            .files
            .get(name)
            .map(|f| f.borrow().current.len() as u64)
    }
}

fn apply(disk: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if disk.len() < end {
        disk.resize(end, 0);
    }
    disk[offset as usize..end].copy_from_slice(data);
}

impl Dir for MemDir {
    type File = MemFile;

    async fn create(&self, name: &str) -> io::Result<MemFile> {
        let mut state = self.state.borrow_mut();
        state.alive()?;
        if state.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let file = Rc::new(RefCell::new(MemFileState::default()));
        state.files.insert(name.to_string(), file.clone());
        Ok(MemFile {
            dir: self.state.clone(),
            file,
        })
    }

    async fn open(&self, name: &str) -> io::Result<MemFile> {
        let state = self.state.borrow();
        state.alive()?;
        let file = state
            .files
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(MemFile {
            dir: self.state.clone(),
            file: file.clone(),
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.alive()?;
        state
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let state = self.state.borrow();
        state.alive()?;
        Ok(state.files.keys().cloned().collect())
    }

    async fn sync(&self) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.alive()?;
        state.durable_names = state.files.keys().cloned().collect();
        Ok(())
    }
}

impl File for MemFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut dir = self.dir.borrow_mut();
        dir.alive()?;
        let per_mille = dir.faults.read_error_per_mille;
        if dir.roll(per_mille) {
            return Err(injected("read"));
        }
        let file = self.file.borrow();
        let end = offset as usize + len;
        if end > file.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        Ok(file.current[offset as usize..end].to_vec())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        assert!(
            (offset as usize).is_multiple_of(BLOCK_BYTES) && data.len().is_multiple_of(BLOCK_BYTES),
            "block-aligned"
        );
        let mut dir = self.dir.borrow_mut();
        dir.alive()?;
        let grows = (offset as usize + data.len()).saturating_sub(self.file.borrow().current.len());
        if let Some(capacity) = dir.faults.capacity_bytes {
            if dir.used_bytes() + grows as u64 > capacity {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        }
        let per_mille = dir.faults.write_error_per_mille;
        let fails = dir.roll(per_mille);
        // A failed write may still have put some of its sectors down.
        let written = if fails {
            (dir.next_random() % (data.len() as u64 / 512 + 1)) as usize * 512
        } else {
            data.len()
        };
        let mut file = self.file.borrow_mut();
        apply(&mut file.current, offset, &data[..written]);
        file.unsynced.push((offset, data[..written].to_vec()));
        if fails {
            return Err(injected("write"));
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        let mut dir = self.dir.borrow_mut();
        dir.alive()?;
        let per_mille = dir.faults.sync_error_per_mille;
        if dir.roll(per_mille) {
            return Err(injected("sync"));
        }
        let mut file = self.file.borrow_mut();
        file.durable = file.current.clone();
        file.unsynced.clear();
        Ok(())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.borrow().current.len() as u64)
    }
}
