//! AWS Signature Version 4 as S3 checks it: the canonical request, the string to sign, the
//! signing key, and the verification of a request signed in its `Authorization` header or by
//! a presigned URL, and of `aws-chunked` chunk and trailer signatures.
//!
//! Pure: no clock, no I/O; the caller passes the time and looks up secrets.
//!
//! Boundary: everything a client sends here is untrusted; a malformed header is a
//! [`SigV4Error`], never a panic, and signatures are compared in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// The algorithm every SigV4 signature names.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// `x-amz-content-sha256` of a payload that is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// `x-amz-content-sha256` of an `aws-chunked` body whose chunks are signed.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";

/// ... whose chunks are signed, with signed trailers.
pub const STREAMING_PAYLOAD_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";

/// ... whose chunks are not signed, with trailers (checksums) after the last chunk.
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// The SHA-256 of nothing, in hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a signature does not hold, with S3's error code for each.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SigV4Error {
    #[error("the authorization is malformed: {0}")]
    Malformed(String),
    #[error("the access key {0} is not known here")]
    UnknownKey(String),
    #[error("the signature does not match")]
    Mismatch,
    #[error("the request time {0} is too far from the server's")]
    Skewed(String),
    #[error("the presigned URL expired")]
    Expired,
}

impl SigV4Error {
    /// S3's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "AuthorizationHeaderMalformed",
            Self::UnknownKey(_) => "InvalidAccessKeyId",
            Self::Mismatch => "SignatureDoesNotMatch",
            Self::Skewed(_) => "RequestTimeTooSkewed",
            Self::Expired => "AccessDenied",
        }
    }
}

/// The credential scope: `date/region/service/aws4_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub access_key: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Scope {
    /// Parses `AKID/20130524/us-east-1/s3/aws4_request`.
    pub fn parse(credential: &str) -> Result<Self, SigV4Error> {
        let parts: Vec<&str> = credential.split('/').collect();
        match parts.as_slice() {
            [key, date, region, service, "aws4_request"]
                if !key.is_empty()
                    && date.len() == 8
                    && date.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(Self {
                    access_key: key.to_string(),
                    date: date.to_string(),
                    region: region.to_string(),
                    service: service.to_string(),
                })
            }
            _ => Err(SigV4Error::Malformed(format!(
                "the credential {credential:?} is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
            ))),
        }
    }

    /// The scope as signed (without the key).
    pub fn text(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// SHA-256 in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The key a secret signs with on one day, in one region, for one service.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    pub fn derive(secret: &str, scope: &Scope) -> Self {
        let date = hmac(format!("AWS4{secret}").as_bytes(), scope.date.as_bytes());
        let region = hmac(&date, scope.region.as_bytes());
        let service = hmac(&region, scope.service.as_bytes());
        Self(hmac(&service, b"aws4_request"))
    }

    /// The signature of `string_to_sign`, in hex.
    pub fn sign(&self, string_to_sign: &str) -> String {
        hex(&hmac(&self.0, string_to_sign.as_bytes()))
    }
}

/// Percent-encodes `text` as SigV4 wants: everything but `A-Za-z0-9-._~` (and `/` when
/// `keep_slash`), in uppercase hex.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes `%XX` escapes (and nothing else: `+` stays a plus, as S3 signs it). Malformed
/// escapes are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| (bytes[j] as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex_at(i + 1), hex_at(i + 2)) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request as SigV4 sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: &'a str,
    /// Every header, names in any case.
    pub headers: &'a [(String, String)],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The canonical request for `signed_headers` and `payload_hash`, leaving out query
    /// parameter `skip` (a presigned URL's own signature).
    pub fn canonical(
        &self,
        signed_headers: &[String],
        payload_hash: &str,
        skip: Option<&str>,
    ) -> String {
        let path = uri_encode(&percent_decode(self.path), true);
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        let mut params: Vec<(String, String)> = self
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (
                    uri_encode(&percent_decode(k), false),
                    uri_encode(&percent_decode(v), false),
                )
            })
            .filter(|(k, _)| Some(k.as_str()) != skip)
            .collect();
        params.sort();
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut headers = String::new();
        for name in signed_headers {
            let values: Vec<String> = self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            headers.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        format!(
            "{}\n{path}\n{}\n{headers}\n{}\n{payload_hash}",
            self.method,
            query.join("&"),
            signed_headers.join(";")
        )
    }
}

/// The string to sign for a canonical request at `time` (`YYYYMMDDTHHMMSSZ`) in `scope`.
pub fn string_to_sign(time: &str, scope: &Scope, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{time}\n{}\n{}",
        scope.text(),
        sha256_hex(canonical.as_bytes())
    )
}

