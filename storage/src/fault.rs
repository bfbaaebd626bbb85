//! Reads of mapped pages the device cannot deliver: an error, not a dead process.
//!
//! A page of a mapped segment that is not in the page cache is read from the device when it is
//! first touched. If that read fails (a bad sector, a disk pulled, a file cut short under the
//! mapping), the kernel has no error to return from a load instruction: it sends `SIGBUS` to
//! the thread, whose default action ends the process. `read(2)` and `sendfile(2)` get `EIO`
//! instead, so only code that touches mapped bytes in user space is exposed.
//!
//! [`guarded`] runs such code with a `SIGBUS` handler armed for the calling thread. A fault
//! inside it maps a page of zeros over the page that failed (so the load completes and the code
//! runs to its end), and [`guarded`] then discards the result and answers `EIO`. The zero page
//! stays, and its address is kept as *poisoned* ([`poisoned`]): the store treats any record
//! whose bytes lie on a poisoned page as lost (read error; healed), even one it verified
//! before, so the zeros are never served as data. `sendfile` still reads the file itself. A
//! `SIGBUS` outside [`guarded`] (or on another thread) takes the default action as before: code
//! that has not asked for it must never continue with zeros it takes for data.
//!
//! Invariant: a closure that faulted never has its result returned, and every page a fault
//! replaced with zeros is poisoned (or, past [`FAULT_PAGES_MAX`] in one call, every mapped
//! read is checked again: [`reverify_all`]) until its mapping is gone.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Faulted pages one [`guarded`] call records. Why: the handler cannot allocate; past this many
/// (a whole disk failing under one read), every mapped read is verified again instead.
pub const FAULT_PAGES_MAX: usize = 256;

thread_local! {
    /// Whether this thread is inside [`guarded`]. Const-initialized TLS without a destructor:
    /// safe to read in a signal handler.
    static ARMED: AtomicBool = const { AtomicBool::new(false) };
    /// Whether a fault was absorbed since [`guarded`] armed the handler.
    static FAULTED: AtomicBool = const { AtomicBool::new(false) };
    /// Pages replaced with zeros since [`guarded`] armed the handler (the first
    /// [`FAULT_PAGES_MAX`]), and how many there were.
    static FAULT_PAGES: [AtomicUsize; FAULT_PAGES_MAX] =
        const { [const { AtomicUsize::new(0) }; FAULT_PAGES_MAX] };
    static FAULT_COUNT: AtomicUsize = const { AtomicUsize::new(0) };
}

/// Pages replaced with zeros, by address, while their mapping lives.
static POISONED: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());
/// Whether [`POISONED`] may hold anything (the fast path of [`poisoned`]).
static ANY_POISONED: AtomicBool = AtomicBool::new(false);
/// Set when one call faulted on more pages than it could record.
static REVERIFY_ALL: AtomicBool = AtomicBool::new(false);

/// Faults absorbed by [`guarded`] since the process started.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();

/// Mapped-read faults turned into errors since the process started (for `/metrics`).
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Runs `touch` (code reading mapped bytes) so that a page the device fails to deliver makes
/// it answer `EIO` rather than end the process. Nested calls are fine; the outermost one
/// reports.
pub fn guarded<T>(touch: impl FnOnce() -> T) -> io::Result<T> {
    install();
    let outer = ARMED.with(|armed| armed.swap(true, Ordering::Relaxed));
    if !outer {
        FAULTED.with(|f| f.store(false, Ordering::Relaxed));
        FAULT_COUNT.with(|c| c.store(0, Ordering::Relaxed));
    }
    // The handler runs on this thread between these fences: the compiler must not move the
    // flags' accesses across the touch nor assume the touch leaves them as they were.
    compiler_fence(Ordering::SeqCst);
    let value = touch();
    compiler_fence(Ordering::SeqCst);
    if outer {
        return Ok(value);
    }
    ARMED.with(|armed| armed.store(false, Ordering::Relaxed));
    if FAULTED.with(|f| f.swap(false, Ordering::Relaxed)) {
        let count = FAULT_COUNT.with(|c| c.swap(0, Ordering::Relaxed));
        if count > FAULT_PAGES_MAX {
            REVERIFY_ALL.store(true, Ordering::Relaxed);
        }
        let mut poisoned = POISONED.lock().expect("poisoned pages");
        FAULT_PAGES.with(|pages| {
            for page in &pages[..count.min(FAULT_PAGES_MAX)] {
                poisoned.insert(page.load(Ordering::Relaxed));
            }
        });
        ANY_POISONED.store(true, Ordering::Release);
        return Err(io::Error::other(format!(
            "{}: a mapped page could not be read from the device",
            io::Error::from_raw_os_error(libc::EIO)
        )));
    }
    Ok(value)
}

