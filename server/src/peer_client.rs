//! Talking to the other nodes of the committee: an HTTP/1.1 client per core (hyper over a
//! glommio socket, the same adapter the server uses), with idle connections kept per peer, a
//! deadline on every connect and every request, retries with back-off, and a bound on every
//! answer.
//!
//! Deadlines are far below any client's timeout, so that a hung peer (one that accepts
//! connections and never answers, the common way to be faulty) costs a request a bounded
//! wait, never the client's patience: [`Patience::Lookup`] for small questions (metadata,
//! status, listings), [`Patience::Transfer`] for sliver and symbol batches. A request that
//! timed out is not retried (a hung peer will not answer the second time either).
//!
//! Nothing a peer says is trusted: callers verify metadata, slivers and recovery symbols
//! against the blob ID before using them, and a peer that answers garbage is just a failed peer.
//!
//! Boundary: errors are [`PeerError`]s, never strings; every answer is read under a bound
//! named next to the codec's sizes (`floe_codec::*_bytes_max`) or here.

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

use crate::config::{Member, PeerDeadlines};
use crate::http::io::HyperStream;
use crate::metrics::PeerFault;
use crate::state::CoreState;

/// Why a request to a peer did not succeed.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot connect to {address}: {message}")]
    Connect { address: String, message: String },
    #[error("{address} did not answer within {millis} ms")]
    Timeout { address: String, millis: u64 },
    #[error("talking to {address}: {message}")]
    Http { address: String, message: String },
    #[error("{address} answered more than {limit} bytes")]
    TooLarge { address: String, limit: usize },
    /// This node could not prepare the request (reading what it sends).
    #[error("preparing the request: {0}")]
    Local(String),
    /// The peer answered, but not with success.
    #[error("{address} answered {status}: {message}")]
    Answered {
        address: String,
        status: StatusCode,
        /// The floe error code of the answer, if it had one.
        code: Option<String>,
        message: String,
    },
}

impl PeerError {
    /// Whether the peer said it does not have the thing (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Answered { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// The HTTP status the peer answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Bytes of a peer's JSON acknowledgement (a store or delete answer) read at most.
pub const ACK_BYTES_MAX: usize = 64 << 10;

/// Bytes of a peer's blob listing page or status answer read at most. Why: a page of 1000
/// entries is about 100 KiB.
pub const LISTING_BYTES_MAX: usize = 1 << 20;

/// How long a kind of request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// A small question (metadata, status, a listing page, a delete): `peer_lookup_timeout_ms`.
    Lookup,
    /// A batch of slivers or recovery symbols: `peer_timeout_seconds`.
    Transfer,
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

    /// The body of a 200 answer; any other answer is [`PeerError::Answered`].
    pub fn ok_body(self, member: &Member) -> Result<Bytes, PeerError> {
        if self.status == StatusCode::OK {
            return Ok(self.body);
        }
        let code = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        Err(PeerError::Answered {
            address: member.address.clone(),
            status: self.status,
            message: self.error_message(),
            code,
        })
    }
}

/// Idle connections kept per peer and core. Why: enough for the publisher's and the healer's
/// parallel requests to one peer without reconnecting; more would only hold sockets.
const IDLE_PER_PEER: usize = 16;

/// One core's client to its peers. Not `Send`: each core has its own.
pub struct Peers {
    idle: RefCell<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
    token: Option<String>,
    /// This node's name and the cluster secret, to sign every request (`http::peer_auth`).
    auth: Option<(String, String)>,
    deadlines: PeerDeadlines,
}

