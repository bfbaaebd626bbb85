//! An S3 request's payload as the bytes of an object: plain, or decoded from `aws-chunked`;
//! checked against what the request promised (`x-amz-content-sha256`, `Content-MD5`, a
//! `x-amz-checksum-*` header or trailer) before its last byte is handed on, so that a body
//! that fails a check is never stored whole; read a window at a time (an object is stored as
//! several blobs when it is larger than one blob may be).
//!
//! Boundary: every byte here comes from the client; a failed check is an error with S3's code
//! (`BadDigest`, `XAmzContentSHA256Mismatch`, `SignatureDoesNotMatch`, `IncompleteBody`).

use std::collections::VecDeque;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use hyper::StatusCode;
use md5::{Digest, Md5};
use sha2::Sha256;

use super::chunked::{Checksum, Decoder};
use super::sigv4::{self, Verified};
use crate::http::body::{BodySource, RequestBody};
use crate::http::error::ApiError;

/// How the body is sent. One per request: the hash states inline are not worth a box.
#[allow(clippy::large_enum_variant)]
enum Mode {
    /// As is; `sha256` when `x-amz-content-sha256` is the hash of the payload (hex).
    Plain {
        sha256: Option<(Sha256, String)>,
        checksum: Option<(Checksum, String)>,
    },
    /// `aws-chunked`.
    Chunked(Box<Decoder>),
}

/// An S3 payload being read.
pub struct Payload {
    body: RequestBody,
    mode: Mode,
    md5: Md5,
    /// `Content-MD5`, base64.
    content_md5: Option<String>,
    /// Decoded bytes the payload holds.
    total: u64,
    /// Decoded bytes handed on so far.
    taken: u64,
    /// Decoded bytes read but not yet handed on.
    ready: VecDeque<Bytes>,
    /// The underlying body ended and every check held.
    finished: bool,
    /// Bytes the current window may still hand on.
    window: u64,
}

fn s3_error(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError::new(status, code, message)
}

