//! Segment files mapped read-only for the hot read path, and a registry from mapped addresses
//! back to their file and offset.
//!
//! [`Store::get_shared`](crate::store::Store::get_shared) hands out `Bytes` views of a
//! mapping, so a record reaches the network layer without a copy. The registry lets that layer
//! go one step further: given the address of bytes it is about to write to a socket, it can
//! find the file they are mapped from and send them with `sendfile(2)` (page cache to socket,
//! no copy through user space) instead of `write(2)`. The bytes are the same either way:
//! records are immutable once committed and segments are never truncated (reclaimed ones are
//! unlinked), so the mapping and the file agree while any view is alive.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock, Weak};

use memmap2::Mmap;

/// A file and its read-only mapping, registered while it lives.
pub struct MappedFile {
    map: Mmap,
    file: File,
}

/// A mapping as the owner of a `Bytes` (keeps the mapping alive).
struct WholeMap(Arc<MappedFile>);

impl AsRef<[u8]> for WholeMap {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Live mappings by start address: (length, the mapping).
type Registry = BTreeMap<usize, (usize, Weak<MappedFile>)>;

static REGISTRY: RwLock<Registry> = RwLock::new(BTreeMap::new());

impl MappedFile {
    /// Maps the whole file at `path` as it is now, and registers the mapping.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        let file = File::open(path)?;
        // SAFETY: floe never modifies committed bytes of a segment nor truncates one (see the
        // module comment); the store only appends past every record it has indexed.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Self::register(map, file))
    }

    /// `bytes` in a sealed in-memory file (memfd), mapped and registered: memory like a heap
    /// buffer, but a view of it can leave through `sendfile(2)` without a copy through user
    /// space. The seals (no write, shrink or grow, ever) make the kernel enforce what the
    /// mapping relies on.
    pub fn sealed_copy(bytes: &[u8]) -> io::Result<Arc<Self>> {
        use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
        let fd = memfd_create(
            "floe-cache",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let mut file = File::from(fd);
        io::Write::write_all(&mut file, bytes)?;
        fcntl_add_seals(
            &file,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        // SAFETY: the file is sealed against every change (above), and only this mapping and
        // this handle refer to it.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Self::register(map, file))
    }

    /// `bytes` in an unnamed file (`O_TMPFILE`) in directory `dir`, mapped and registered: the
    /// page cache holds it (large folios on file systems that have them), the kernel may write
    /// it out under memory pressure, and it vanishes when the last view is dropped, or with
    /// the process. Nobody else can open it, and it is written once, before it is mapped.
    pub fn private_copy_in(dir: &Path, bytes: &[u8]) -> io::Result<Arc<Self>> {
        use rustix::fs::{open, Mode, OFlags};
        let fd = open(
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut file = File::from(fd);
        io::Write::write_all(&mut file, bytes)?;
        // SAFETY: an unnamed file only this process holds, never written after this point.
        let map = unsafe { Mmap::map(&file)? };
        Ok(Self::register(map, file))
    }

    /// The whole mapping as one `Bytes` (a view of it keeps it alive).
    pub fn into_bytes(self: Arc<Self>) -> bytes::Bytes {
        bytes::Bytes::from_owner(WholeMap(self))
    }

    fn register(map: Mmap, file: File) -> Arc<Self> {
        let mapped = Arc::new(Self { map, file });
        if !mapped.map.is_empty() {
            REGISTRY
                .write()
                .expect("registry lock")
                .insert(mapped.start(), (mapped.map.len(), Arc::downgrade(&mapped)));
        }
        mapped
    }

    fn start(&self) -> usize {
        self.map.as_ptr() as usize
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        crate::fault::unmapped(self.start(), self.map.len());
        if !self.map.is_empty() {
            let mut registry = REGISTRY.write().expect("registry lock");
            // Only remove our own entry: the address may already serve a newer mapping.
            if registry
                .get(&self.start())
                .is_some_and(|(_, weak)| weak.strong_count() == 0)
            {
                registry.remove(&self.start());
            }
        }
    }
}

/// The mapped file `bytes` lie in, and their offset in it, if they are a view of a live
/// mapping made by [`MappedFile::open`].
pub fn file_region(bytes: &[u8]) -> Option<(Arc<MappedFile>, u64)> {
    if bytes.is_empty() {
        return None;
    }
    let start = bytes.as_ptr() as usize;
    let registry = REGISTRY.read().expect("registry lock");
    let (&base, (len, weak)) = registry.range(..=start).next_back()?;
    if start + bytes.len() > base + len {
        return None;
    }
    let mapped = weak.upgrade()?;
    Some((mapped, (start - base) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_of_a_mapping_lead_back_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, (0..=255u8).cycle().take(10_000).collect::<Vec<u8>>()).unwrap();
        let mapped = MappedFile::open(&path).unwrap();
        let view = &mapped.bytes()[1000..3000];
        let (found, offset) = file_region(view).unwrap();
        assert!(Arc::ptr_eq(&found, &mapped));
        assert_eq!(offset, 1000);
        assert!(
            file_region(&[1, 2, 3]).is_none(),
            "heap bytes are not mapped"
        );
        let copy = view.to_vec();
        assert!(file_region(&copy).is_none());
        drop(found);
        let start = mapped.bytes().as_ptr() as usize;
        drop(mapped);
        assert!(!REGISTRY.read().unwrap().contains_key(&start));
    }

    #[test]
    fn sealed_copies_are_mapped_files_nobody_can_change() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = MappedFile::sealed_copy(&data).unwrap().into_bytes();
        assert_eq!(&bytes[..], &data[..]);
        let view = bytes.slice(5000..9000);
        let (found, offset) = file_region(&view).unwrap();
        assert_eq!(offset, 5000);
        let mut file = found.file();
        assert!(
            io::Write::write_all(&mut file, b"x").is_err(),
            "sealed against writes"
        );
        assert!(
            found.file().set_len(10).is_err(),
            "sealed against shrinking"
        );
    }
}
