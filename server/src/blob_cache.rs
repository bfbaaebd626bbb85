//! The hot-blob cache of a core: verified whole blobs, bounded in bytes, and the single-flight
//! fill that makes a burst of reads of an uncached blob gather and decode it once.
//!
//! Invariant: a cached blob is exactly the bytes its ID commits to (it was verified or read
//! from this node's checked records before it was inserted) and is dropped once its end epoch
//! passes or it is deleted.

use std::rc::Rc;

use bytes::Bytes;
use floe_codec::BlobId;
use floe_storage::mapped::MappedFile;

use crate::state::CoreState;

/// Verified whole blobs by ID with their end epoch, least recently used evicted first, bounded
/// in bytes. An entry past its end epoch is dropped when it is next looked up.
///
/// Blobs of at least [`SPILL_BYTES_MIN`] are kept in files rather than heap buffers: a
/// response body that is a view of one leaves with `sendfile(2)`, as slivers do, instead of
/// being copied into the socket (that copy was half of a hot 1 MiB read's CPU time). The file
/// is an unnamed one in the cache directory ([`MappedFile::private_copy_in`]; in the page
/// cache, in large folios where the file system has them, which `sendfile` walks faster than
/// shared memory's small pages), else a sealed memory file ([`MappedFile::sealed_copy`]),
/// else the heap.
pub struct BlobCache {
    entries: lru::LruCache<[u8; 32], Entry>,
    bytes: u64,
    limit: u64,
    /// Where the files go (`None`: memory files only).
    dir: Option<std::path::PathBuf>,
    /// Entries kept in files (each holds a file descriptor).
    files: usize,
}

struct Entry {
    blob: Bytes,
    end_epoch: u32,
    in_file: bool,
}

/// Blobs at least this large are cached in memory files. Why: below it the copy into the
/// socket costs less than the request around it.
pub const SPILL_BYTES_MIN: usize = 64 * 1024;

/// Most entries in memory files per core. Why: each holds a file descriptor; the rest are
/// cached on the heap.
pub const SPILL_FILES_MAX: usize = 256;

impl BlobCache {
    pub fn new(limit: u64, dir: Option<std::path::PathBuf>) -> Self {
        Self {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            limit,
            dir,
            files: 0,
        }
    }

    pub(crate) fn get(&mut self, blob_id: &BlobId, epoch: u32) -> Option<Bytes> {
        let entry = self.entries.get(&blob_id.0)?;
        if entry.end_epoch < epoch {
            self.remove(blob_id);
            return None;
        }
        Some(entry.blob.clone())
    }

    /// The end epoch of a cached blob (without counting as a use).
    pub(crate) fn end_epoch(&self, blob_id: &BlobId) -> Option<u32> {
        self.entries.peek(&blob_id.0).map(|entry| entry.end_epoch)
    }

    /// Whether a blob of `size` bytes would be kept: not if it is larger than a quarter of the
    /// cache (one huge blob would evict every hot small one).
    pub(crate) fn keeps(&self, size: u64) -> bool {
        size <= self.limit / 4
    }

    /// Keeps `blob` if it [`keeps`](Self::keeps) its size; returns the bytes to serve (the
    /// cached copy if one was made).
    pub(crate) fn insert(&mut self, blob_id: &BlobId, blob: Bytes, end_epoch: u32) -> Bytes {
        let size = blob.len() as u64;
        if !self.keeps(size) {
            return blob;
        }
        self.remove(blob_id);
        let mut entry = Entry {
            blob,
            end_epoch,
            in_file: false,
        };
        if entry.blob.len() >= SPILL_BYTES_MIN && self.files < SPILL_FILES_MAX {
            let in_dir = self
                .dir
                .as_deref()
                .map(|dir| MappedFile::private_copy_in(dir, &entry.blob));
            let made = match in_dir {
                Some(Ok(made)) => Ok(made),
                // No O_TMPFILE there, or a full disk: memory.
                _ => MappedFile::sealed_copy(&entry.blob),
            };
            match made {
                Ok(mapped) => {
                    entry.blob = mapped.into_bytes();
                    entry.in_file = true;
                    self.files += 1;
                }
                Err(err) => {
                    tracing::debug!(%err, "could not cache a blob in a file; kept on the heap")
                }
            }
        }
        let served = entry.blob.clone();
        self.entries.put(blob_id.0, entry);
        self.bytes += size;
        while self.bytes > self.limit {
            match self.entries.pop_lru() {
                Some((_, old)) => self.forget(&old),
                None => break,
            }
        }
        served
    }

    fn forget(&mut self, entry: &Entry) {
        self.bytes -= entry.blob.len() as u64;
        self.files -= usize::from(entry.in_file);
    }

    /// Forgets every blob.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.files = 0;
    }

    /// Forgets a blob (expired or deleted).
    pub fn remove(&mut self, blob_id: &BlobId) {
        if let Some(old) = self.entries.pop(&blob_id.0) {
            self.forget(&old);
        }
    }
}