impl Payload {
    /// The payload of a request verified as `verified` (`None`: anonymous), with `headers`.
    /// 411 `MissingContentLength` without a length; 400 for a payload mode or checksum S3 does
    /// not know.
    pub fn new(
        body: RequestBody,
        headers: &hyper::HeaderMap,
        verified: Option<&Verified>,
    ) -> Result<Self, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed_payload = verified.map_or(sigv4::UNSIGNED_PAYLOAD, |v| v.payload.as_str());
        // A checksum's value (`x-amz-checksum-crc32: ...`); not `-type`, `-algorithm` or
        // `-mode`, which name a checksum without carrying one.
        let checksum_header = headers
            .keys()
            .map(|name| name.as_str())
            .find(|name| Checksum::for_header(name).is_some())
            .map(str::to_string);
        let content_md5 = header("content-md5").map(str::to_string);
        let chunked = signed_payload.starts_with("STREAMING-");
        let length = |name: &str| -> Result<u64, ApiError> {
            header(name)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    s3_error(
                        StatusCode::LENGTH_REQUIRED,
                        "MissingContentLength",
                        format!("You must provide the {name} HTTP header."),
                    )
                })
        };
        let (mode, total) = if chunked {
            let signed = match signed_payload {
                sigv4::STREAMING_PAYLOAD | sigv4::STREAMING_PAYLOAD_TRAILER => verified.cloned(),
                sigv4::STREAMING_UNSIGNED_TRAILER => None,
                other => {
                    return Err(s3_error(
                        StatusCode::BAD_REQUEST,
                        "InvalidArgument",
                        format!("x-amz-content-sha256 {other:?} is not a payload mode S3 knows"),
                    ))
                }
            };
            let total = length("x-amz-decoded-content-length")?;
            let trailer = header("x-amz-trailer").map(str::to_string);
            let (name, value) = match (&trailer, &checksum_header) {
                (Some(name), _) => (Some(name.as_str()), None),
                (None, Some(name)) => (Some(name.as_str()), header(name)),
                (None, None) => (None, None),
            };
            let decoder = Decoder::new(signed, Some(total), name, value)
                .map_err(|e| s3_error(StatusCode::BAD_REQUEST, "InvalidArgument", e.to_string()))?;
            (Mode::Chunked(Box::new(decoder)), total)
        } else {
            let total = length("content-length")?;
            let sha256 = (signed_payload != sigv4::UNSIGNED_PAYLOAD)
                .then(|| (Sha256::new(), signed_payload.to_ascii_lowercase()));
            let checksum = match &checksum_header {
                Some(name) => {
                    let checksum = Checksum::for_header(name).ok_or_else(|| {
                        s3_error(
                            StatusCode::BAD_REQUEST,
                            "InvalidArgument",
                            format!("{name} is not a checksum S3 knows"),
                        )
                    })?;
                    Some((checksum, header(name).unwrap_or_default().to_string()))
                }
                None => None,
            };
            (Mode::Plain { sha256, checksum }, total)
        };
        Ok(Self {
            body,
            mode,
            md5: Md5::new(),
            content_md5,
            total,
            taken: 0,
            ready: VecDeque::new(),
            finished: false,
            window: u64::MAX,
        })
    }

    /// Decoded bytes the payload holds.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Decoded bytes handed on so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Lets the next reads hand on at most `bytes` (then they answer `None`).
    pub fn set_window(&mut self, bytes: u64) {
        self.window = bytes;
    }

    /// The MD5 of the bytes handed on, hex: the object's ETag once the payload ended.
    pub fn md5_hex(&self) -> String {
        sigv4::hex(&self.md5.clone().finalize())
    }

    /// Reads the whole payload (at most `limit` bytes): for the small XML bodies.
    pub async fn collect(mut self, limit: u64) -> Result<Bytes, ApiError> {
        if self.total > limit {
            return Err(s3_error(
                StatusCode::BAD_REQUEST,
                "MaxMessageLengthExceeded",
                format!("Your request was too big: at most {limit} bytes here."),
            ));
        }
        crate::http::body::collect_source(&mut self, limit).await
    }

    /// Reads from the request until decoded bytes are ready or the body ended (then checks).
    async fn fill(&mut self) -> Result<(), ApiError> {
        while self.ready.is_empty() && !self.finished {
            match self.body.next_data().await? {
                Some(raw) => match &mut self.mode {
                    Mode::Plain { sha256, checksum } => {
                        if let Some((hash, _)) = sha256 {
                            sha2::Digest::update(hash, &raw);
                        }
                        if let Some((sum, _)) = checksum {
                            sum.update(&raw);
                        }
                        if !raw.is_empty() {
                            self.ready.push_back(raw);
                        }
                    }
                    Mode::Chunked(decoder) => {
                        let mut out = BytesMut::new();
                        decoder
                            .feed(&raw, &mut |data| out.extend_from_slice(data))
                            .map_err(chunked_error)?;
                        if !out.is_empty() {
                            self.ready.push_back(out.freeze());
                        }
                    }
                },
                None => {
                    self.check_end()?;
                    self.finished = true;
                }
            }
        }
        Ok(())
    }

    /// The checks a whole payload must pass.
    fn check_end(&mut self) -> Result<(), ApiError> {
        let received = self.taken + self.ready.iter().map(|b| b.len() as u64).sum::<u64>();
        match &self.mode {
            Mode::Plain { sha256, checksum } => {
                if received != self.total {
                    return Err(s3_error(
                        StatusCode::BAD_REQUEST,
                        "IncompleteBody",
                        format!(
                            "You did not provide the number of bytes specified by the \
                             Content-Length HTTP header ({received} of {})",
                            self.total
                        ),
                    ));
                }
                if let Some((hash, expected)) = sha256 {
                    let computed = sigv4::hex(&sha2::Digest::finalize(hash.clone()));
                    if computed != *expected {
                        return Err(s3_error(
                            StatusCode::BAD_REQUEST,
                            "XAmzContentSHA256Mismatch",
                            format!(
                                "The provided 'x-amz-content-sha256' header does not match what \
                                 was computed ({computed})."
                            ),
                        ));
                    }
                }
                if let Some((sum, sent)) = checksum {
                    sum.check(sent).map_err(|e| {
                        s3_error(StatusCode::BAD_REQUEST, "BadDigest", e.to_string())
                    })?;
                }
            }
            Mode::Chunked(decoder) => {
                if !decoder.is_done() {
                    return Err(s3_error(
                        StatusCode::BAD_REQUEST,
                        "IncompleteBody",
                        "the aws-chunked body ended before its last chunk".into(),
                    ));
                }
            }
        }
        if let Some(sent) = &self.content_md5 {
            // What is ready has not gone through the MD5 yet.
            let mut md5 = self.md5.clone();
            for data in &self.ready {
                md5.update(data);
            }
            let computed = base64::engine::general_purpose::STANDARD.encode(md5.finalize());
            if computed != sent.trim() {
                return Err(s3_error(
                    StatusCode::BAD_REQUEST,
                    "BadDigest",
                    format!("The Content-MD5 you specified did not match what we received ({computed})."),
                ));
            }
        }
        Ok(())
    }

    /// Whether bytes are left past what was handed on.
    pub async fn has_more(&mut self) -> Result<bool, ApiError> {
        self.fill().await?;
        Ok(!self.ready.is_empty())
    }
}

