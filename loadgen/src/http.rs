//! A lean HTTP/1.1 client connection for load: one request at a time on a kept-alive socket,
//! response heads parsed with httparse, bodies streamed through a caller's sink from one
//! buffer that lives as long as the connection.
//!
//! Why not hyper's client: a load generator must cost less per request than the server it
//! drives. This does no allocation per request, reads bodies straight into its buffer, and
//! hands each chunk to the verifier in place. It speaks only what loadgen sends: requests with
//! a Content-Length body (generated a chunk at a time, [`Upload`]) or none, answers framed by
//! Content-Length. Memory per connection is its two buffers whatever the bodies' sizes, so
//! blobs of many GB go both ways.
//!
//! Timeouts (the thread's [`Watchdog`]): a request fails as `timeout` when connecting, the
//! answer's head after the request was sent, or any stall of a body (no byte moving either
//! way) takes longer than the timeout; a store's answer may also take a second per
//! [`ANSWER_WAIT_BYTES_PER_SECOND`] bytes sent. A big body that keeps moving does not time out.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// How a request failed; each kind is counted apart in the report.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("I/O: {0}")]
    Io(std::io::Error),
    #[error("bad response: {0}")]
    Protocol(String),
}

impl HttpError {
    fn from_io(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => HttpError::Timeout,
            _ => HttpError::Io(error),
        }
    }

    /// The name the report counts this error under.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "connect",
            HttpError::Timeout => "timeout",
            HttpError::Io(_) => "io",
            HttpError::Protocol(_) => "protocol",
        }
    }
}

/// What loadgen needs from a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: u64,
    /// The server closes the connection after this answer.
    pub close: bool,
    /// `Content-Range: bytes first-last/size`.
    pub content_range: Option<(u64, u64, u64)>,
}

/// Bytes of the read buffer: large enough that a 1 MiB body takes a handful of reads.
const BUFFER_BYTES: usize = 256 << 10;
/// Bytes of request body generated and written at a time (the upload buffer).
const UPLOAD_CHUNK_BYTES: usize = 256 << 10;
/// The most header bytes accepted before the head is called malformed.
const HEAD_BYTES_MAX: usize = 64 << 10;

/// How much longer than the timeout a store's answer may take: a second per this many bytes
/// sent. Why: a node encodes a big blob once it has all of it, then stores and sends its
/// slivers (encoding alone runs at about 80 MB/s on one core at n = 1000, BENCHMARKS.md); a
/// tenth of that still tells a slow node from a hung one: 1 GiB may take 107 s more.
pub const ANSWER_WAIT_BYTES_PER_SECOND: u64 = 10_000_000;

/// A request body of `len` bytes that `fill` generates in order, a chunk at a time, so that
/// a body of any size is sent from one buffer. `fill` is called with consecutive pieces
/// (`len` bytes in all when the whole body is sent).
pub struct Upload<'a> {
    pub len: u64,
    pub fill: &'a mut dyn FnMut(&mut [u8]),
}

/// Body bytes moved (received and sent) per whole second since `origin`, counted as they
/// move: the bytes of a long answer land in the seconds they arrived in, and only those
/// before `until` count. `live`, if set, counts every byte at once (a progress line).
#[derive(Debug)]
pub struct Meter {
    origin: Instant,
    until: Instant,
    pub seconds: Vec<u64>,
    live: Option<Arc<AtomicU64>>,
}

impl Meter {
    pub fn new(origin: Instant, until: Instant, live: Option<Arc<AtomicU64>>) -> Self {
        Self {
            origin,
            until,
            seconds: Vec::new(),
            live,
        }
    }

    pub fn record(&mut self, at: Instant, bytes: u64) {
        if let Some(live) = &self.live {
            live.fetch_add(bytes, Ordering::Relaxed);
        }
        if at < self.origin || at >= self.until || bytes == 0 {
            return;
        }
        let second = (at - self.origin).as_secs() as usize;
        if self.seconds.len() <= second {
            self.seconds.resize(second + 1, 0);
        }
        self.seconds[second] += bytes;
    }
}

pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// When the last read that brought bytes returned.
    last_read: Instant,
    /// Request bodies are generated here, a chunk at a time (allocated by the first upload).
    out: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, HttpError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| HttpError::Timeout)?
            .map_err(HttpError::Connect)?;
        stream.set_nodelay(true).map_err(HttpError::Connect)?;

        Ok(Self {
            stream,
            buf: vec![0u8; BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            last_read: Instant::now(),
            out: Vec::new(),
        })
    }

    /// Sends a request head and its body, generated a chunk at a time into the upload buffer
    /// (the head goes with the first chunk). Each chunk written moves the deadline on; after
    /// the last, the answer gets the timeout plus the store allowance. Returns false when the
    /// server answered (or closed) before the body's end: it refused the request, and the
    /// rest is not sent.
    async fn upload(
        &mut self,
        head: &[u8],
        upload: Upload<'_>,
        slot: &Slot,
        timeout: Duration,
        mut meter: Option<&mut Meter>,
    ) -> Result<bool, HttpError> {
        let Upload { len, fill } = upload;
        if self.out.len() < UPLOAD_CHUNK_BYTES {
            self.out = vec![0u8; UPLOAD_CHUNK_BYTES];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let mut left = len;
        let mut head = Some(head);
        loop {
            let mut filled = 0;
            match head.take() {
                Some(head) if head.len() <= self.out.len() / 2 => {
                    self.out[..head.len()].copy_from_slice(head);
                    filled = head.len();
                }
                Some(head) => self
                    .stream
                    .write_all(head)
                    .await
                    .map_err(HttpError::from_io)?,
                None => {}
            }
            let take = left.min((self.out.len() - filled) as u64) as usize;
            fill(&mut self.out[filled..filled + take]);
            if !self.write_watching(filled + take).await? {
                return Ok(false);
            }
            left -= take as u64;
            let now = Instant::now();
            if let Some(meter) = meter.as_deref_mut() {
                meter.record(now, take as u64);
            }
            if left == 0 {
                let allowance =
                    Duration::from_secs_f64(len as f64 / ANSWER_WAIT_BYTES_PER_SECOND as f64);
                slot.deadline.set(Some(now + timeout + allowance));
                return Ok(true);
            }
            slot.deadline.set(Some(now + timeout));
        }
    }

    /// Writes `self.out[..len]`, watching the socket for the server's answer meanwhile: an
    /// HTTP/1.1 server says nothing before the request's end unless it refuses the request
    /// (413, 401, 503, 507...), and may then stop reading or close. Returns false when it
    /// spoke (its first bytes are in the read buffer) or closed first.
    async fn write_watching(&mut self, len: usize) -> Result<bool, HttpError> {
        use std::io::ErrorKind::WouldBlock;
        let mut written = 0;
        while written < len {
            let ready = self
                .stream
                .ready(Interest::READABLE | Interest::WRITABLE)
                .await
                .map_err(HttpError::from_io)?;
            if ready.is_readable() || ready.is_read_closed() {
                match self.stream.try_read(&mut self.buf[self.end..]) {
                    Ok(0) => return Ok(false),
                    Ok(read) => {
                        self.end += read;
                        self.last_read = Instant::now();
                        return Ok(false);
                    }
                    Err(error) if error.kind() == WouldBlock => {}
                    Err(error) => return Err(HttpError::from_io(error)),
                }
            }
            if ready.is_writable() || ready.is_write_closed() {
                match self.stream.try_write(&self.out[written..len]) {
                    Ok(wrote) => written += wrote,
                    Err(error) if error.kind() == WouldBlock => {}
                    Err(error) => return Err(HttpError::from_io(error)),
                }
            }
        }
        Ok(true)
    }

    /// Reads the response head; also returns when its first byte arrived.
    pub async fn read_head(&mut self) -> Result<(Head, Instant), HttpError> {
        let mut first_byte = None;
        loop {
            if self.end > self.start {
                // Bytes already here (an answer that came while the body was being sent).
                let first = *first_byte.get_or_insert(self.last_read);
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = head_of(&response)?;
                        self.start += len;
                        return Ok((head, first));
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.end - self.start >= HEAD_BYTES_MAX {
                            return Err(HttpError::Protocol(format!(
                                "response head longer than {HEAD_BYTES_MAX} bytes"
                            )));
                        }
                    }
                    Err(error) => {
                        return Err(HttpError::Protocol(format!("response head: {error}")))
                    }
                }
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self
                .stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(HttpError::from_io)?;
            if read == 0 {
                return Err(HttpError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                )));
            }
            let now = Instant::now();
            self.last_read = now;
            first_byte.get_or_insert(now);
            self.end += read;
        }
    }

    /// Streams `len` body bytes through `sink`, in chunks as they arrive; each read moves the
    /// deadline on (a body times out only when it stalls) and is counted by `meter`.
    async fn read_body(
        &mut self,
        len: u64,
        mut sink: impl FnMut(&[u8]),
        slot: &Slot,
        timeout: Duration,
        mut meter: Option<&mut Meter>,
    ) -> Result<(), HttpError> {
        let mut left = len;
        let buffered = ((self.end - self.start) as u64).min(left) as usize;
        if buffered > 0 {
            sink(&self.buf[self.start..self.start + buffered]);
            if let Some(meter) = meter.as_deref_mut() {
                meter.record(self.last_read, buffered as u64);
            }
            self.start += buffered;
            left -= buffered as u64;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        while left > 0 {
            // Never read past this body: the buffer is empty here, so reads go to its front.
            let want = left.min(self.buf.len() as u64) as usize;
            let read = self
                .stream
                .read(&mut self.buf[..want])
                .await
                .map_err(HttpError::from_io)?;
            if read == 0 {
                return Err(HttpError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the server closed the connection {left} bytes before the body's end"),
                )));
            }
            let now = Instant::now();
            self.last_read = now;
            slot.deadline.set(Some(now + timeout));
            sink(&self.buf[..read]);
            if let Some(meter) = meter.as_deref_mut() {
                meter.record(now, read as u64);
            }
            left -= read as u64;
        }
        Ok(())
    }
}