/// What a whole-blob read that missed the cache does.
pub(crate) enum Fill {
    /// Another request filled the cache meanwhile.
    Cached(Bytes),
    /// This request fills it; others wait until the guard is dropped.
    Mine(Filling),
}

/// A blob being read into this core's cache; dropping it (filled, failed or cancelled) wakes
/// the requests waiting for it.
pub(crate) struct Filling {
    state: Rc<CoreState>,
    blob_id: [u8; 32],
}

impl Drop for Filling {
    fn drop(&mut self) {
        if let Some(done) = self.state.filling.borrow_mut().remove(&self.blob_id) {
            done.notify(usize::MAX);
        }
    }
}

/// Waits while another request of this core reads the same blob into the cache, so that a
/// burst of reads of a blob not yet cached gathers and decodes it once, not once per request
/// (each would hold the whole blob in memory: a burst of large ones would run the core out of
/// its body budget). If that read fails, the next waiter tries.
pub(crate) async fn fill_or_wait(state: &Rc<CoreState>, blob_id: &BlobId, epoch: u32) -> Fill {
    loop {
        if let Some(blob) = state.blob_cache.borrow_mut().get(blob_id, epoch) {
            return Fill::Cached(blob);
        }
        let pending = state.filling.borrow().get(&blob_id.0).cloned();
        match pending {
            Some(done) => {
                let listener = done.listen();
                if state.filling.borrow().contains_key(&blob_id.0) {
                    listener.await;
                }
            }
            None => {
                let done = Rc::new(event_listener::Event::new());
                state.filling.borrow_mut().insert(blob_id.0, done);
                return Fill::Mine(Filling {
                    state: state.clone(),
                    blob_id: blob_id.0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_skips_huge_blobs() {
        let mut cache = BlobCache::new(100, None);
        let id = |b: u8| BlobId([b; 32]);
        cache.insert(&id(1), Bytes::from(vec![0; 20]), 9);
        cache.insert(&id(2), Bytes::from(vec![0; 20]), 9);
        cache.insert(&id(3), Bytes::from(vec![0; 26]), 9);
        assert!(cache.get(&id(3), 5).is_none(), "over a quarter: not kept");
        for b in 3..10 {
            assert!(cache.get(&id(1), 5).is_some());
            cache.insert(&id(b), Bytes::from(vec![0; 25]), 9);
        }
        assert!(cache.bytes <= 100);
        assert!(cache.get(&id(1), 5).is_some(), "recently used survives");
        assert!(
            cache.get(&id(2), 5).is_none(),
            "least recently used went first"
        );
        assert!(cache.get(&id(1), 10).is_none(), "expired: dropped");
        assert!(cache.get(&id(1), 5).is_none());
    }

    #[test]
    fn large_cached_blobs_live_in_files_that_sendfile_can_send() {
        let dir = tempfile::tempdir().unwrap();
        let in_dir = dir.path().canonicalize().unwrap().display().to_string();
        check_file_cache(
            BlobCache::new(1 << 30, Some(dir.path().to_path_buf())),
            &in_dir,
        );
        check_file_cache(BlobCache::new(1 << 30, None), "/memfd:floe-cache");
        // A directory that cannot hold files: memory files instead.
        let missing = Some("/nonexistent/floe".into());
        check_file_cache(BlobCache::new(1 << 30, missing), "/memfd:floe-cache");
    }

    /// Checks the cache's files, which must be files whose path starts with `expect_at`.
    fn check_file_cache(mut cache: BlobCache, expect_at: &str) {
        use floe_storage::mapped::file_region;
        let id = |i: usize| {
            BlobId(
                [(i % 256) as u8, (i / 256) as u8, 1, 1, 1, 1, 1, 1]
                    .repeat(4)
                    .try_into()
                    .unwrap(),
            )
        };
        let big: Vec<u8> = (0..SPILL_BYTES_MIN as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        let served = cache.insert(&id(0), Bytes::from(big.clone()), 9);
        assert_eq!(&served[..], &big[..]);
        let (mapped, _) = file_region(&served[10..20]).expect("a view of a file");
        let fd = std::os::fd::AsRawFd::as_raw_fd(mapped.file());
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(
            path.display().to_string().starts_with(expect_at),
            "{path:?} is not in {expect_at}"
        );
        assert!(cache.get(&id(0), 5).unwrap() == big);
        let small = cache.insert(&id(1), Bytes::from(vec![7; 100]), 9);
        assert!(
            file_region(&small).is_none(),
            "small blobs stay on the heap"
        );
        for i in 2..SPILL_FILES_MAX + 10 {
            cache.insert(&id(i), Bytes::from(big.clone()), 9);
        }
        assert_eq!(cache.files, SPILL_FILES_MAX, "file descriptors are bounded");
        let last = cache.get(&id(SPILL_FILES_MAX + 9), 5).unwrap();
        assert!(
            last == big && file_region(&last).is_none(),
            "past the bound: heap"
        );
        cache.remove(&id(0));
        assert_eq!(cache.files, SPILL_FILES_MAX - 1);
        cache.clear();
        assert_eq!((cache.files, cache.bytes), (0, 0));
    }
}