/// Compares two hex signatures without an early exit.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Seconds since the Unix epoch of `YYYYMMDDTHHMMSSZ`.
pub fn parse_time(text: &str) -> Result<i64, SigV4Error> {
    let bad = || SigV4Error::Malformed(format!("the time {text:?} is not YYYYMMDDTHHMMSSZ"));
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, SigV4Error> {
        text.get(range)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Most a request's time may differ from the server's. Why: S3's own limit.
pub const SKEW_MAX_SECONDS: i64 = 15 * 60;

/// What a verified request was signed with: what later chunk and trailer signatures chain on.
#[derive(Clone)]
pub struct Verified {
    pub scope: Scope,
    pub time: String,
    pub key: SigningKey,
    /// The request's signature (the seed of `aws-chunked` chunk signatures).
    pub signature: String,
    /// `x-amz-content-sha256` as signed (a hex hash, or one of the `UNSIGNED`/`STREAMING`
    /// markers).
    pub payload: String,
}

/// Verifies a request signed in its `Authorization` header, at server time `now` (Unix
/// seconds); `secret_of` looks up an access key's secret.
pub fn verify_header(
    request: &Request<'_>,
    now: i64,
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<Verified, SigV4Error> {
    let auth = request
        .header("authorization")
        .ok_or_else(|| SigV4Error::Malformed("no Authorization header".into()))?;
    let rest = auth
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| SigV4Error::Malformed(format!("the algorithm is not {ALGORITHM}")))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(SigV4Error::Malformed(
            "Credential, SignedHeaders and Signature are all needed".into(),
        ));
    };
    let scope = Scope::parse(credential)?;
    let time = request
        .header("x-amz-date")
        .ok_or_else(|| SigV4Error::Malformed("no x-amz-date header".into()))?
        .to_string();
    check_time(&time, &scope, now)?;
    let payload = request
        .header("x-amz-content-sha256")
        .unwrap_or(UNSIGNED_PAYLOAD)
        .to_string();
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Malformed(
            "the host header must be signed".into(),
        ));
    }
    let secret = secret_of(&scope.access_key)
        .ok_or_else(|| SigV4Error::UnknownKey(scope.access_key.clone()))?;
    let key = SigningKey::derive(&secret, &scope);
    let canonical = request.canonical(&signed_headers, &payload, None);
    let expected = key.sign(&string_to_sign(&time, &scope, &canonical));
    if !same(&expected, signature) {
        return Err(SigV4Error::Mismatch);
    }
    Ok(Verified {
        scope,
        time,
        key,
        signature: signature.to_string(),
        payload,
    })
}

fn check_time(time: &str, scope: &Scope, now: i64) -> Result<i64, SigV4Error> {
    let at = parse_time(time)?;
    if !time.starts_with(&scope.date) {
        return Err(SigV4Error::Malformed(format!(
            "the credential's date {} is not the request's {time}",
            scope.date
        )));
    }
    if (at - now).abs() > SKEW_MAX_SECONDS {
        return Err(SigV4Error::Skewed(time.to_string()));
    }
    Ok(at)
}

