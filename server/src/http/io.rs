//! The adapter between glommio's `TcpStream` and hyper 1.x's I/O traits, with the zero-copy
//! send path.
//!
//! hyper hands its writes over as vectors of slices (`poll_write_vectored`): the response head,
//! then the body's chunks. A sliver body is a `Bytes` view of a mapped segment
//! ([`floe_storage::mapped`]); when a slice is such a view, it is sent with `sendfile(2)` from
//! the segment file, so the kernel moves page-cache pages to the socket without copying them
//! through user space (what nginx does for static files). Other slices go out with one
//! `sendmsg(2)`, flagged `MSG_MORE` when a mapped body follows, so head and body leave in the
//! same segments. The socket is non-blocking; when it is full, the write falls back to
//! glommio's own `poll_write` of the same bytes, which either sends them or registers the task
//! to be woken when the socket can take more.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use floe_storage::mapped::file_region;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::{Read, ReadBufCursor, Write};
use rustix::net::SendFlags;

/// Slices gathered into one `sendmsg`. Why: hyper queues a handful; Linux allows 1024.
const IOVECS_MAX: usize = 64;

/// When a connection last moved bytes, how many of its requests are being served, and when
/// the head now arriving began: what the server's idle and head timeouts look at.
pub struct Activity {
    last: Cell<Instant>,
    busy: Rc<Cell<usize>>,
    /// When bytes first arrived while no request was being served (a head on its way), until
    /// a request is served.
    head_started: Rc<Cell<Option<Instant>>>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            last: Cell::new(Instant::now()),
            busy: Rc::default(),
            head_started: Rc::default(),
        }
    }
}

/// A request being served on a connection; counted until dropped.
pub struct Busy(Rc<Cell<usize>>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Activity {
    fn touch(&self) {
        self.last.set(Instant::now());
    }

    /// Bytes arrived: while no request is served, they are (part of) the next head.
    fn received(&self) {
        let now = Instant::now();
        self.last.set(now);
        if !self.is_busy() && self.head_started.get().is_none() {
            self.head_started.set(Some(now));
        }
    }

    /// How long the head now arriving has taken so far (`None`: no head is arriving).
    pub fn head_for(&self) -> Option<Duration> {
        if self.is_busy() {
            return None;
        }
        self.head_started.get().map(|started| started.elapsed())
    }

    /// How long since bytes last moved.
    pub fn quiet_for(&self) -> Duration {
        self.last.get().elapsed()
    }

    /// Whether a request of the connection is being served.
    pub fn is_busy(&self) -> bool {
        self.busy.get() > 0
    }

    /// Marks a request as being served until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.busy.set(self.busy.get() + 1);
        // Its head is in: the next one's clock starts with its first byte.
        self.head_started.set(None);
        Busy(self.busy.clone())
    }
}

/// A glommio stream that hyper can serve.
pub struct HyperStream {
    stream: TcpStream,
    activity: Option<Rc<Activity>>,
}

impl HyperStream {
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        // glommio itself uses MSG_DONTWAIT and io_uring polls, so it works unchanged on a
        // non-blocking socket; sendfile(2) has no flag and needs it.
        rustix::io::ioctl_fionbio(fd(&stream), true)?;
        Ok(Self {
            stream,
            activity: None,
        })
    }

    /// A stream that records its progress in `activity`.
    pub fn with_activity(stream: TcpStream, activity: Rc<Activity>) -> io::Result<Self> {
        let mut io = Self::new(stream)?;
        io.activity = Some(activity);
        Ok(io)
    }

    fn progressed(&self) {
        if let Some(activity) = &self.activity {
            activity.touch();
        }
    }

    fn received(&self, bytes: usize) {
        if let (Some(activity), true) = (&self.activity, bytes > 0) {
            activity.received();
        }
    }

    /// Sends the run of slices that starts at `bufs[0]`: one mapped slice with sendfile, or
    /// the unmapped slices up to the next mapped one with sendmsg. `None` if the socket is full.
    fn send_now(&self, bufs: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let socket = fd(&self.stream);
        let result = if let Some((mapped, offset)) = file_region(&bufs[0]) {
            let mut offset = offset;
            rustix::fs::sendfile(socket, mapped.file(), Some(&mut offset), bufs[0].len())
        } else {
            // The first slice is known unmapped; the run ends before the next mapped one.
            let run = 1 + bufs[1..]
                .iter()
                .take(IOVECS_MAX - 1)
                .position(|b| file_region(b).is_some())
                .unwrap_or(bufs.len().min(IOVECS_MAX) - 1);
            let more = if run < bufs.len() {
                SendFlags::MORE
            } else {
                SendFlags::empty()
            };
            rustix::net::sendmsg(
                socket,
                &bufs[..run],
                &mut rustix::net::SendAncillaryBuffer::default(),
                more | SendFlags::NOSIGNAL,
            )
        };
        match result {
            Ok(sent) => Some(Ok(sent)),
            Err(rustix::io::Errno::AGAIN) => None,
            Err(errno) => Some(Err(errno.into())),
        }
    }
}

fn fd(stream: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the stream owns the descriptor and outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

impl Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: the slice is only written by `poll_read`, and `advance` counts only the bytes
        // it reports written. Zeroing first keeps the uninitialised memory from being read even
        // by a misbehaving reader.
        let unfilled = unsafe { buf.as_mut() };
        for byte in unfilled.iter_mut() {
            byte.write(0);
        }
        // SAFETY: every byte was just initialised.
        let slice = unsafe {
            std::slice::from_raw_parts_mut(unfilled.as_mut_ptr().cast::<u8>(), unfilled.len())
        };
        match Pin::new(&mut self.stream).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                self.received(n);
                // SAFETY: `n` bytes were written by the read.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Write for HyperStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let bufs = &bufs[first..];
        let result = match self.send_now(bufs) {
            Some(result) => Poll::Ready(result),
            // Full: glommio sends the same bytes if room appeared meanwhile, or wakes us when
            // there is some.
            None => Pin::new(&mut self.stream).poll_write(cx, &bufs[0]),
        };
        if let Poll::Ready(Ok(sent)) = result {
            if sent > 0 {
                self.progressed();
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}
