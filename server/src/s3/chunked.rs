//! `aws-chunked` request bodies, decoded as they arrive: the chunks' data, each chunk's
//! signature checked against the chain started by the request's signature (signed payloads),
//! and the trailers after the last chunk (a checksum, and the trailer signature when signed).
//! Also the checksums S3 clients send (`x-amz-checksum-crc32`, `-crc32c`, `-crc64nvme`,
//! `-sha1`, `-sha256`), computed over the decoded bytes.
//!
//! ```text
//! hex-size[;chunk-signature=sig]\r\n data \r\n   ... one per chunk
//! 0[;chunk-signature=sig]\r\n
//! [x-amz-checksum-crc32:base64\r\n [x-amz-trailer-signature:sig\r\n]]
//! \r\n
//! ```
//!
//! Pure and incremental: [`Decoder::feed`] takes any split of the body; memory is one header
//! line (bounded) and the hash states. Boundary: malformed input is a [`ChunkedError`],
//! never a panic (fuzzed: `fuzzing::aws_chunked`).

use base64::Engine;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::sigv4::Verified;

/// Longest chunk header or trailer line. Why: a size, a 64-digit signature and a name; bounds
/// what a client can make the node hold before any data.
const LINE_BYTES_MAX: usize = 256;

/// Why a body was refused, with S3's error code for each.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ChunkedError {
    #[error("the aws-chunked body is malformed: {0}")]
    Malformed(String),
    #[error("a chunk's signature does not match")]
    ChunkSignature,
    #[error("the trailer's signature does not match")]
    TrailerSignature,
    #[error("the {algorithm} checksum does not match: sent {sent}, computed {computed}")]
    Checksum {
        algorithm: &'static str,
        sent: String,
        computed: String,
    },
    #[error("the body holds {got} bytes, not the {declared} x-amz-decoded-content-length says")]
    Length { declared: u64, got: u64 },
}

impl ChunkedError {
    /// S3's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::Length { .. } => "IncompleteBody",
            Self::ChunkSignature | Self::TrailerSignature => "SignatureDoesNotMatch",
            Self::Checksum { .. } => "BadDigest",
        }
    }
}

/// A checksum S3 clients send, computed over a body.
pub enum Checksum {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Checksum {
    /// The checksum a header or trailer name asks for (`x-amz-checksum-crc32`, ...).
    pub fn for_header(name: &str) -> Option<Self> {
        Some(
            match name.to_ascii_lowercase().strip_prefix("x-amz-checksum-")? {
                "crc32" => Self::Crc32(crc32fast::Hasher::new()),
                "crc32c" => Self::Crc32c(0),
                "crc64nvme" => Self::Crc64Nvme(crc64fast_nvme::Digest::new()),
                "sha1" => Self::Sha1(sha1::Sha1::new()),
                "sha256" => Self::Sha256(Sha256::new()),
                _ => return None,
            },
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Crc32(_) => "CRC32",
            Self::Crc32c(_) => "CRC32C",
            Self::Crc64Nvme(_) => "CRC64NVME",
            Self::Sha1(_) => "SHA1",
            Self::Sha256(_) => "SHA256",
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(data),
            Self::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Self::Crc64Nvme(h) => h.write(data),
            Self::Sha1(h) => sha1::Digest::update(h, data),
            Self::Sha256(h) => Digest::update(h, data),
        }
    }

