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
//! stays: a later read of that page finds zeros, which no record's checksum matches, so the
//! record reads as corrupt and is healed; `sendfile` still reads the file itself. A `SIGBUS`
//! outside [`guarded`] (or on another thread) takes the default action as before: code that
//! has not asked for it must never continue with zeros it takes for data.
//!
//! Invariant: a closure that faulted never has its result returned.

use std::io;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`guarded`]. Const-initialized TLS without a destructor:
    /// safe to read in a signal handler.
    static ARMED: AtomicBool = const { AtomicBool::new(false) };
    /// Whether a fault was absorbed since [`guarded`] armed the handler.
    static FAULTED: AtomicBool = const { AtomicBool::new(false) };
}

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
        return Err(io::Error::other(format!(
            "{}: a mapped page could not be read from the device",
            io::Error::from_raw_os_error(libc::EIO)
        )));
    }
    Ok(value)
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
                tracing_free_warning();
            }
        }
    });
}

#[cold]
fn tracing_free_warning() {
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
        // The page that failed now reads as zeros: no checksum would hold over it.
        assert!(guarded(|| sum(mapped.bytes())).is_ok_and(|s| s < 7 * 64 * 1024));
        // Nested guards report once, at the outermost.
        assert!(guarded(|| guarded(|| sum(mapped.bytes())).is_ok()).is_ok());
    }
}