/// Whether any byte of `bytes` lies on a page a fault replaced with zeros (so they are not
/// the file's bytes). One relaxed load while no fault ever happened.
pub fn poisoned(bytes: &[u8]) -> bool {
    if bytes.is_empty() || !ANY_POISONED.load(Ordering::Acquire) {
        return false;
    }
    let page = PAGE.load(Ordering::Relaxed);
    let start = bytes.as_ptr() as usize & !(page - 1);
    let end = bytes.as_ptr() as usize + bytes.len();
    let poisoned = POISONED.lock().expect("poisoned pages");
    poisoned.range(start..end).next().is_some()
}

/// Whether a fault event was too large to record page by page: then every mapped read must be
/// checked against its checksum again.
pub fn reverify_all() -> bool {
    REVERIFY_ALL.load(Ordering::Relaxed)
}

/// Forgets the poisoned pages of a mapping being unmapped (`[start, start + len)`): the
/// addresses may serve another mapping next.
pub fn unmapped(start: usize, len: usize) {
    if !ANY_POISONED.load(Ordering::Acquire) {
        return;
    }
    let mut poisoned = POISONED.lock().expect("poisoned pages");
    let gone: Vec<usize> = poisoned.range(start..start + len).copied().collect();
    for page in gone {
        poisoned.remove(&page);
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: a zeroed sigaction is a valid start; the handler has the SA_SIGINFO
        // signature and only does async-signal-safe work (TLS flags, an atomic, mmap, signal).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_sigbus;
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                warn_no_handler();
            }
        }
    });
}

#[cold]
fn warn_no_handler() {
    eprintln!(
        "floe: could not install the SIGBUS handler ({}); a mapped page the disk fails to \
         read will end the process",
        io::Error::last_os_error()
    );
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let armed = ARMED.with(|armed| armed.load(Ordering::Relaxed));
    if armed && !info.is_null() {
        let page = PAGE.load(Ordering::Relaxed);
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; si_addr is the
        // faulting address for SIGBUS.
        let addr = unsafe { (*info).si_addr() } as usize & !(page - 1);
        // SAFETY: replaces exactly the one page that faulted, inside a mapping the guarded
        // code is reading (a mapped segment: no Rust object lives in it), with zeros.
        let zero = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if zero != libc::MAP_FAILED {
            FAULTED.with(|f| f.store(true, Ordering::Relaxed));
            let count = FAULT_COUNT.with(|c| c.fetch_add(1, Ordering::Relaxed));
            if count < FAULT_PAGES_MAX {
                FAULT_PAGES.with(|pages| pages[count].store(addr, Ordering::Relaxed));
            }
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not a read we guard: the default action, when the load runs again.
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapped::MappedFile;

    #[test]
    fn a_mapped_page_cut_from_under_its_mapping_reads_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let mapped = MappedFile::open(&path).unwrap();
        // The first half stays; the pages of the second half no longer exist: touching them
        // raises SIGBUS, as a page whose device read fails does.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(32 * 1024)
            .unwrap();
        let before = faults();
        let sum = |bytes: &[u8]| bytes.iter().map(|&b| b as u64).sum::<u64>();
        assert_eq!(
            guarded(|| sum(&mapped.bytes()[..32 * 1024])).unwrap(),
            7 * 32 * 1024
        );
        let err = guarded(|| sum(mapped.bytes())).unwrap_err();
        assert!(err.to_string().contains("could not be read"), "{err}");
        assert!(faults() > before);
        // The page that failed now reads as zeros, and is known to: a record there is lost.
        assert!(guarded(|| sum(mapped.bytes())).is_ok_and(|s| s < 7 * 64 * 1024));
        assert!(poisoned(&mapped.bytes()[40 * 1024..41 * 1024]));
        assert!(!poisoned(&mapped.bytes()[..32 * 1024]));
        // Nested guards report once, at the outermost.
        assert!(guarded(|| guarded(|| sum(mapped.bytes())).is_ok()).is_ok());
        // Unmapped (the drop calls `unmapped`), its pages are forgotten.
        let (start, len) = (mapped.bytes().as_ptr() as usize, mapped.bytes().len());
        drop(mapped);
        assert!(POISONED
            .lock()
            .unwrap()
            .range(start..start + len)
            .next()
            .is_none());
    }
}