/// One connection slot to a target: connects when needed, reconnects after the server
/// closed or after an error.
pub struct Client {
    pub addr: SocketAddr,
    timeout: Duration,
    conn: Option<Conn>,
    slot: Rc<Slot>,
    /// Connections opened, first included.
    pub connects: u64,
    /// Counts body bytes as they move, when set (the measured requests of a run).
    pub meter: Option<Meter>,
}

/// A request's deadline, watched by the thread's [`Watchdog`].
struct Slot {
    /// The connection's socket while there is one.
    fd: Cell<Option<i32>>,
    deadline: Cell<Option<Instant>>,
    /// The watchdog shut the socket down: the request timed out.
    fired: Cell<bool>,
}

/// Times requests out without a timer per read: every few milliseconds it shuts down the
/// socket of each request past its deadline, which ends the pending read or write at once.
/// (A timer per request, armed and cancelled around every answer, costs more than the
/// request itself on small answers.)
#[derive(Clone, Default)]
pub struct Watchdog {
    slots: Rc<RefCell<Vec<Rc<Slot>>>>,
}

impl Watchdog {
    /// Starts watching on the current thread's `LocalSet`, checking `period` apart, until it
    /// ends.
    pub fn spawn(period: Duration) -> Self {
        let watchdog = Watchdog::default();
        let slots = watchdog.slots.clone();
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(period).await;
                let now = Instant::now();
                for slot in slots.borrow().iter() {
                    if let (Some(fd), Some(deadline)) = (slot.fd.get(), slot.deadline.get()) {
                        if deadline <= now && !slot.fired.get() {
                            slot.fired.set(true);
                            // SAFETY: `fd` belongs to the open connection of this slot; the
                            // client clears it in the same step as it drops the connection,
                            // and both run on this thread.
                            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
                        }
                    }
                }
            }
        });
        watchdog
    }
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration, watchdog: &Watchdog) -> Self {
        let slot = Rc::new(Slot {
            fd: Cell::new(None),
            deadline: Cell::new(None),
            fired: Cell::new(false),
        });
        watchdog.slots.borrow_mut().push(slot.clone());
        Self {
            addr,
            timeout,
            conn: None,
            slot,
            connects: 0,
            meter: None,
        }
    }

    /// Closes the connection (the next request opens another): after an answer whose body
    /// is not wanted.
    pub fn drop_conn(&mut self) {
        self.conn = None;
        self.slot.fd.set(None);
        self.slot.deadline.set(None);
    }

    /// An error as the caller should see it: a timeout if the watchdog ended the request.
    fn failed(&mut self, error: HttpError) -> HttpError {
        let timed_out = self.slot.fired.get();
        self.drop_conn();
        if timed_out {
            HttpError::Timeout
        } else {
            error
        }
    }

    /// Sends a request (and its body, if any) and reads the answer's head (connecting first
    /// if needed); the caller then reads exactly `head.content_length` bytes with
    /// [`Client::body`]. Returns the head, when the request was sent and when the answer's
    /// first byte arrived. A server that answers before the body's end (a refusal) gets the
    /// rest of it no more, and its answer is returned; the connection closes after it.
    pub async fn start(
        &mut self,
        head: &[u8],
        upload: Option<Upload<'_>>,
    ) -> Result<(Head, Instant, Instant), HttpError> {
        if self.conn.is_none() {
            let conn = Conn::connect(self.addr, self.timeout).await?;
            self.slot.fd.set(Some(conn.stream.as_raw_fd()));
            self.slot.fired.set(false);
            self.conn = Some(conn);
            self.connects += 1;
        }
        let sent = Instant::now();
        self.slot.deadline.set(Some(sent + self.timeout));
        let conn = self.conn.as_mut().expect("connected above");
        let sending = match upload {
            None => conn
                .stream
                .write_all(head)
                .await
                .map(|()| true)
                .map_err(HttpError::from_io),
            Some(upload) => {
                conn.upload(head, upload, &self.slot, self.timeout, self.meter.as_mut())
                    .await
            }
        };
        let result = match sending {
            Ok(whole) => conn.read_head().await.map(|(mut answer, first)| {
                answer.close |= !whole;
                (answer, first)
            }),
            // The server may have answered before it closed: its refusal says more than a
            // broken pipe. (Not after the watchdog shut the socket: that is a timeout.)
            Err(error) if !self.slot.fired.get() => match conn.read_head().await {
                Ok((mut answer, first)) => {
                    answer.close = true;
                    Ok((answer, first))
                }
                Err(_) => Err(error),
            },
            Err(error) => Err(error),
        };
        match result {
            Ok((answer, first_byte)) => Ok((answer, sent, first_byte)),
            Err(error) => Err(self.failed(error)),
        }
    }

    /// Reads the body of the answer `start` returned, then keeps or drops the connection.
    pub async fn body(&mut self, head: &Head, sink: impl FnMut(&[u8])) -> Result<(), HttpError> {
        let conn = self.conn.as_mut().expect("start succeeded");
        let result = conn
            .read_body(
                head.content_length,
                sink,
                &self.slot,
                self.timeout,
                self.meter.as_mut(),
            )
            .await;
        match result {
            Err(error) => Err(self.failed(error)),
            Ok(()) if head.close || self.slot.fired.get() => {
                self.drop_conn();
                Ok(())
            }
            Ok(()) => {
                self.slot.deadline.set(None);
                Ok(())
            }
        }
    }

    /// Sends a request and collects the whole answer (setup requests and stores, whose
    /// answers are small).
    pub async fn fetch(
        &mut self,
        head: &[u8],
        upload: Option<Upload<'_>>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let (answer, _, _) = self.start(head, upload).await?;
        let mut collected = Vec::new();
        self.body(&answer, |chunk| collected.extend_from_slice(chunk))
            .await?;
        Ok((answer.status, collected))
    }
}