impl BodySource for Payload {
    /// The next decoded bytes within the window. The last bytes of the payload are handed on
    /// only after the whole body was read and checked.
    async fn next_data(&mut self) -> Result<Option<Bytes>, ApiError> {
        if self.window == 0 {
            return Ok(None);
        }
        self.fill().await?;
        let Some(mut data) = self.ready.pop_front() else {
            return Ok(None);
        };
        if data.len() as u64 > self.window {
            let rest = data.split_off(self.window as usize);
            self.ready.push_front(rest);
        }
        let ready: u64 = self.ready.iter().map(|b| b.len() as u64).sum();
        if self.taken + data.len() as u64 + ready >= self.total && !self.finished {
            self.ready.push_front(data);
            self.read_to_end().await?;
            data = self.ready.pop_front().expect("pushed back above");
        }
        self.window -= data.len() as u64;
        self.taken += data.len() as u64;
        self.md5.update(&data);
        Ok(Some(data))
    }
}

impl Payload {
    /// With every byte of the payload read (handed on or in `ready`), reads the request to
    /// its end (nothing more for a plain body; the last chunk and trailers of an
    /// `aws-chunked` one) and runs the checks.
    async fn read_to_end(&mut self) -> Result<(), ApiError> {
        let held = std::mem::take(&mut self.ready);
        while !self.finished {
            match self.body.next_data().await? {
                Some(raw) => {
                    let more = match &mut self.mode {
                        Mode::Plain { .. } => !raw.is_empty(),
                        Mode::Chunked(decoder) => {
                            let mut more = false;
                            decoder
                                .feed(&raw, &mut |data| more |= !data.is_empty())
                                .map_err(chunked_error)?;
                            more
                        }
                    };
                    if more {
                        return Err(s3_error(
                            StatusCode::BAD_REQUEST,
                            "IncompleteBody",
                            format!(
                                "the body holds more than the {} bytes it declared",
                                self.total
                            ),
                        ));
                    }
                }
                None => {
                    self.ready = held;
                    self.check_end()?;
                    self.finished = true;
                    return Ok(());
                }
            }
        }
        self.ready = held;
        Ok(())
    }
}

fn chunked_error(e: super::chunked::ChunkedError) -> ApiError {
    let status = StatusCode::BAD_REQUEST;
    match e.code() {
        "BadDigest" => s3_error(status, "BadDigest", e.to_string()),
        "SignatureDoesNotMatch" => s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            e.to_string(),
        ),
        _ => s3_error(status, "IncompleteBody", e.to_string()),
    }
}