impl Peers {
    /// `token` goes with writes (`PUT`, `DELETE`); `deadlines` bound connecting and each
    /// request, answer included.
    /// With `auth` (this node's name, the cluster secret), every request is signed.
    pub fn new(
        token: Option<String>,
        auth: Option<(String, String)>,
        deadlines: PeerDeadlines,
    ) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
            token,
            auth,
            deadlines,
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
        let stream = TcpStream::connect_timeout(address, self.deadlines.connect)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let io = HyperStream::new(stream).map_err(|e| fail(e.to_string()))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        crate::task::spawn_detached("peer_connection", async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request and reads the whole answer, at most `limit` bytes of body, within the
    /// deadline of its `patience`.
    pub async fn request(
        &self,
        address: &str,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        limit: usize,
        patience: Patience,
    ) -> Result<Answer, PeerError> {
        let deadline = match patience {
            Patience::Lookup => self.deadlines.lookup,
            Patience::Transfer => self.deadlines.transfer,
        };
        let http = |message: String| PeerError::Http {
            address: address.to_string(),
            message,
        };
        let exchange = async {
            let mut sender = self.connect(address).await?;
            sender.ready().await.map_err(|e| http(e.to_string()))?;
            let write = method == Method::PUT || method == Method::DELETE;
            let signature = self.auth.as_ref().map(|(name, secret)| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                crate::http::peer_auth::sign(secret, name, method.as_str(), path_and_query, now)
            });
            let mut request = Request::builder()
                .method(method)
                .uri(path_and_query)
                .body(Full::new(body.unwrap_or_default()))
                .map_err(|e| http(e.to_string()))?;
            let headers = request.headers_mut();
            if let Ok(host) = HeaderValue::from_str(address) {
                headers.insert(header::HOST, host);
            }
            if let Some(value) = signature.and_then(|s| HeaderValue::from_str(&s).ok()) {
                headers.insert(crate::http::peer_auth::HEADER, value);
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
        match glommio::timer::timeout(deadline, async { Ok(exchange.await) }).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                address: address.to_string(),
                millis: deadline.as_millis() as u64,
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

/// One request to a peer.
pub(crate) struct PeerRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<Bytes>,
    /// Most bytes of answer body read.
    pub limit: usize,
    pub patience: Patience,
}

impl<'a> PeerRequest<'a> {
    /// A `GET` of at most `limit` bytes.
    pub fn get(path: &'a str, limit: usize, patience: Patience) -> Self {
        Self {
            method: Method::GET,
            path,
            body: None,
            limit,
            patience,
        }
    }
}

/// Sends one request to a peer, retrying failures to connect or talk and 5xx answers (except
/// 507, a full disk) with back-off; a timeout is not retried. Any other answer is returned as
/// it is; a 5xx after the last attempt is [`PeerError::Answered`].
pub(crate) async fn peer_request(
    state: &CoreState,
    member: &Member,
    request: PeerRequest<'_>,
) -> Result<Answer, PeerError> {
    let mut wait = BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        let result = state
            .peers
            .request(
                &member.address,
                request.method.clone(),
                request.path,
                request.body.clone(),
                request.limit,
                request.patience,
            )
            .await;
        let error = match result {
            Ok(answer)
                if answer.status.is_server_error()
                    && answer.status != StatusCode::INSUFFICIENT_STORAGE =>
            {
                answer
                    .ok_body(member)
                    .expect_err("a server error is not a success")
            }
            Ok(answer) => return Ok(answer),
            Err(err) => {
                peer_fault(state, &member.name, "unreachable");
                err
            }
        };
        if attempt == ATTEMPTS || matches!(error, PeerError::Timeout { .. }) {
            return Err(error);
        }
        glommio::timer::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    }
}

/// Why a peer's metadata was refused.
#[derive(Debug, Error)]
pub enum BadMetadata {
    #[error("it does not decode: {0}")]
    Decode(#[from] floe_codec::BcsError),
    #[error("it does not hold for the blob ID: {0}")]
    Verify(#[from] floe_codec::MetadataError),
}

/// Metadata from a peer, decoded and verified against the blob ID, with its layout.
pub fn checked_metadata(
    body: &[u8],
    blob_id: &BlobId,
    n: usize,
) -> Result<(BlobMetadata, BlobLayout), BadMetadata> {
    let metadata = decode_metadata(body)?;
    metadata.verify(blob_id, n)?;
    let layout = metadata.layout()?;
    Ok((metadata, layout))
}
