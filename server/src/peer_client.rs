//! Talking to the other nodes of the committee: an HTTP/1.1 client per core (hyper over a
//! glommio socket, the same adapter the server uses), with idle connections kept per peer, a
//! time limit on every request and a bound on every answer.
//!
//! Nothing a peer says is trusted: callers verify metadata, slivers and recovery symbols
//! against the blob ID before using them, and a peer that answers garbage is just a failed peer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use thiserror::Error;

use floe_codec::{decode_metadata, BlobId, BlobLayout, BlobMetadata};

use crate::config::Member;
use crate::http::io::HyperStream;
use crate::metrics::PeerFault;
use crate::state::CoreState;

/// Why a request to a peer got no answer.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot connect to {address}: {message}")]
    Connect { address: String, message: String },
    #[error("{address} did not answer within {seconds} s")]
    Timeout { address: String, seconds: u64 },
    #[error("talking to {address}: {message}")]
    Http { address: String, message: String },
    #[error("{address} answered more than {limit} bytes")]
    TooLarge { address: String, limit: usize },
}

/// A peer's answer: its status and whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The `message` of a floe error body, or the status.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

/// Idle connections kept per peer and core. Why: enough for the publisher's and the healer's
/// parallel requests to one peer without reconnecting; more would only hold sockets.
const IDLE_PER_PEER: usize = 16;

/// One core's client to its peers. Not `Send`: each core has its own.
pub struct Peers {
    idle: RefCell<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
    token: Option<String>,
    timeout: Duration,
}

impl Peers {
    /// `token` goes with writes (`PUT`, `DELETE`); `timeout` bounds each request, answer included.
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
            token,
            timeout,
        }
    }

    async fn connect(&self, address: &str) -> Result<SendRequest<Full<Bytes>>, PeerError> {
        loop {
            let Some(sender) = self.idle.borrow_mut().get_mut(address).and_then(Vec::pop) else {
                break;
            };
            if !sender.is_closed() {
                return Ok(sender);
            }
        }
        let fail = |message: String| PeerError::Connect {
            address: address.to_string(),
            message,
        };
        let stream = TcpStream::connect_timeout(address, self.timeout)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = HyperStream::new(stream).map_err(|e| fail(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        glommio::spawn_local(async move {
            let _ = connection.await;
        })
        .detach();
        Ok(sender)
    }

    /// Sends one request and reads the whole answer, at most `limit` bytes of body.
    pub async fn request(
        &self,
        address: &str,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        limit: usize,
    ) -> Result<Answer, PeerError> {
        let http = |message: String| PeerError::Http {
            address: address.to_string(),
            message,
        };
        let exchange = async {
            let mut sender = self.connect(address).await?;
            sender.ready().await.map_err(|e| http(e.to_string()))?;
            let write = method == Method::PUT || method == Method::DELETE;
            let mut request = Request::builder()
                .method(method)
                .uri(path_and_query)
                .body(Full::new(body.unwrap_or_default()))
                .map_err(|e| http(e.to_string()))?;
            let headers = request.headers_mut();
            if let Ok(host) = HeaderValue::from_str(address) {
                headers.insert(header::HOST, host);
            }
            if let (true, Some(token)) = (write, &self.token) {
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    headers.insert(header::AUTHORIZATION, value);
                }
            }
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        PeerError::TooLarge {
                            address: address.to_string(),
                            limit,
                        }
                    } else {
                        http(e.to_string())
                    }
                })?
                .to_bytes();
            let mut idle = self.idle.borrow_mut();
            let kept = idle.entry(address.to_string()).or_default();
            if kept.len() < IDLE_PER_PEER {
                kept.push(sender);
            }
            Ok(Answer { status, body })
        };
        match glommio::timer::timeout(self.timeout, async { Ok(exchange.await) }).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                address: address.to_string(),
                seconds: self.timeout.as_secs(),
            }),
        }
    }
}
/// Attempts per request to a peer, and the wait before the second (doubling after).
const ATTEMPTS: u32 = 3;

const BACKOFF_FIRST: Duration = Duration::from_millis(200);

/// Counts a peer's failure or lie in `floe_peer_faults_total`.
pub(crate) fn peer_fault(state: &CoreState, peer: &str, kind: &'static str) {
    state
        .shared
        .metrics
        .peer_faults
        .get_or_create(&PeerFault {
            peer: peer.to_string(),
            kind,
        })
        .inc();
}

/// Sends one request to a peer, retrying transport failures and 5xx answers (except 507, a
/// full disk) with back-off. Any other answer is returned as it is.
pub(crate) async fn peer_request(
    state: &CoreState,
    member: &Member,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    limit: usize,
) -> Result<Answer, String> {
    let mut wait = BACKOFF_FIRST;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match state
            .peers
            .request(&member.address, method.clone(), path, body.clone(), limit)
            .await
        {
            Ok(answer)
                if answer.status.is_server_error()
                    && answer.status != StatusCode::INSUFFICIENT_STORAGE =>
            {
                last = format!("{} ({})", answer.status, answer.error_message());
            }
            Ok(answer) => return Ok(answer),
            Err(err) => {
                peer_fault(state, &member.name, "unreachable");
                last = err.to_string();
            }
        }
        if attempt < ATTEMPTS {
            glommio::timer::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(last)
}

/// Metadata from a peer, decoded and verified against the blob ID, with its layout.
pub(crate) fn checked_metadata(
    body: &[u8],
    blob_id: &BlobId,
    n: usize,
) -> Result<(BlobMetadata, BlobLayout), String> {
    let metadata = decode_metadata(body).map_err(|e| e.to_string())?;
    metadata.verify(blob_id, n).map_err(|e| e.to_string())?;
    let layout = metadata.layout().map_err(|e| e.to_string())?;
    Ok((metadata, layout))
}