    /// The value as S3 sends it: base64 of the big-endian checksum or digest.
    pub fn base64(&self) -> String {
        let bytes: Vec<u8> = match self {
            Self::Crc32(h) => h.clone().finalize().to_be_bytes().to_vec(),
            Self::Crc32c(c) => c.to_be_bytes().to_vec(),
            Self::Crc64Nvme(h) => h.sum64().to_be_bytes().to_vec(),
            Self::Sha1(h) => sha1::Digest::finalize(h.clone()).to_vec(),
            Self::Sha256(h) => h.clone().finalize().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Checks the value sent against what was computed.
    pub fn check(&self, sent: &str) -> Result<(), ChunkedError> {
        let computed = self.base64();
        if computed == sent.trim() {
            return Ok(());
        }
        Err(ChunkedError::Checksum {
            algorithm: self.name(),
            sent: sent.trim().to_string(),
            computed,
        })
    }
}

enum State {
    /// Reading a chunk's header line.
    Header,
    /// Inside a chunk's data, `left` bytes to go.
    Data {
        left: u64,
        signature: Option<String>,
    },
    /// After a chunk's data: its `\r\n`.
    DataEnd {
        signature: Option<String>,
    },
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// Decodes one `aws-chunked` body.
pub struct Decoder {
    /// The request's verification, when the chunks are signed.
    signed: Option<Verified>,
    previous: String,
    state: State,
    line: Vec<u8>,
    chunk_hash: Sha256,
    /// The checksum the request announced (`x-amz-trailer`, or a checksum header).
    checksum: Option<(String, Checksum)>,
    /// The checksum value, once its trailer (or header) is read.
    checksum_sent: Option<String>,
    trailers_text: String,
    trailer_signature: Option<String>,
    decoded: u64,
    declared: Option<u64>,
}

impl Decoder {
    /// A decoder for a body whose chunks are signed by `signed` (or not, `None`), that should
    /// hold `declared` bytes (`x-amz-decoded-content-length`), with the checksum named by
    /// `checksum_header` (the `x-amz-trailer` value, or a checksum header sent with the
    /// request, whose value is `checksum_value`).
    pub fn new(
        signed: Option<Verified>,
        declared: Option<u64>,
        checksum_header: Option<&str>,
        checksum_value: Option<&str>,
    ) -> Result<Self, ChunkedError> {
        let checksum = match checksum_header {
            Some(name) => Some((
                name.to_ascii_lowercase(),
                Checksum::for_header(name).ok_or_else(|| {
                    ChunkedError::Malformed(format!("{name} is not a checksum S3 knows"))
                })?,
            )),
            None => None,
        };
        Ok(Self {
            previous: signed
                .as_ref()
                .map(|v| v.signature.clone())
                .unwrap_or_default(),
            signed,
            state: State::Header,
            line: Vec::new(),
            chunk_hash: Sha256::new(),
            checksum,
            checksum_sent: checksum_value.map(str::to_string),
            trailers_text: String::new(),
            trailer_signature: None,
            decoded: 0,
            declared,
        })
    }

    /// Bytes of data decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Whether the body's end was read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Decodes `input`, passing data to `out` as it is found.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), ChunkedError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Done => {
                    return Err(ChunkedError::Malformed("bytes after the body's end".into()))
                }
                State::Data { left, .. } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    let (data, rest) = input.split_at(take);
                    *left -= take as u64;
                    if self.signed.is_some() {
                        Digest::update(&mut self.chunk_hash, data);
                    }
                    if let Some((_, checksum)) = &mut self.checksum {
                        checksum.update(data);
                    }
                    self.decoded += take as u64;
                    out(data);
                    input = rest;
                    if let State::Data { left: 0, signature } = &mut self.state {
                        let signature = signature.take();
                        self.state = State::DataEnd { signature };
                    }
                }
                State::Header | State::DataEnd { .. } | State::Trailers => {
                    let Some(end) = input.iter().position(|b| *b == b'\n') else {
                        self.push_line(input)?;
                        return Ok(());
                    };
                    self.push_line(&input[..=end])?;
                    input = &input[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r\n").ok_or_else(|| {
                        ChunkedError::Malformed("a line does not end in CRLF".into())
                    })?;
                    let line = std::str::from_utf8(line)
                        .map_err(|_| ChunkedError::Malformed("a line is not UTF-8".into()))?
                        .to_string();
                    self.line_done(&line)?;
                }
            }
        }
        Ok(())
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), ChunkedError> {
        if self.line.len() + bytes.len() > LINE_BYTES_MAX {
            return Err(ChunkedError::Malformed(format!(
                "a chunk header or trailer is longer than {LINE_BYTES_MAX} bytes"
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &str) -> Result<(), ChunkedError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::DataEnd { signature } => {
                if !line.is_empty() {
                    return Err(ChunkedError::Malformed(
                        "a chunk is longer than its size".into(),
                    ));
                }
                self.chunk_signed(signature.as_deref())?;
                self.state = State::Header;
            }
            State::Header => {
                let (size, signature) = match line.split_once(';') {
                    Some((size, ext)) => {
                        let signature = ext.strip_prefix("chunk-signature=").ok_or_else(|| {
                            ChunkedError::Malformed(format!("unknown chunk extension {ext:?}"))
                        })?;
                        (size, Some(signature.to_string()))
                    }
                    None => (line, None),
                };
                let size = u64::from_str_radix(size.trim(), 16).map_err(|_| {
                    ChunkedError::Malformed(format!("{size:?} is not a chunk size"))
                })?;
                if self.signed.is_some() && signature.is_none() {
                    return Err(ChunkedError::ChunkSignature);
                }
                if size == 0 {
                    // The last chunk: signed over no data.
                    self.chunk_signed(signature.as_deref())?;
                    self.state = State::Trailers;
                } else {
                    self.state = State::Data {
                        left: size,
                        signature,
                    };
                }
            }
            State::Trailers => {
                if line.is_empty() {
                    self.finish_trailers()?;
                    self.state = State::Done;
                    return Ok(());
                }
                let (name, value) = line.split_once(':').ok_or_else(|| {
                    ChunkedError::Malformed(format!("the trailer {line:?} has no ':'"))
                })?;
                let name = name.trim().to_ascii_lowercase();
                if name == "x-amz-trailer-signature" {
                    self.trailer_signature = Some(value.trim().to_string());
                } else {
                    self.trailers_text
                        .push_str(&format!("{name}:{}\n", value.trim()));
                    if self.checksum.as_ref().is_some_and(|(n, _)| *n == name) {
                        self.checksum_sent = Some(value.trim().to_string());
                    }
                }
                self.state = State::Trailers;
            }
            State::Data { .. } | State::Done => unreachable!("lines are read only in line states"),
        }
        Ok(())
    }

    fn chunk_signed(&mut self, signature: Option<&str>) -> Result<(), ChunkedError> {
        let hash = std::mem::take(&mut self.chunk_hash).finalize();
        let Some(verified) = &self.signed else {
            return Ok(());
        };
        let signature = signature.ok_or(ChunkedError::ChunkSignature)?;
        let expected = verified.chunk_signature_of_hash(&self.previous, &super::sigv4::hex(&hash));
        if !super::sigv4::same(&expected, signature) {
            return Err(ChunkedError::ChunkSignature);
        }
        self.previous = expected;
        Ok(())
    }

    fn finish_trailers(&mut self) -> Result<(), ChunkedError> {
        if let Some(verified) = &self.signed {
            if !self.trailers_text.is_empty() {
                let sent = self
                    .trailer_signature
                    .as_deref()
                    .ok_or(ChunkedError::TrailerSignature)?;
                let expected = verified.trailer_signature(&self.previous, &self.trailers_text);
                if !super::sigv4::same(&expected, sent) {
                    return Err(ChunkedError::TrailerSignature);
                }
            }
        }
        if let Some(declared) = self.declared {
            if declared != self.decoded {
                return Err(ChunkedError::Length {
                    declared,
                    got: self.decoded,
                });
            }
        }
        match (&self.checksum, &self.checksum_sent) {
            (Some((_, checksum)), Some(sent)) => checksum.check(sent),
            (Some((name, _)), None) => Err(ChunkedError::Malformed(format!(
                "the {name} trailer the request announced is missing"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoder: &mut Decoder, body: &[u8], split: usize) -> Result<Vec<u8>, ChunkedError> {
        let mut out = Vec::new();
        for piece in body.chunks(split.max(1)) {
            decoder.feed(piece, &mut |d| out.extend_from_slice(d))?;
        }
        if !decoder.is_done() {
            return Err(ChunkedError::Malformed("the body ended early".into()));
        }
        Ok(out)
    }

    /// The S3 documentation's signed `aws-chunked` example, decoded whole and in pieces.
    #[test]
    fn the_documented_signed_body_decodes_and_a_changed_byte_is_refused() {
        let verified = crate::s3::sigv4::tests::documented_chunked_upload();
        let mut body = Vec::new();
        body.extend_from_slice(b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n");
        body.extend_from_slice(&[b'a'; 65536]);
        body.extend_from_slice(b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n");
        body.extend_from_slice(&[b'a'; 1024]);
        body.extend_from_slice(b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n");
        assert_eq!(body.len(), 66824);
        for split in [body.len(), 1, 7, 4096] {
            let mut decoder =
                Decoder::new(Some(verified.clone()), Some(66560), None, None).unwrap();
            assert_eq!(
                decode(&mut decoder, &body, split).unwrap(),
                vec![b'a'; 66560]
            );
        }
        let mut changed = body.clone();
        changed[70_000 - 4000] = b'b';
        let mut decoder = Decoder::new(Some(verified.clone()), Some(66560), None, None).unwrap();
        assert_eq!(
            decode(&mut decoder, &changed, 999).unwrap_err(),
            ChunkedError::ChunkSignature
        );
        let mut decoder = Decoder::new(Some(verified), Some(66561), None, None).unwrap();
        assert!(matches!(
            decode(&mut decoder, &body, 999).unwrap_err(),
            ChunkedError::Length { .. }
        ));
    }

    /// Unsigned chunks with a checksum trailer (what current SDKs send by default).
    #[test]
    fn unsigned_chunks_with_a_checksum_trailer_are_checked() {
        let body = |trailer: &str| {
            format!("5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:{trailer}\r\n\r\n")
                .into_bytes()
        };
        for split in [1, 3, 100] {
            let mut decoder =
                Decoder::new(None, Some(11), Some("x-amz-checksum-crc32"), None).unwrap();
            assert_eq!(
                decode(&mut decoder, &body("DUoRhQ=="), split).unwrap(),
                b"hello world"
            );
        }
        let mut decoder = Decoder::new(None, Some(11), Some("x-amz-checksum-crc32"), None).unwrap();
        let err = decode(&mut decoder, &body("AAAAAA=="), 4).unwrap_err();
        assert_eq!(err.code(), "BadDigest");
        // Known values of "hello world".
        let of = |name: &str| {
            let mut checksum = Checksum::for_header(name).unwrap();
            checksum.update(b"hello ");
            checksum.update(b"world");
            checksum.base64()
        };
        assert_eq!(of("x-amz-checksum-crc32"), "DUoRhQ==");
        assert_eq!(of("x-amz-checksum-crc32c"), "yZRlqg==");
        assert_eq!(of("x-amz-checksum-sha1"), "Kq5sNclPz7QV2+lfQIuc6R7oRu0=");
        assert_eq!(
            of("x-amz-checksum-sha256"),
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
        assert!(Checksum::for_header("x-amz-checksum-md5").is_none());
    }

    #[test]
    fn malformed_bodies_are_errors_never_panics() {
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;foo=bar\r\nhello\r\n0\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
            b"0\r\n\r\nextra",
        ] {
            let mut decoder = Decoder::new(None, None, None, None).unwrap();
            assert!(
                decode(&mut decoder, body, 3).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut decoder = Decoder::new(None, None, None, None).unwrap();
        let long = vec![b'1'; 1000];
        assert!(decoder.feed(&long, &mut |_| {}).is_err());
    }
}
