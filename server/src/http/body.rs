//! Request bodies and responses: reading a body under a size limit and a stall deadline,
//! the write token, JSON and octet-stream answers, and the JSON error answer.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::http::error::ApiError;

/// Every response body: whole, or a stream of chunks produced while it is sent. Each chunk is a
/// `Bytes` that may be a view of a mapped file, which the socket adapter sends with
/// `sendfile` ([`crate::http::io`]).
pub enum Body {
    Whole(Option<Bytes>),
    /// Chunks from a producer task; an error ends the response abruptly (the connection is
    /// closed, so a client never takes a short body for a whole one). A bounded channel: a
    /// slow reader holds the producer back.
    Stream(futures::channel::mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Default for Body {
    fn default() -> Self {
        Self::Whole(None)
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::Whole(Some(bytes))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use futures::Stream;
        use std::task::Poll;
        match self.get_mut() {
            Self::Whole(bytes) => {
                Poll::Ready(bytes.take().map(|b| Ok(hyper::body::Frame::data(b))))
            }
            Self::Stream(chunks) => match std::pin::Pin::new(chunks).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Whole(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Whole(bytes) => {
                hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// The body length a request declares, if it declares one.
pub fn declared_length(headers: &hyper::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("invalidHeader", "Content-Length is not a number"))
}

/// The write token a request carries (`Authorization: Bearer <token>`), if any.
pub fn bearer_token(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Where an upload's bytes come from, in order: a request body ([`RequestBody`]), or what a
/// decoder makes of one (S3's `aws-chunked` bodies, an object split into blobs).
#[allow(async_fn_in_trait)] // used with concrete types only, on one core
pub trait BodySource {
    /// The next bytes, `None` at the end; errors as [`next_data`]'s (or the decoder's).
    async fn next_data(&mut self) -> Result<Option<Bytes>, ApiError>;
}

/// A request body read under a stall deadline.
pub struct RequestBody {
    pub body: Incoming,
    pub stall: Duration,
}

impl BodySource for RequestBody {
    async fn next_data(&mut self) -> Result<Option<Bytes>, ApiError> {
        next_data(&mut self.body, self.stall).await
    }
}

/// Reads a whole body from `source`, at most `limit` bytes; what [`collect_body`] does for a
/// request body.
pub async fn collect_source(source: &mut impl BodySource, limit: u64) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bodyTooLarge",
            format!("the body is longer; the limit here is {limit} bytes"),
        )
    };
    let mut first: Option<Bytes> = None;
    let mut collected = BytesMut::new();
    while let Some(data) = source.next_data().await? {
        let held = first.as_ref().map_or(0, Bytes::len) + collected.len();
        if (held + data.len()) as u64 > limit {
            return Err(too_large());
        }
        // One frame (the usual case for small bodies): no copy.
        match first.take() {
            None if collected.is_empty() => first = Some(data),
            Some(previous) => {
                collected.reserve(previous.len() + data.len());
                collected.extend_from_slice(&previous);
                collected.extend_from_slice(&data);
            }
            None => collected.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| collected.freeze()))
}

/// Reads a whole request body of at most `limit` bytes. A body that ends early (truncated
/// upload, a client that went away) is an error, and nothing of it is kept; so is a body that
/// stalls: no bytes for `stall` (the connection's idle timeout, which does not apply while
/// its request is being served, see [`crate::serve`]).
pub async fn collect_body(body: Incoming, limit: u64, stall: Duration) -> Result<Bytes, ApiError> {
    collect_source(&mut RequestBody { body, stall }, limit).await
}

/// The next bytes of a request body, `None` at its end: 400 `incompleteBody` if it ends early
/// or cannot be read, 408 `bodyStalled` if no bytes arrive for `stall`. Trailers are skipped.
pub async fn next_data(body: &mut Incoming, stall: Duration) -> Result<Option<Bytes>, ApiError> {
    loop {
        let frame = glommio::timer::timeout(stall, async { Ok(body.frame().await) }).await;
        let frame = match frame {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => return Ok(None),
            Ok(Some(Err(err))) => {
                return Err(ApiError::bad_request(
                    "incompleteBody",
                    format!("the request body ended early or could not be read: {err}"),
                ))
            }
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "bodyStalled",
                    format!(
                        "no bytes of the request body arrived for {} s",
                        stall.as_secs()
                    ),
                ))
            }
        };
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// 413 `bodyTooLarge` for a body that declares more than `limit` bytes.
pub fn check_declared(headers: &hyper::HeaderMap, limit: u64) -> Result<Option<u64>, ApiError> {
    let declared = declared_length(headers)?;
    match declared {
        Some(bytes) if bytes > limit => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bodyTooLarge",
            format!("the body declares {bytes} bytes; the limit here is {limit} bytes"),
        )),
        _ => Ok(declared),
    }
}

/// 401 unless the request carries `token` (`Authorization: Bearer <token>`); any request
/// passes when there is no token.
pub fn check_token(token: Option<&str>, headers: &hyper::HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = bearer_token(headers);
    // In constant time, so timing does not reveal a prefix (only whether the length matches).
    let matches = given.is_some_and(|g| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            g.as_bytes(),
            token.as_bytes(),
        ))
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need `Authorization: Bearer <token>` with the node's write token",
        ))
    }
}

pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(Bytes::from(
        serde_json::to_vec(&value).expect("JSON values serialise"),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn octets(bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// The response for an error.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let mut response = Response::new(Body::from(Bytes::from(err.body())));
    *response.status_mut() = err.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match err.status {
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    if let Some(allow) = err.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}