/// Writes a request head into `out` (cleared first).
pub fn request_head(
    out: &mut Vec<u8>,
    method: &str,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
    content_length: Option<u64>,
) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: floe-loadgen/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(length) = content_length {
        let _ = write!(out, "Content-Length: {length}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of a publisher store, `PUT /v1/blobs?epochs=N`, with the write token if any.
pub fn store_head(out: &mut Vec<u8>, host: &str, epochs: u32, token: Option<&str>, len: u64) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let extra: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let path = format!("/v1/blobs?epochs={epochs}");
    request_head(out, "PUT", &path, host, &extra, Some(len));
}

/// The blob ID a publisher's answer to a store of `size` bytes names (`newlyCreated` or
/// `alreadyCertified`), or what is wrong with the answer.
pub fn stored_blob_id(answer: &[u8], size: u64) -> Result<String, String> {
    let answer: serde_json::Value =
        serde_json::from_slice(answer).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let created = answer
        .get("newlyCreated")
        .or_else(|| answer.get("alreadyCertified"))
        .ok_or_else(|| {
            format!("the answer is neither newlyCreated nor alreadyCertified: {answer}")
        })?;
    let id = created["blobId"]
        .as_str()
        .filter(|id| id.parse::<floe_codec::BlobId>().is_ok())
        .ok_or_else(|| format!("the answer has no blob ID: {answer}"))?;
    if created["size"].as_u64() != Some(size) {
        return Err(format!(
            "the node says {} bytes, {size} were sent",
            created["size"]
        ));
    }
    Ok(id.to_string())
}

fn head_of(response: &httparse::Response<'_, '_>) -> Result<Head, HttpError> {
    let status = response.code.unwrap_or(0);
    let mut content_length = None;
    let mut close = response.version == Some(0);
    let mut content_range = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("");
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = value
                .trim()
                .parse::<u64>()
                .map_err(|_| HttpError::Protocol(format!("Content-Length `{value}`")))?;
            if content_length.is_some_and(|l| l != length) {
                return Err(HttpError::Protocol("two different Content-Lengths".into()));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Protocol(format!(
                "Transfer-Encoding `{value}` (loadgen reads bodies framed by Content-Length)"
            )));
        } else if header.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if header.name.eq_ignore_ascii_case("content-range") {
            content_range = parse_content_range(value);
        }
    }
    // 1xx, 204 and 304 answers have no body.
    let bodiless = matches!(status, 100..=199 | 204 | 304);
    let content_length = match content_length {
        Some(length) => length,
        None if bodiless => 0,
        None => {
            return Err(HttpError::Protocol(format!(
                "status {status} without Content-Length"
            )))
        }
    };
    Ok(Head {
        status,
        content_length,
        close,
        content_range,
    })
}

fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-connection server on loopback running `serve` with the request head read (as
    /// text), a reader of the rest and the socket to answer on.
    fn server(
        serve: impl FnOnce(String, BufReader<std::net::TcpStream>, std::net::TcpStream) + Send + 'static,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            serve(head, reader, stream);
        });
        addr
    }

    fn on_thread<F: std::future::Future>(future: F) -> F::Output {
        crate::run::on_this_thread(future).unwrap()
    }

    fn put_head(len: u64) -> Vec<u8> {
        let mut head = Vec::new();
        store_head(&mut head, "x", 1, None, len);
        head
    }

    #[test]
    fn an_upload_is_generated_chunk_by_chunk_and_counted_as_it_goes() {
        let len: u64 = (9 << 20) + 123;
        let key = crate::content::key(1, "blob", 0);
        let addr = server(move |head, mut reader, mut stream| {
            assert!(head.contains(&format!("Content-Length: {len}")), "{head}");
            let mut hasher = blake3::Hasher::new();
            let mut left = len;
            let mut buf = vec![0u8; 1 << 16];
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let read = reader.read(&mut buf[..want]).unwrap();
                assert!(read > 0);
                hasher.update(&buf[..read]);
                left -= read as u64;
            }
            let hex = hasher.finalize().to_hex().to_string();
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n{hex}").unwrap();
        });
        let (status, answer, moved) = on_thread(async move {
            let watchdog = Watchdog::spawn(Duration::from_millis(100));
            let mut client = Client::new(addr, Duration::from_secs(10), &watchdog);
            let now = Instant::now();
            client.meter = Some(Meter::new(now, now + Duration::from_secs(3600), None));
            let mut content = crate::content::Stream::new(&key, 0);
            let mut chunks = 0;
            let mut fill = |chunk: &mut [u8]| {
                assert!(chunk.len() <= UPLOAD_CHUNK_BYTES);
                chunks += 1;
                content.fill(chunk);
            };
            let upload = Upload {
                len,
                fill: &mut fill,
            };
            let (status, answer) = client.fetch(&put_head(len), Some(upload)).await.unwrap();
            assert!(chunks >= 36, "{chunks} chunks");
            let moved: u64 = client.meter.take().unwrap().seconds.iter().sum();
            (status, answer, moved)
        });
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8(answer).unwrap(),
            crate::content::checksum(&key, len)
        );
        // The body sent and the answer's body, as they moved.
        assert_eq!(moved, len + 64);
    }

    #[test]
    fn a_refusal_before_the_bodys_end_is_the_answer_not_a_broken_pipe() {
        // One server closes after its refusal, one keeps the socket open but reads no more.
        for close in [true, false] {
            let addr = server(move |_, _, mut stream| {
                stream
                    .write_all(
                        b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 9\r\n\r\nspool full",
                    )
                    .unwrap();
                if close {
                    drop(stream);
                } else {
                    std::thread::sleep(Duration::from_secs(5));
                }
            });
            let (head, body, generated) = on_thread(async move {
                let watchdog = Watchdog::spawn(Duration::from_millis(100));
                let mut client = Client::new(addr, Duration::from_secs(3), &watchdog);
                let mut generated = 0u64;
                let mut fill = |chunk: &mut [u8]| generated += chunk.len() as u64;
                let len = 1u64 << 30;
                let upload = Upload {
                    len,
                    fill: &mut fill,
                };
                let (head, _, _) = client.start(&put_head(len), Some(upload)).await.unwrap();
                let mut body = Vec::new();
                client
                    .body(&head, |chunk| body.extend_from_slice(chunk))
                    .await
                    .unwrap();
                assert!(client.conn.is_none(), "a cut upload ends its connection");
                (head, body, generated)
            });
            assert_eq!(head.status, 507, "close {close}");
            assert!(head.close);
            assert_eq!(body, b"spool ful");
            assert!(generated < 64 << 20, "{generated} bytes generated");
        }
    }

    #[test]
    fn a_body_times_out_when_it_stalls_not_when_it_is_long() {
        // 12 pieces 50 ms apart (600 ms in all) under a 300 ms timeout: fine. Then a stall of
        // 700 ms in the middle: a timeout.
        for stall in [Duration::ZERO, Duration::from_millis(700)] {
            let addr = server(move |_, _, mut stream| {
                let piece = vec![7u8; 1000];
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: 12000\r\n\r\n");
                for i in 0..12 {
                    std::thread::sleep(Duration::from_millis(50));
                    if i == 6 {
                        std::thread::sleep(stall);
                    }
                    if stream.write_all(&piece).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            });
            let result = on_thread(async move {
                let timeout = Duration::from_millis(300);
                let watchdog = Watchdog::spawn(crate::run::watch_period(timeout));
                let mut client = Client::new(addr, timeout, &watchdog);
                let mut head = Vec::new();
                request_head(&mut head, "GET", "/", "x", &[], None);
                let started = Instant::now();
                client
                    .fetch(&head, None)
                    .await
                    .map(|(_, body)| (body.len(), started.elapsed()))
            });
            match result {
                Ok((len, took)) => {
                    assert!(stall.is_zero());
                    assert_eq!(len, 12_000);
                    assert!(took > Duration::from_millis(500), "{took:?}");
                }
                Err(error) => {
                    assert!(!stall.is_zero(), "{error}");
                    assert!(matches!(error, HttpError::Timeout), "{error}");
                }
            }
        }
    }

    #[test]
    fn a_meter_counts_bytes_in_the_seconds_they_moved_within_its_window() {
        let origin = Instant::now();
        let mut meter = Meter::new(origin, origin + Duration::from_millis(2500), None);
        meter.record(origin - Duration::from_millis(1), 5);
        meter.record(origin, 1);
        meter.record(origin + Duration::from_millis(999), 2);
        meter.record(origin + Duration::from_millis(2100), 4);
        meter.record(origin + Duration::from_millis(2500), 8);
        assert_eq!(meter.seconds, [3, 0, 4]);
    }

    fn parse(text: &str) -> Result<Head, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        assert!(response.parse(text.as_bytes()).unwrap().is_complete());
        head_of(&response)
    }

    #[test]
    fn heads_give_length_range_and_keep_alive() {
        let head = parse(
            "HTTP/1.1 206 Partial Content\r\ncontent-length: 10\r\n\
             content-range: bytes 5-14/100\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            head,
            Head {
                status: 206,
                content_length: 10,
                close: false,
                content_range: Some((5, 14, 100)),
            }
        );
        assert!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .close
        );
        assert_eq!(
            parse("HTTP/1.1 304 Not Modified\r\n\r\n")
                .unwrap()
                .content_length,
            0
        );
        for bad in [
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Err(HttpError::Protocol(_))), "{bad}");
        }
    }
}