/// Verifies a presigned URL (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
/// `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature` in the query) at `now`.
pub fn verify_presigned(
    request: &Request<'_>,
    now: i64,
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<Verified, SigV4Error> {
    let param = |name: &str| -> Option<String> {
        request.query.split('&').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    };
    let need = |name: &str| {
        param(name).ok_or_else(|| SigV4Error::Malformed(format!("no {name} in the query")))
    };
    if need("X-Amz-Algorithm")? != ALGORITHM {
        return Err(SigV4Error::Malformed(format!(
            "the algorithm is not {ALGORITHM}"
        )));
    }
    let scope = Scope::parse(&need("X-Amz-Credential")?)?;
    let time = need("X-Amz-Date")?;
    let at = parse_time(&time)?;
    let expires: i64 = need("X-Amz-Expires")?
        .parse()
        .ok()
        .filter(|e| (1..=604_800).contains(e))
        .ok_or_else(|| SigV4Error::Malformed("X-Amz-Expires is not 1 to 604800 seconds".into()))?;
    if now > at + expires {
        return Err(SigV4Error::Expired);
    }
    if at - now > SKEW_MAX_SECONDS {
        return Err(SigV4Error::Skewed(time));
    }
    let signed_headers: Vec<String> = need("X-Amz-SignedHeaders")?
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect();
    let signature = need("X-Amz-Signature")?;
    let secret = secret_of(&scope.access_key)
        .ok_or_else(|| SigV4Error::UnknownKey(scope.access_key.clone()))?;
    let key = SigningKey::derive(&secret, &scope);
    let payload = request
        .header("x-amz-content-sha256")
        .unwrap_or(UNSIGNED_PAYLOAD)
        .to_string();
    let canonical = request.canonical(&signed_headers, &payload, Some("X-Amz-Signature"));
    let expected = key.sign(&string_to_sign(&time, &scope, &canonical));
    if !same(&expected, &signature) {
        return Err(SigV4Error::Mismatch);
    }
    Ok(Verified {
        scope,
        time,
        key,
        signature,
        payload,
    })
}

impl Verified {
    /// The signature a chunk of an `aws-chunked` body must carry after the chunk (or seed)
    /// signed `previous`.
    pub fn chunk_signature(&self, previous: &str, chunk: &[u8]) -> String {
        self.chunk_signature_of_hash(previous, &sha256_hex(chunk))
    }

    /// [`chunk_signature`](Self::chunk_signature) of a chunk whose SHA-256 (hex) is known
    /// (hashed as it arrived).
    pub fn chunk_signature_of_hash(&self, previous: &str, chunk_sha256: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256}",
            self.time,
            self.scope.text(),
        );
        self.key.sign(&to_sign)
    }

    /// Whether `signature` is the one for `chunk` after `previous`.
    pub fn chunk_holds(&self, previous: &str, chunk: &[u8], signature: &str) -> bool {
        same(&self.chunk_signature(previous, chunk), signature)
    }

    /// The signature of the trailing headers (`name:value\n` each, as sent) after the last
    /// chunk signed `previous`.
    pub fn trailer_signature(&self, previous: &str, trailers: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
            self.time,
            self.scope.text(),
            sha256_hex(trailers.as_bytes())
        );
        self.key.sign(&to_sign)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn secret_of(key: &str) -> Option<String> {
        (key == KEY).then(|| SECRET.to_string())
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The request of the S3 documentation's `aws-chunked` example (PUT of 66560 bytes in
    /// signed chunks), verified: what its chunk signatures chain on.
    pub(crate) fn documented_chunked_upload() -> Verified {
        let list = headers(&[
            ("Host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("Content-Encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-content-sha256", STREAMING_PAYLOAD),
            ("Content-Length", "66824"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            ),
        ]);
        let request = Request {
            method: "PUT",
            path: "/examplebucket/chunkObject.txt",
            query: "",
            headers: &list,
        };
        let now = parse_time("20130524T000000Z").unwrap();
        verify_header(&request, now, secret_of).unwrap()
    }

    /// The S3 documentation's "GET Object" example (20130524, us-east-1).
    #[test]
    fn the_documented_get_object_example_verifies() {
        let now = parse_time("20130524T000000Z").unwrap();
        let list = headers(&[
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            ),
        ]);
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &list,
        };
        let verified = verify_header(&request, now, secret_of).unwrap();
        assert_eq!(verified.scope.region, "us-east-1");
        // Each thing that goes wrong is its own error.
        assert_eq!(
            verify_header(&request, now + 16 * 60, secret_of)
                .err()
                .unwrap()
                .code(),
            "RequestTimeTooSkewed"
        );
        assert_eq!(
            verify_header(&request, now, |_| Some("wrong".into()))
                .err()
                .unwrap(),
            SigV4Error::Mismatch
        );
        assert_eq!(
            verify_header(&request, now, |_| None).err().unwrap().code(),
            "InvalidAccessKeyId"
        );
        let tampered = Request {
            path: "/test.txt2",
            ..request
        };
        assert_eq!(
            verify_header(&tampered, now, secret_of).err().unwrap(),
            SigV4Error::Mismatch
        );
    }

    /// The S3 documentation's presigned URL example (GET /test.txt, 86400 s).
    #[test]
    fn the_documented_presigned_url_verifies_until_it_expires() {
        let list = headers(&[("Host", "examplebucket.s3.amazonaws.com")]);
        let query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let request = Request {
            method: "GET",
            path: "/test.txt",
            query,
            headers: &list,
        };
        let now = parse_time("20130524T000000Z").unwrap();
        verify_presigned(&request, now + 3600, secret_of).unwrap();
        assert_eq!(
            verify_presigned(&request, now + 86_401, secret_of)
                .err()
                .unwrap(),
            SigV4Error::Expired
        );
    }

    /// The S3 documentation's `aws-chunked` example: a 66560-byte object of `a`s in chunks
    /// of 64 KiB and 1 KiB, seed signature 4f232c43...
    #[test]
    fn the_documented_chunk_signatures_chain() {
        let verified = documented_chunked_upload();
        let first = verified.chunk_signature(&verified.signature, &[b'a'; 65536]);
        assert_eq!(
            first,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let second = verified.chunk_signature(&first, &[b'a'; 1024]);
        assert_eq!(
            second,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let last = verified.chunk_signature(&second, b"");
        assert_eq!(
            last,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
        assert!(!verified.chunk_holds(&second, b"b", &last));
    }

    #[test]
    fn encoding_and_times_follow_the_spec() {
        assert_eq!(uri_encode("a b/c~d+e", true), "a%20b/c~d%2Be");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(percent_decode("a%20b%2fc%zz%"), "a b/c%zz%");
        assert_eq!(parse_time("19700101T000000Z").unwrap(), 0);
        assert_eq!(parse_time("20130524T000000Z").unwrap(), 1_369_353_600);
        assert!(parse_time("2013-05-24T00:00:00Z").is_err());
        assert!(Scope::parse("AK/2013/us-east-1/s3/aws4_request").is_err());
    }
}
