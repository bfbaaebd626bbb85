//! The S3 operations: a request is routed (path or virtual-host style), authenticated (SigV4
//! in the header or a presigned URL; anonymous reads of public buckets), and served on top of
//! the publisher (objects' blobs) and the aggregator (their bytes), with the namespace naming
//! them.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use floe_codec::BlobId;
use floe_storage::namespace::{Listing, Object, Part, Piece};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use md5::{Digest, Md5};

use super::payload::Payload;
use super::sigv4::{self, SigV4Error, Verified};
use super::xml::{S3Error, Xml};
use super::{Pinned, S3};
use crate::http::body::{Body, BodySource, RequestBody};
use crate::http::error::ApiError;
use crate::publisher::{store, take_in, StoreOptions};
use crate::state::CoreState;

/// Header listing the blob IDs of an object, in order (at most [`BLOB_IDS_IN_HEADER_MAX`]),
/// so a reader can verify what it read; `x-floe-blob-sizes` gives their sizes.
pub const BLOB_IDS_HEADER: &str = "x-floe-blob-ids";
pub const BLOB_SIZES_HEADER: &str = "x-floe-blob-sizes";
/// How many blobs an object has (always sent).
pub const BLOB_COUNT_HEADER: &str = "x-floe-blob-count";
/// Most blob IDs sent in [`BLOB_IDS_HEADER`]. Why: a header stays well under the 8-16 KiB
/// clients and proxies accept (45 bytes an ID); larger objects are listed by count only.
pub const BLOB_IDS_IN_HEADER_MAX: usize = 100;

/// Epochs an object's blobs are stored for: for good (an object lives until deleted).
const OBJECT_EPOCHS: u32 = 1_000_000;
/// Smallest part of a multipart upload but the last (S3's rule).
pub const PART_BYTES_MIN: u64 = 5 << 20;
/// Most parts of an upload (S3's rule).
pub const PARTS_MAX: u32 = 10_000;
/// Longest key (S3's limit, in UTF-8 bytes).
pub const KEY_BYTES_MAX: usize = 1024;
/// Most bytes of `x-amz-meta-*` names and values on an object (S3's limit).
pub const USER_METADATA_BYTES_MAX: usize = 2048;
/// Largest XML request body taken (a `CompleteMultipartUpload` of 10,000 parts is ~1 MB).
const XML_BODY_BYTES_MAX: u64 = 2 << 20;
/// Most keys, parts or uploads in one listing page (S3's).
const PAGE_MAX: usize = 1000;

type S3Result = Result<Response<Body>, S3Error>;

/// A routed S3 request.
struct Target {
    bucket: Option<String>,
    key: Option<String>,
    /// Query parameters, decoded.
    query: Vec<(String, String)>,
}

impl Target {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
}

/// Serves one request of the S3 listener.
pub async fn serve(
    state: &Rc<CoreState>,
    request: Request<Incoming>,
) -> (&'static str, Response<Body>) {
    let Some(s3) = state.shared.s3.clone() else {
        let err = S3Error::internal("S3 is not configured on this node");
        return ("s3", err.response(false));
    };
    let head = request.method() == Method::HEAD;
    let target = route(&s3, &request);
    let name = operation_name(request.method(), &target);
    let response = match handle(state, &s3, target, request).await {
        Ok(response) => response,
        Err(err) => err.response(head),
    };
    (name, response)
}

/// The bucket and key a request names: virtual-host style when the Host is `BUCKET.DOMAIN`,
/// else path style (`/bucket/key`).
fn route(s3: &S3, request: &Request<Incoming>) -> Target {
    let path = request.uri().path();
    let query = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (query_decode(k), query_decode(v))
        })
        .collect();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h, |(name, _)| name)
                .to_ascii_lowercase()
        });
    let virtual_bucket = match (&s3.config.domain, host) {
        (Some(domain), Some(host)) => host
            .strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))
            .filter(|b| !b.is_empty())
            .map(str::to_string),
        _ => None,
    };
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = match virtual_bucket {
        Some(bucket) => (Some(bucket), Some(rest.to_string())),
        None => match rest.split_once('/') {
            Some((bucket, key)) => (Some(bucket.to_string()), Some(key.to_string())),
            None => (Some(rest.to_string()), None),
        },
    };
    let bucket = bucket
        .filter(|b| !b.is_empty())
        .map(|b| sigv4::percent_decode(&b));
    let key = key
        .filter(|k| !k.is_empty())
        .map(|k| sigv4::percent_decode(&k));
    Target { bucket, key, query }
}

/// Query values: `%XX` escapes and `+` as a space (form encoding, as SDKs send).
fn query_decode(text: &str) -> String {
    sigv4::percent_decode(&text.replace('+', "%20"))
}

fn operation_name(method: &Method, target: &Target) -> &'static str {
    match (method, &target.bucket, &target.key) {
        (_, None, _) => "s3_list_buckets",
        (&Method::GET, Some(_), None) => "s3_list_objects",
        (_, Some(_), None) => "s3_bucket",
        (&Method::GET, _, Some(_)) => "s3_get_object",
        (&Method::HEAD, _, Some(_)) => "s3_head_object",
        (&Method::PUT, _, Some(_)) if target.has("partNumber") => "s3_upload_part",
        (&Method::PUT, _, Some(_)) => "s3_put_object",
        _ => "s3_object",
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks the request's signature (SigV4 header or presigned URL, SigV2 presigned URL).
fn authenticate(s3: &S3, request: &Request<Incoming>) -> Result<Auth, S3Error> {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let query = request.uri().query().unwrap_or("");
    let signed = sigv4::Request {
        method: request.method().as_str(),
        path: request.uri().path(),
        query,
        headers: &headers,
    };
    let presigned = query.contains("X-Amz-Signature=");
    let has_header = request.headers().contains_key(header::AUTHORIZATION);
    if !has_header && !presigned && super::sigv2::is_presigned(query) {
        // A SigV2 presigned URL: its payload is unsigned.
        return super::sigv2::verify_presigned(&signed, now_unix(), |key| s3.secret_of(key))
            .map(|_| Auth::Signed(None))
            .map_err(sig_error);
    }
    if !has_header && !presigned {
        return Ok(Auth::Anonymous);
    }
    let secret_of = |key: &str| s3.secret_of(key);
    let verified = if has_header {
        sigv4::verify_header(&signed, now_unix(), secret_of)
    } else {
        sigv4::verify_presigned(&signed, now_unix(), secret_of)
    };
    verified.map(|v| Auth::Signed(Some(v))).map_err(sig_error)
}

fn sig_error(err: SigV4Error) -> S3Error {
    let status = match err {
        SigV4Error::Malformed(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    let message = match &err {
        SigV4Error::Mismatch => "The request signature we calculated does not match the \
                                 signature you provided. Check your key and signing method."
            .to_string(),
        other => other.to_string(),
    };
    S3Error::new(status, err.code(), message)
}

/// Who a request is.
enum Auth {
    /// No signature at all.
    Anonymous,
    /// Signed by a key: with SigV4 (what chunk signatures chain on), or a SigV2 presigned URL.
    Signed(Option<Verified>),
}

async fn handle(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    target: Target,
    request: Request<Incoming>,
) -> S3Result {
    let auth = authenticate(s3, &request)?;
    let method = request.method().clone();
    if matches!(auth, Auth::Anonymous) {
        let public_read = matches!(method, Method::GET | Method::HEAD)
            && target
                .bucket
                .as_ref()
                .is_some_and(|b| s3.config.public_buckets.contains(b))
            && !target.has("uploads")
            && !target.has("uploadId");
        if !public_read {
            return Err(S3Error::new(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Access Denied: sign the request with an S3 key of this node (anonymous \
                 requests may only read buckets node.toml marks public)",
            ));
        }
    }
    let verified = match auth {
        Auth::Anonymous => None,
        Auth::Signed(verified) => verified,
    };
    let Some(bucket) = target.bucket.clone() else {
        return match method {
            Method::GET => list_buckets(s3).await,
            _ => Err(not_implemented(&method, "the service")),
        };
    };
    let Some(key) = target.key.clone() else {
        return match method {
            Method::PUT => create_bucket(state, s3, &bucket, request, verified).await,
            Method::HEAD => head_bucket(s3, &bucket).await,
            Method::DELETE => delete_bucket(s3, &bucket).await,
            Method::GET if target.has("location") => get_bucket_location(s3, &bucket).await,
            Method::GET if target.has("versioning") => {
                bucket_exists(s3, &bucket).await?;
                let mut xml = Xml::document();
                xml.root("VersioningConfiguration");
                xml.close("VersioningConfiguration");
                Ok(xml.response())
            }
            Method::GET if target.has("uploads") => list_uploads(s3, &bucket, &target).await,
            Method::GET => list_objects(s3, &bucket, &target).await,
            Method::POST if target.has("delete") => {
                delete_objects(state, s3, &bucket, request, verified).await
            }
            _ => Err(not_implemented(&method, "a bucket")),
        };
    };
    if key.len() > KEY_BYTES_MAX {
        return Err(S3Error::bad(
            "KeyTooLongError",
            format!("Your key is too long: at most {KEY_BYTES_MAX} bytes"),
        ));
    }
    if matches!(method, Method::PUT | Method::POST) {
        let metadata: usize = request
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("x-amz-meta-"))
            .map(|(n, v)| n.as_str().len() - "x-amz-meta-".len() + v.len())
            .sum();
        if metadata > USER_METADATA_BYTES_MAX {
            return Err(S3Error::bad(
                "MetadataTooLarge",
                format!("Your metadata headers exceed the maximum allowed metadata size ({USER_METADATA_BYTES_MAX} bytes)"),
            ));
        }
    }
    let upload_id = target.param("uploadId").map(str::to_string);
    match (method.clone(), upload_id) {
        (Method::GET | Method::HEAD, None) => {
            get_object(
                state,
                s3,
                &bucket,
                &key,
                &target,
                request,
                method == Method::HEAD,
            )
            .await
        }
        (Method::PUT, None) if request.headers().contains_key("x-amz-copy-source") => {
            copy_object(s3, state, &bucket, &key, request).await
        }
        (Method::PUT, None) => put_object(state, s3, &bucket, &key, request, verified).await,
        (Method::DELETE, None) => delete_object(state, s3, &bucket, &key).await,
        (Method::POST, None) if target.has("uploads") => {
            create_upload(s3, &bucket, &key, request.headers()).await
        }
        (Method::PUT, Some(upload_id)) => {
            let number = part_number(&target)?;
            if request.headers().contains_key("x-amz-copy-source") {
                upload_part_copy(state, s3, &upload_id, number, request).await
            } else {
                upload_part(state, s3, &upload_id, number, request, verified).await
            }
        }
        (Method::POST, Some(upload_id)) => {
            complete_upload(state, s3, &bucket, &key, &upload_id, request, verified).await
        }
        (Method::DELETE, Some(upload_id)) => abort_upload(state, s3, &upload_id).await,
        (Method::GET, Some(upload_id)) => list_parts(s3, &bucket, &key, &upload_id, &target).await,
        _ => Err(not_implemented(&method, "an object")),
    }
}

fn not_implemented(method: &Method, what: &str) -> S3Error {
    S3Error::new(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplemented",
        format!("{method} on {what} with these parameters is not an operation floe serves"),
    )
}

fn part_number(target: &Target) -> Result<u32, S3Error> {
    target
        .param("partNumber")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=PARTS_MAX).contains(n))
        .ok_or_else(|| {
            S3Error::bad(
                "InvalidArgument",
                format!("Part number must be an integer between 1 and {PARTS_MAX}, inclusive"),
            )
        })
}

// ---- buckets -------------------------------------------------------------------------------

async fn bucket_exists(s3: &Arc<S3>, bucket: &str) -> Result<(), S3Error> {
    let name = bucket.to_string();
    match s3.ns(move |ns| ns.bucket(&name)).await? {
        Some(_) => Ok(()),
        None => Err(S3Error::no_such_bucket(bucket)),
    }
}

/// S3's bucket naming rules.
fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

async fn list_buckets(s3: &Arc<S3>) -> S3Result {
    let buckets = s3.ns(|ns| ns.buckets()).await?;
    let mut xml = Xml::document();
    xml.root("ListAllMyBucketsResult");
    owner(&mut xml);
    xml.open("Buckets");
    for (name, bucket) in buckets {
        xml.open("Bucket");
        xml.leaf("Name", &name);
        xml.leaf("CreationDate", &iso_time(bucket.created_unix_seconds));
        xml.close("Bucket");
    }
    xml.close("Buckets");
    xml.close("ListAllMyBucketsResult");
    Ok(xml.response())
}

fn owner(xml: &mut Xml) {
    xml.open("Owner");
    xml.leaf("ID", "floe");
    xml.leaf("DisplayName", "floe");
    xml.close("Owner");
}

async fn create_bucket(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    bucket: &str,
    request: Request<Incoming>,
    verified: Option<Verified>,
) -> S3Result {
    if !valid_bucket_name(bucket) {
        return Err(S3Error::bad(
            "InvalidBucketName",
            "The specified bucket is not valid: 3 to 63 lowercase letters, digits, dots and \
             hyphens, starting and ending with a letter or digit",
        )
        .with_resource(format!("/{bucket}")));
    }
    // The body (a CreateBucketConfiguration naming a region) is read, checked and ignored:
    // one node serves one region.
    payload(state, request, verified.as_ref())?
        .collect(XML_BODY_BYTES_MAX)
        .await?;
    let name = bucket.to_string();
    s3.ns(move |ns| ns.create_bucket(&name)).await?;
    let mut response = Response::new(Body::default());
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/{bucket}")).map_err(|_| S3Error::internal("location"))?,
    );
    Ok(response)
}

async fn head_bucket(s3: &Arc<S3>, bucket: &str) -> S3Result {
    bucket_exists(s3, bucket).await?;
    let mut response = Response::new(Body::default());
    response.headers_mut().insert(
        "x-amz-bucket-region",
        HeaderValue::from_str(&s3.config.region).map_err(|_| S3Error::internal("region"))?,
    );
    Ok(response)
}

async fn delete_bucket(s3: &Arc<S3>, bucket: &str) -> S3Result {
    let name = bucket.to_string();
    s3.ns(move |ns| ns.delete_bucket(&name)).await?;
    no_content()
}

fn no_content() -> S3Result {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

async fn get_bucket_location(s3: &Arc<S3>, bucket: &str) -> S3Result {
    bucket_exists(s3, bucket).await?;
    let mut xml = Xml::document();
    xml.root("LocationConstraint");
    // us-east-1 is answered as no constraint, as S3 does.
    if s3.config.region != "us-east-1" {
        xml.text(&s3.config.region);
    }
    xml.close("LocationConstraint");
    Ok(xml.response())
}

// ---- listings ------------------------------------------------------------------------------

/// `encoding-type=url`: keys and prefixes URL-encoded in the answer.
fn encoder(target: &Target) -> impl Fn(&str) -> String {
    let url = target.param("encoding-type") == Some("url");
    move |text: &str| {
        if url {
            sigv4::uri_encode(text, true)
        } else {
            text.to_string()
        }
    }
}

fn max_keys(target: &Target, name: &str) -> Result<usize, S3Error> {
    match target.param(name) {
        None => Ok(PAGE_MAX),
        Some(text) => text
            .parse::<usize>()
            .map(|n| n.min(PAGE_MAX))
            .map_err(|_| S3Error::bad("InvalidArgument", format!("{name} is not a number"))),
    }
}

async fn list_objects(s3: &Arc<S3>, bucket: &str, target: &Target) -> S3Result {
    let v2 = target.param("list-type") == Some("2");
    let prefix = target.param("prefix").unwrap_or("").to_string();
    let delimiter = target
        .param("delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let max = max_keys(target, "max-keys")?;
    let token = target.param("continuation-token").map(str::to_string);
    let after = if v2 {
        match &token {
            Some(token) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(token)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        S3Error::bad(
                            "InvalidArgument",
                            "The continuation token provided is incorrect",
                        )
                    })?,
            ),
            None => target.param("start-after").map(str::to_string),
        }
    } else {
        target.param("marker").map(str::to_string)
    };
    let listing: Listing = if max == 0 {
        bucket_exists(s3, bucket).await?;
        Listing::default()
    } else {
        let (b, p, d, a) = (
            bucket.to_string(),
            prefix.clone(),
            delimiter.clone(),
            after.clone(),
        );
        s3.ns(move |ns| ns.list(&b, &p, d.as_deref(), a.as_deref(), max))
            .await?
    };
    let encode = encoder(target);
    let mut xml = Xml::document();
    xml.root("ListBucketResult");
    xml.leaf("Name", bucket);
    xml.leaf("Prefix", &encode(&prefix));
    if let Some(delimiter) = &delimiter {
        xml.leaf("Delimiter", &encode(delimiter));
    }
    xml.leaf("MaxKeys", &max.to_string());
    if target.param("encoding-type") == Some("url") {
        xml.leaf("EncodingType", "url");
    }
    let truncated = listing.next_after.is_some();
    xml.leaf("IsTruncated", if truncated { "true" } else { "false" });
    if v2 {
        xml.leaf(
            "KeyCount",
            &(listing.objects.len() + listing.common_prefixes.len()).to_string(),
        );
        if let Some(token) = &token {
            xml.leaf("ContinuationToken", token);
        }
        if let Some(start_after) = target.param("start-after") {
            xml.leaf("StartAfter", &encode(start_after));
        }
        if let Some(next) = &listing.next_after {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(next);
            xml.leaf("NextContinuationToken", &token);
        }
    } else {
        xml.leaf("Marker", &encode(after.as_deref().unwrap_or("")));
        if let Some(next) = &listing.next_after {
            xml.leaf("NextMarker", &encode(next));
        }
    }
    let fetch_owner = !v2 || target.param("fetch-owner") == Some("true");
    for (key, object) in &listing.objects {
        xml.open("Contents");
        xml.leaf("Key", &encode(key));
        xml.leaf("LastModified", &iso_time(object.last_modified_unix_seconds));
        xml.leaf("ETag", &quoted(&object.etag));
        xml.leaf("Size", &object.size.to_string());
        xml.leaf("StorageClass", "STANDARD");
        if fetch_owner {
            owner(&mut xml);
        }
        xml.close("Contents");
    }
    for common in &listing.common_prefixes {
        xml.open("CommonPrefixes");
        xml.leaf("Prefix", &encode(common));
        xml.close("CommonPrefixes");
    }
    xml.close("ListBucketResult");
    Ok(xml.response())
}

// ---- objects -------------------------------------------------------------------------------

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

fn iso_time(unix_seconds: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

fn http_time(unix_seconds: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix_seconds))
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The object a request describes by its headers (content headers, `x-amz-meta-*`).
fn object_template(headers: &HeaderMap) -> Object {
    let text = |name| header_text(headers, name).map(str::to_string);
    // `aws-chunked` is how the body was sent, not how the object is encoded.
    let content_encoding = text("content-encoding").and_then(|e| {
        let kept: Vec<&str> = e
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        (!kept.is_empty()).then(|| kept.join(", "))
    });
    let user_metadata = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    Object {
        content_type: text("content-type"),
        content_encoding,
        cache_control: text("cache-control"),
        content_disposition: text("content-disposition"),
        user_metadata,
        ..Object::default()
    }
}

fn payload(
    state: &Rc<CoreState>,
    request: Request<Incoming>,
    verified: Option<&Verified>,
) -> Result<Payload, S3Error> {
    let stall = Duration::from_secs(state.shared.config.limits.idle_timeout_seconds);
    let (parts, body) = request.into_parts();
    Payload::new(RequestBody { body, stall }, &parts.headers, verified).map_err(s3_of)
}

/// floe's errors as S3's: the S3 codes the payload uses pass as they are.
fn s3_of(err: ApiError) -> S3Error {
    if err.code.starts_with(|c: char| c.is_ascii_uppercase()) {
        return S3Error::new(err.status, err.code, err.message);
    }
    S3Error::from(err)
}

/// The largest blob an object's piece may be: the code's limit at the committee's n.
fn piece_bytes_max(state: &CoreState) -> u64 {
    state.shared.blob_bytes_max()
}

/// Stores `total` bytes from `source` as blobs (one per [`piece_bytes_max`]), each pinned
/// until the caller names it (or released when `pinned` drops unnamed: on failure, or when
/// the client hangs up).
async fn store_pieces(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    source: &mut impl WindowSource,
    total: u64,
    pinned: &mut Pinned,
) -> Result<Vec<Piece>, S3Error> {
    let piece_max = piece_bytes_max(state).max(1);
    let mut pieces = Vec::new();
    let mut taken = 0;
    let result: Result<(), S3Error> = async {
        while taken < total {
            let size = (total - taken).min(piece_max);
            source.set_window(size);
            let intake = take_in(state, Some(size), source).await.map_err(s3_of)?;
            let blob_id = *intake.blob_id();
            s3.pin(pinned, blob_id.0).await;
            let options = StoreOptions {
                epochs: OBJECT_EPOCHS,
                deletable: true,
                revive: s3.deletes_released,
            };
            store(state, intake, options).await.map_err(s3_of)?;
            pieces.push(Piece {
                blob_id: blob_id.0,
                size,
            });
            taken += size;
        }
        source.finish().await.map_err(s3_of)
    }
    .await;
    // On failure the blobs stored so far are released when `pinned` drops.
    result.map(|()| pieces)
}

/// A body read a window at a time ([`Payload`], or another object's bytes).
pub trait WindowSource: BodySource {
    fn set_window(&mut self, bytes: u64);
    /// Reads to the end and checks (the payload's checksums), after the last window.
    #[allow(async_fn_in_trait)]
    async fn finish(&mut self) -> Result<(), ApiError>;
}

impl WindowSource for Payload {
    fn set_window(&mut self, bytes: u64) {
        Payload::set_window(self, bytes);
    }

    async fn finish(&mut self) -> Result<(), ApiError> {
        if self.has_more().await? {
            return Err(ApiError::bad_request(
                "IncompleteBody",
                format!(
                    "the body holds more than the {} bytes it declared",
                    self.total()
                ),
            ));
        }
        Ok(())
    }
}

async fn put_object(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    request: Request<Incoming>,
    verified: Option<Verified>,
) -> S3Result {
    bucket_exists(s3, bucket).await?;
    let if_none_match = header_text(request.headers(), "if-none-match").map(str::trim) == Some("*");
    if if_none_match {
        let (b, k) = (bucket.to_string(), key.to_string());
        if s3.ns(move |ns| ns.object(&b, &k)).await?.is_some() {
            return Err(precondition_failed());
        }
    }
    let mut object = object_template(request.headers());
    let mut payload = payload(state, request, verified.as_ref())?;
    let total = payload.total();
    let mut pinned = Pinned::new(s3, state);
    let pieces = store_pieces(state, s3, &mut payload, total, &mut pinned).await?;
    object.pieces = pieces;
    object.size = total;
    object.etag = payload.md5_hex();
    object.last_modified_unix_seconds = now_unix() as u64;
    let etag = object.etag.clone();
    name_object(state, s3, bucket, key, object, if_none_match, pinned).await?;
    let mut response = Response::new(Body::default());
    response
        .headers_mut()
        .insert(header::ETAG, header_value(&quoted(&etag))?);
    Ok(response)
}

/// Names `object` `bucket/key` (durably), then unpins its blobs and releases what lost its
/// last name. If the naming fails, the object's own blobs are released if nothing else names
/// them.
async fn name_object(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    object: Object,
    if_none_match: bool,
    pinned: Pinned,
) -> Result<(), S3Error> {
    let (b, k) = (bucket.to_string(), key.to_string());
    commit_naming(state, s3, pinned, move |ns| {
        ns.put_object(&b, &k, &object, if_none_match)
    })
    .await
}

/// Runs a namespace commit that names pinned blobs, to its end even if the client hangs up
/// (hyper then drops the handler): in a task of its own that holds the pins until the commit
/// is done, so a release never deletes a blob that the commit is about to name. Afterwards the
/// blobs that lost their last name are released; if the commit failed, the pinned ones.
async fn commit_naming(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    pinned: Pinned,
    commit: impl FnOnce(&crate::s3::Names) -> Result<Vec<[u8; 32]>, floe_storage::namespace::NamespaceError>
        + Send
        + 'static,
) -> Result<(), S3Error> {
    let (s3, state) = (s3.clone(), state.clone());
    let task = glommio::spawn_local(async move {
        let committed = s3.ns(commit).await;
        match &committed {
            Ok(released) => {
                pinned.named();
                s3.release_later(&state, released.clone());
            }
            // Unnamed: dropping the pins releases them.
            Err(_) => drop(pinned),
        }
        committed
    })
    .detach();
    match task.await {
        Some(committed) => committed.map(|_| ()).map_err(S3Error::from),
        None => Err(S3Error::internal("the namespace commit did not finish")),
    }
}

fn precondition_failed() -> S3Error {
    S3Error::new(
        StatusCode::PRECONDITION_FAILED,
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
    )
}

fn header_value(text: &str) -> Result<HeaderValue, S3Error> {
    HeaderValue::from_str(text)
        .map_err(|_| S3Error::internal(format!("{text:?} is not a header value")))
}

async fn delete_object(state: &Rc<CoreState>, s3: &Arc<S3>, bucket: &str, key: &str) -> S3Result {
    let (b, k) = (bucket.to_string(), key.to_string());
    let released = s3.ns(move |ns| ns.delete_object(&b, &k)).await?;
    s3.release_later(state, released);
    no_content()
}

async fn delete_objects(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    bucket: &str,
    request: Request<Incoming>,
    verified: Option<Verified>,
) -> S3Result {
    bucket_exists(s3, bucket).await?;
    let body = payload(state, request, verified.as_ref())?
        .collect(XML_BODY_BYTES_MAX)
        .await
        .map_err(s3_of)?;
    let delete = super::xml::parse_delete(&body)?;
    let mut xml = Xml::document();
    xml.root("DeleteResult");
    for object in delete.objects {
        let (b, k) = (bucket.to_string(), object.key.clone());
        match s3.ns(move |ns| ns.delete_object(&b, &k)).await {
            Ok(released) => {
                s3.release_later(state, released);
                if !delete.quiet {
                    xml.open("Deleted");
                    xml.leaf("Key", &object.key);
                    xml.close("Deleted");
                }
            }
            Err(err) => {
                let err = S3Error::from(err);
                xml.open("Error");
                xml.leaf("Key", &object.key);
                xml.leaf("Code", err.code);
                xml.leaf("Message", &err.message);
                xml.close("Error");
            }
        }
    }
    xml.close("DeleteResult");
    Ok(xml.response())
}

/// `x-amz-copy-source`: `bucket/key` or `/bucket/key`, URL-encoded, maybe with `?versionId=`.
fn copy_source(headers: &HeaderMap) -> Result<(String, String), S3Error> {
    let text = header_text(headers, "x-amz-copy-source").unwrap_or("");
    let text = text.split('?').next().unwrap_or("");
    let decoded = sigv4::percent_decode(text);
    let decoded = decoded.strip_prefix('/').unwrap_or(&decoded);
    match decoded.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(S3Error::bad(
            "InvalidArgument",
            "x-amz-copy-source must be BUCKET/KEY",
        )),
    }
}

/// Reads `bucket/key` and pins its blobs; `NoSuchKey` if it went meanwhile (its blobs may
/// have been deleted).
async fn pinned_source(
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    pinned: &mut Pinned,
) -> Result<Object, S3Error> {
    let (b, k) = (bucket.to_string(), key.to_string());
    let source = s3
        .ns(move |ns| ns.object(&b, &k))
        .await?
        .ok_or_else(|| S3Error::no_such_key(bucket, key))?;
    for piece in &source.pieces {
        s3.pin(pinned, piece.blob_id).await;
    }
    // Pinned, its blobs stay; but one may have been deleted before the pin.
    let (b, k) = (bucket.to_string(), key.to_string());
    let again = s3.ns(move |ns| ns.object(&b, &k)).await?;
    match again {
        Some(again) if again.pieces == source.pieces => Ok(again),
        _ => Err(S3Error::no_such_key(bucket, key)),
    }
}

async fn copy_object(
    s3: &Arc<S3>,
    state: &Rc<CoreState>,
    bucket: &str,
    key: &str,
    request: Request<Incoming>,
) -> S3Result {
    let (source_bucket, source_key) = copy_source(request.headers())?;
    bucket_exists(s3, bucket).await?;
    let mut pinned = Pinned::new(s3, state);
    let source = pinned_source(s3, &source_bucket, &source_key, &mut pinned).await?;
    check_copy_conditions(request.headers(), &source)?;
    let replace = header_text(request.headers(), "x-amz-metadata-directive")
        .is_some_and(|d| d.eq_ignore_ascii_case("REPLACE"));
    let mut object = if replace {
        let mut template = object_template(request.headers());
        template.pieces = source.pieces.clone();
        template.size = source.size;
        template.etag = source.etag.clone();
        template.part_sizes = source.part_sizes.clone();
        template
    } else {
        source.clone()
    };
    object.last_modified_unix_seconds = now_unix() as u64;
    let (etag, modified) = (object.etag.clone(), object.last_modified_unix_seconds);
    name_object(state, s3, bucket, key, object, false, pinned).await?;
    let mut xml = Xml::document();
    xml.root("CopyObjectResult");
    xml.leaf("ETag", &quoted(&etag));
    xml.leaf("LastModified", &iso_time(modified));
    xml.close("CopyObjectResult");
    Ok(xml.response())
}

/// `x-amz-copy-source-if-*`.
fn check_copy_conditions(headers: &HeaderMap, source: &Object) -> Result<(), S3Error> {
    let etag = quoted(&source.etag);
    if let Some(want) = header_text(headers, "x-amz-copy-source-if-match") {
        if !etag_listed(want, &etag) {
            return Err(precondition_failed());
        }
    }
    if let Some(not) = header_text(headers, "x-amz-copy-source-if-none-match") {
        if etag_listed(not, &etag) {
            return Err(precondition_failed());
        }
    }
    Ok(())
}

fn etag_listed(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t == etag || t.trim_matches('"') == etag.trim_matches('"')
    })
}

/// The evaluation of `If-Match`, `If-None-Match`, `If-Modified-Since` and
/// `If-Unmodified-Since` (RFC 9110 order, as S3 does): `Err` is the answer to give instead.
fn check_conditions(headers: &HeaderMap, object: &Object) -> Result<(), S3Error> {
    let etag = quoted(&object.etag);
    let modified = object.last_modified_unix_seconds;
    let date = |name| {
        header_text(headers, name)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    let if_match = header_text(headers, "if-match");
    if let Some(list) = if_match {
        if !etag_listed(list, &etag) {
            return Err(precondition_failed());
        }
    } else if let Some(since) = date("if-unmodified-since") {
        if modified > since {
            return Err(precondition_failed());
        }
    }
    let not_modified = || S3Error::new(StatusCode::NOT_MODIFIED, "NotModified", "Not Modified");
    if let Some(list) = header_text(headers, "if-none-match") {
        if etag_listed(list, &etag) {
            return Err(not_modified());
        }
    } else if let Some(since) = date("if-modified-since") {
        if modified <= since {
            return Err(not_modified());
        }
    }
    Ok(())
}

/// The headers every object answer carries.
fn object_headers(h: &mut HeaderMap, object: &Object) -> Result<(), S3Error> {
    h.insert(header::ETAG, header_value(&quoted(&object.etag))?);
    h.insert(
        header::LAST_MODIFIED,
        header_value(&http_time(object.last_modified_unix_seconds))?,
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        header_value(
            object
                .content_type
                .as_deref()
                .unwrap_or("binary/octet-stream"),
        )?,
    );
    for (name, value) in [
        (header::CONTENT_ENCODING, &object.content_encoding),
        (header::CACHE_CONTROL, &object.cache_control),
        (header::CONTENT_DISPOSITION, &object.content_disposition),
    ] {
        if let Some(value) = value {
            h.insert(name, header_value(value)?);
        }
    }
    for (name, value) in &object.user_metadata {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(name, value);
        }
    }
    h.insert(BLOB_COUNT_HEADER, HeaderValue::from(object.pieces.len()));
    if object.pieces.len() <= BLOB_IDS_IN_HEADER_MAX && !object.pieces.is_empty() {
        let ids: Vec<String> = object
            .pieces
            .iter()
            .map(|p| BlobId(p.blob_id).to_string())
            .collect();
        let sizes: Vec<String> = object.pieces.iter().map(|p| p.size.to_string()).collect();
        h.insert(BLOB_IDS_HEADER, header_value(&ids.join(","))?);
        h.insert(BLOB_SIZES_HEADER, header_value(&sizes.join(","))?);
    }
    if !object.part_sizes.is_empty() {
        h.insert(
            "x-amz-mp-parts-count",
            HeaderValue::from(object.part_sizes.len()),
        );
    }
    Ok(())
}

async fn get_object(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    target: &Target,
    request: Request<Incoming>,
    head: bool,
) -> S3Result {
    let (b, k) = (bucket.to_string(), key.to_string());
    let object = s3.ns(move |ns| ns.object(&b, &k)).await?;
    let Some(object) = object else {
        bucket_exists(s3, bucket).await?;
        return Err(S3Error::no_such_key(bucket, key));
    };
    let headers = request.headers();
    if let Err(err) = check_conditions(headers, &object) {
        if err.status == StatusCode::NOT_MODIFIED {
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            object_headers(response.headers_mut(), &object)?;
            response.headers_mut().remove(header::CONTENT_TYPE);
            return Ok(response);
        }
        return Err(err);
    }
    let size = object.size;
    let range = match target.param("partNumber") {
        Some(_) => {
            let number = part_number(target)? as usize;
            let sizes = if object.part_sizes.is_empty() {
                vec![size]
            } else {
                object.part_sizes.clone()
            };
            if number > sizes.len() {
                return Err(S3Error::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidPartNumber",
                    "The requested partnumber is not satisfiable",
                ));
            }
            let start: u64 = sizes[..number - 1].iter().sum();
            Some((start, start + sizes[number - 1]))
        }
        None => crate::aggregator::parse_range(headers.get(header::RANGE), size).map_err(|_| {
            S3Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            )
        })?,
    };
    let (start, end) = range.unwrap_or((0, size));
    let body = if head || start == end {
        Body::default()
    } else {
        object_body(state, &object, start, end).await?
    };
    state.shared.metrics.sent_bytes.inc_by(end - start);
    let mut response = Response::new(body);
    let h = response.headers_mut();
    object_headers(h, &object)?;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if let Some((start, end)) = range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{}/{size}", end.max(start + 1) - 1))?,
        );
    }
    // Presigned GETs may override the answer's headers.
    for (param, name) in [
        ("response-content-type", header::CONTENT_TYPE),
        ("response-content-language", header::CONTENT_LANGUAGE),
        ("response-expires", header::EXPIRES),
        ("response-cache-control", header::CACHE_CONTROL),
        ("response-content-disposition", header::CONTENT_DISPOSITION),
        ("response-content-encoding", header::CONTENT_ENCODING),
    ] {
        if let Some(value) = target.param(param) {
            response.headers_mut().insert(name, header_value(value)?);
        }
    }
    Ok(response)
}

/// Bytes `[start, end)` of an object: only the blobs the range covers are read, each through
/// the aggregator (cache, whole or streamed); the first is located before the answer starts,
/// so that a read that cannot be served gets its error status.
async fn object_body(
    state: &Rc<CoreState>,
    object: &Object,
    start: u64,
    end: u64,
) -> Result<Body, S3Error> {
    let mut spans = Vec::new();
    let mut offset = 0u64;
    for piece in &object.pieces {
        let (piece_start, piece_end) = (offset, offset + piece.size);
        if piece_end > start && piece_start < end {
            let from = start.max(piece_start) - piece_start;
            let to = end.min(piece_end) - piece_start;
            spans.push((BlobId(piece.blob_id), from, to, piece.size));
        }
        offset = piece_end;
    }
    let piece_body = |state: Rc<CoreState>, (blob_id, from, to, size): (BlobId, u64, u64, u64)| async move {
        let located = crate::aggregator::locate(&state, &blob_id).await?;
        if located.size != size {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "blobSizeMismatch",
                format!(
                    "blob {blob_id} holds {} bytes, not the {size} its object lists",
                    located.size
                ),
            ));
        }
        let range = (from != 0 || to != size).then_some((from, to));
        crate::aggregator::blob_body(&state, &blob_id, located, range).await
    };
    let mut spans = spans.into_iter();
    let Some(first_span) = spans.next() else {
        return Ok(Body::default());
    };
    let first = piece_body(state.clone(), first_span).await.map_err(s3_of)?;
    let rest: Vec<_> = spans.collect();
    if rest.is_empty() {
        return Ok(first);
    }
    let (mut chunks, body) = futures::channel::mpsc::channel(2);
    let state = state.clone();
    crate::task::spawn_detached("s3_stream_producer", async move {
        let mut next = Some(Ok(first));
        let mut rest = rest.into_iter();
        loop {
            let body = match next.take() {
                Some(body) => body,
                None => match rest.next() {
                    Some(span) => piece_body(state.clone(), span).await,
                    None => return,
                },
            };
            let failure = match body {
                Ok(body) => match forward(body, &mut chunks).await {
                    Forwarded::Done => continue,
                    Forwarded::Gone => return,
                    Forwarded::Failed(err) => err,
                },
                Err(err) => std::io::Error::other(err.to_string()),
            };
            tracing::warn!(%failure, "an S3 object read failed midway; the answer is cut");
            let _ = futures::SinkExt::send(&mut chunks, Err(failure)).await;
            return;
        }
    });
    Ok(Body::Stream(body))
}

enum Forwarded {
    Done,
    /// The client went away.
    Gone,
    Failed(std::io::Error),
}

/// Sends a body's chunks on.
async fn forward(
    body: Body,
    chunks: &mut futures::channel::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Forwarded {
    match body {
        Body::Whole(None) => Forwarded::Done,
        Body::Whole(Some(bytes)) => match futures::SinkExt::send(chunks, Ok(bytes)).await {
            Ok(()) => Forwarded::Done,
            Err(_) => Forwarded::Gone,
        },
        Body::Stream(mut from) => {
            while let Some(item) = from.next().await {
                match item {
                    Ok(bytes) => {
                        if futures::SinkExt::send(chunks, Ok(bytes)).await.is_err() {
                            return Forwarded::Gone;
                        }
                    }
                    Err(err) => return Forwarded::Failed(err),
                }
            }
            Forwarded::Done
        }
    }
}

// ---- multipart -----------------------------------------------------------------------------

fn new_upload_id() -> String {
    let bytes: [u8; 16] = rand::random();
    sigv4::hex(&bytes)
}

async fn create_upload(s3: &Arc<S3>, bucket: &str, key: &str, headers: &HeaderMap) -> S3Result {
    let template = object_template(headers);
    let upload_id = new_upload_id();
    let (b, k, id) = (bucket.to_string(), key.to_string(), upload_id.clone());
    s3.ns(move |ns| ns.create_upload(&id, &b, &k, &template))
        .await?;
    let mut xml = Xml::document();
    xml.root("InitiateMultipartUploadResult");
    xml.leaf("Bucket", bucket);
    xml.leaf("Key", key);
    xml.leaf("UploadId", &upload_id);
    xml.close("InitiateMultipartUploadResult");
    Ok(xml.response())
}

async fn upload_exists(
    s3: &Arc<S3>,
    upload_id: &str,
) -> Result<floe_storage::namespace::Upload, S3Error> {
    let id = upload_id.to_string();
    s3.ns(move |ns| ns.upload(&id))
        .await?
        .ok_or_else(|| S3Error::no_such_upload(upload_id))
}

async fn upload_part(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    upload_id: &str,
    number: u32,
    request: Request<Incoming>,
    verified: Option<Verified>,
) -> S3Result {
    upload_exists(s3, upload_id).await?;
    let mut payload = payload(state, request, verified.as_ref())?;
    let total = payload.total();
    let mut pinned = Pinned::new(s3, state);
    let pieces = store_pieces(state, s3, &mut payload, total, &mut pinned).await?;
    let part = Part {
        pieces,
        size: total,
        md5_hex: payload.md5_hex(),
        last_modified_unix_seconds: now_unix() as u64,
    };
    let etag = quoted(&part.md5_hex);
    name_part(state, s3, upload_id, number, part, pinned).await?;
    let mut response = Response::new(Body::default());
    response
        .headers_mut()
        .insert(header::ETAG, header_value(&etag)?);
    Ok(response)
}

/// Records a part (durably), then unpins its blobs and releases what lost its last name.
async fn name_part(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    upload_id: &str,
    number: u32,
    part: Part,
    pinned: Pinned,
) -> Result<(), S3Error> {
    let id = upload_id.to_string();
    commit_naming(state, s3, pinned, move |ns| ns.put_part(&id, number, &part)).await
}

/// `x-amz-copy-source-range: bytes=first-last`.
fn copy_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, S3Error> {
    let Some(text) = header_text(headers, "x-amz-copy-source-range") else {
        return Ok(None);
    };
    let invalid = || {
        S3Error::bad("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy")
    };
    let (first, last) = text
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(invalid)?;
    let (first, last): (u64, u64) = (
        first.parse().map_err(|_| invalid())?,
        last.parse().map_err(|_| invalid())?,
    );
    if first > last || last >= size {
        return Err(S3Error::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The requested range is not satisfiable",
        ));
    }
    Ok(Some((first, last + 1)))
}

async fn upload_part_copy(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    upload_id: &str,
    number: u32,
    request: Request<Incoming>,
) -> S3Result {
    upload_exists(s3, upload_id).await?;
    let (source_bucket, source_key) = copy_source(request.headers())?;
    let mut pinned = Pinned::new(s3, state);
    let source = pinned_source(s3, &source_bucket, &source_key, &mut pinned).await?;
    check_copy_conditions(request.headers(), &source)?;
    let range = copy_range(request.headers(), source.size)?;
    let part = match range {
        // The whole object: a new name for the same blobs, no bytes copied. Its MD5 is the
        // object's ETag unless that is a multipart one.
        None if !source.etag.contains('-') => Part {
            pieces: source.pieces.clone(),
            size: source.size,
            md5_hex: source.etag.clone(),
            last_modified_unix_seconds: now_unix() as u64,
        },
        _ => {
            let (start, end) = range.unwrap_or((0, source.size));
            let body = object_body(state, &source, start, end).await?;
            let mut reader = BodyReader::new(body, end - start);
            let mut copy_pins = Pinned::new(s3, state);
            let pieces = store_pieces(state, s3, &mut reader, end - start, &mut copy_pins).await?;
            // The copy's blobs stay pinned until the part is named; the source's pins go (its
            // bytes were read, and its names keep its blobs: nothing to release).
            std::mem::swap(&mut pinned, &mut copy_pins);
            copy_pins.named();
            Part {
                pieces,
                size: end - start,
                md5_hex: sigv4::hex(&reader.md5.finalize()),
                last_modified_unix_seconds: now_unix() as u64,
            }
        }
    };
    let (etag, modified) = (quoted(&part.md5_hex), part.last_modified_unix_seconds);
    name_part(state, s3, upload_id, number, part, pinned).await?;
    let mut xml = Xml::document();
    xml.root("CopyPartResult");
    xml.leaf("ETag", &etag);
    xml.leaf("LastModified", &iso_time(modified));
    xml.close("CopyPartResult");
    Ok(xml.response())
}

/// A response body read as a source (an object's bytes copied into a part), hashed as it goes.
struct BodyReader {
    body: Option<Body>,
    stream: Option<futures::channel::mpsc::Receiver<Result<Bytes, std::io::Error>>>,
    ready: Option<Bytes>,
    window: u64,
    left: u64,
    md5: Md5,
}

impl BodyReader {
    fn new(body: Body, total: u64) -> Self {
        Self {
            body: Some(body),
            stream: None,
            ready: None,
            window: u64::MAX,
            left: total,
            md5: Md5::new(),
        }
    }

    async fn pull(&mut self) -> Result<Option<Bytes>, ApiError> {
        if let Some(bytes) = self.ready.take() {
            return Ok(Some(bytes));
        }
        match self.body.take() {
            Some(Body::Whole(bytes)) => return Ok(bytes),
            Some(Body::Stream(stream)) => self.stream = Some(stream),
            None => {}
        }
        let Some(stream) = &mut self.stream else {
            return Ok(None);
        };
        match stream.next().await {
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(err)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("reading the copy source failed: {err}"),
            )),
            None => Ok(None),
        }
    }
}

impl BodySource for BodyReader {
    async fn next_data(&mut self) -> Result<Option<Bytes>, ApiError> {
        if self.window == 0 {
            return Ok(None);
        }
        let Some(mut bytes) = self.pull().await? else {
            return Ok(None);
        };
        if bytes.len() as u64 > self.window {
            self.ready = Some(bytes.split_off(self.window as usize));
        }
        self.window -= bytes.len() as u64;
        self.left = self.left.saturating_sub(bytes.len() as u64);
        self.md5.update(&bytes);
        Ok(Some(bytes))
    }
}

impl WindowSource for BodyReader {
    fn set_window(&mut self, bytes: u64) {
        self.window = bytes;
    }

    async fn finish(&mut self) -> Result<(), ApiError> {
        if self.left != 0 {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the copy source ended early",
            ));
        }
        Ok(())
    }
}

async fn complete_upload(
    state: &Rc<CoreState>,
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    request: Request<Incoming>,
    verified: Option<Verified>,
) -> S3Result {
    let if_none_match = header_text(request.headers(), "if-none-match").map(str::trim) == Some("*");
    let body = payload(state, request, verified.as_ref())?
        .collect(XML_BODY_BYTES_MAX)
        .await
        .map_err(s3_of)?;
    let listed = super::xml::parse_complete(&body)?;
    let (b, k) = (bucket.to_string(), key.to_string());
    let id = upload_id.to_string();
    let completed = s3
        .ns(move |ns| -> Result<_, S3Error> {
            if if_none_match && ns.object(&b, &k)?.is_some() {
                return Err(precondition_failed());
            }
            Ok(ns.complete_upload(&id, |upload, parts| {
                if upload.bucket != b || upload.key != k {
                    return Err(S3Error::no_such_upload(&id));
                }
                build_object(upload, parts, &listed.parts)
            })?)
        })
        .await??;
    let (_, object, released) = completed;
    s3.release_later(state, released);
    let mut xml = Xml::document();
    xml.root("CompleteMultipartUploadResult");
    xml.leaf("Location", &format!("/{bucket}/{key}"));
    xml.leaf("Bucket", bucket);
    xml.leaf("Key", key);
    xml.leaf("ETag", &quoted(&object.etag));
    xml.close("CompleteMultipartUploadResult");
    Ok(xml.response())
}

/// The object of a completed upload: the listed parts, in ascending order, each as uploaded
/// (its ETag), every one but the last at least [`PART_BYTES_MIN`]; ETag
/// `md5(part md5s)-N`.
fn build_object(
    upload: &floe_storage::namespace::Upload,
    parts: &[(u32, Part)],
    listed: &[super::xml::CompletedPart],
) -> Result<Object, S3Error> {
    let uploaded: BTreeMap<u32, &Part> = parts.iter().map(|(n, p)| (*n, p)).collect();
    let mut object = upload.template.clone();
    let mut md5s = Md5::new();
    if listed
        .windows(2)
        .any(|w| w[1].part_number <= w[0].part_number)
    {
        return Err(S3Error::bad(
            "InvalidPartOrder",
            "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        ));
    }
    for (i, wanted) in listed.iter().enumerate() {
        let part = uploaded
            .get(&wanted.part_number)
            .filter(|p| p.md5_hex == wanted.etag.trim().trim_matches('"'))
            .ok_or_else(|| {
                S3Error::bad(
                    "InvalidPart",
                    format!(
                        "One or more of the specified parts could not be found (part {}). The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
                        wanted.part_number
                    ),
                )
            })?;
        if i + 1 < listed.len() && part.size < PART_BYTES_MIN {
            return Err(S3Error::bad(
                "EntityTooSmall",
                format!(
                    "Your proposed upload is smaller than the minimum allowed object size: part {} has {} bytes; every part but the last needs at least {PART_BYTES_MIN}",
                    wanted.part_number, part.size
                ),
            ));
        }
        let md5 =
            hex_bytes(&part.md5_hex).ok_or_else(|| S3Error::internal("a part's MD5 is not hex"))?;
        md5s.update(&md5);
        object.pieces.extend(part.pieces.iter().cloned());
        object.size += part.size;
        object.part_sizes.push(part.size);
    }
    object.etag = format!("{}-{}", sigv4::hex(&md5s.finalize()), listed.len());
    object.last_modified_unix_seconds = now_unix() as u64;
    Ok(object)
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

async fn abort_upload(state: &Rc<CoreState>, s3: &Arc<S3>, upload_id: &str) -> S3Result {
    let id = upload_id.to_string();
    let released = s3.ns(move |ns| ns.abort_upload(&id)).await?;
    s3.release_later(state, released);
    no_content()
}

async fn list_parts(
    s3: &Arc<S3>,
    bucket: &str,
    key: &str,
    upload_id: &str,
    target: &Target,
) -> S3Result {
    let upload = upload_exists(s3, upload_id).await?;
    if upload.bucket != bucket || upload.key != key {
        return Err(S3Error::no_such_upload(upload_id));
    }
    let max = max_keys(target, "max-parts")?;
    let marker: u32 = target
        .param("part-number-marker")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let id = upload_id.to_string();
    let mut parts = s3.ns(move |ns| ns.parts(&id, marker, max + 1)).await?;
    let truncated = parts.len() > max;
    parts.truncate(max);
    let mut xml = Xml::document();
    xml.root("ListPartsResult");
    xml.leaf("Bucket", bucket);
    xml.leaf("Key", key);
    xml.leaf("UploadId", upload_id);
    xml.leaf("PartNumberMarker", &marker.to_string());
    if let Some((last, _)) = parts.last() {
        xml.leaf("NextPartNumberMarker", &last.to_string());
    }
    xml.leaf("MaxParts", &max.to_string());
    xml.leaf("IsTruncated", if truncated { "true" } else { "false" });
    xml.leaf("StorageClass", "STANDARD");
    for (number, part) in &parts {
        xml.open("Part");
        xml.leaf("PartNumber", &number.to_string());
        xml.leaf("LastModified", &iso_time(part.last_modified_unix_seconds));
        xml.leaf("ETag", &quoted(&part.md5_hex));
        xml.leaf("Size", &part.size.to_string());
        xml.close("Part");
    }
    xml.close("ListPartsResult");
    Ok(xml.response())
}

async fn list_uploads(s3: &Arc<S3>, bucket: &str, target: &Target) -> S3Result {
    let max = max_keys(target, "max-uploads")?;
    let prefix = target.param("prefix").unwrap_or("").to_string();
    let key_marker = target.param("key-marker").map(str::to_string);
    let id_marker = target.param("upload-id-marker").unwrap_or("").to_string();
    let (b, p, km, im) = (
        bucket.to_string(),
        prefix.clone(),
        key_marker.clone(),
        id_marker.clone(),
    );
    let mut uploads = s3
        .ns(move |ns| {
            let after = km.as_deref().map(|k| (k, im.as_str()));
            ns.uploads(&b, &p, after, max + 1)
        })
        .await?;
    let truncated = uploads.len() > max;
    uploads.truncate(max);
    let mut xml = Xml::document();
    xml.root("ListMultipartUploadsResult");
    xml.leaf("Bucket", bucket);
    xml.leaf("KeyMarker", key_marker.as_deref().unwrap_or(""));
    xml.leaf("UploadIdMarker", &id_marker);
    if let Some((key, id, _)) = uploads.last().filter(|_| truncated) {
        xml.leaf("NextKeyMarker", key);
        xml.leaf("NextUploadIdMarker", id);
    }
    xml.leaf("Prefix", &prefix);
    xml.leaf("MaxUploads", &max.to_string());
    xml.leaf("IsTruncated", if truncated { "true" } else { "false" });
    for (key, id, upload) in &uploads {
        xml.open("Upload");
        xml.leaf("Key", key);
        xml.leaf("UploadId", id);
        owner(&mut xml);
        xml.leaf("StorageClass", "STANDARD");
        xml.leaf("Initiated", &iso_time(upload.initiated_unix_seconds));
        xml.close("Upload");
    }
    xml.close("ListMultipartUploadsResult");
    Ok(xml.response())
}

/// What the fuzz target `headers` drives (`crate::fuzzing::headers`): every parser of
/// request headers and query text here, on an object `size` bytes long. Must never panic.
pub(crate) fn fuzz_headers(headers: &HeaderMap, query: &str, size: u64) {
    let mut object = object_template(headers);
    object.size = size;
    object.etag = format!("{size:x}-2");
    object.last_modified_unix_seconds = size % 4_000_000_000;
    let _ = check_conditions(headers, &object);
    let _ = check_copy_conditions(headers, &object);
    let _ = copy_range(headers, size);
    let _ = copy_source(headers);
    let mut response = HeaderMap::new();
    let _ = object_headers(&mut response, &object);
    let target = Target {
        bucket: None,
        key: None,
        query: query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (query_decode(k), query_decode(v))
            })
            .collect(),
    };
    let _ = part_number(&target);
    let _ = max_keys(&target, "max-keys");
    let _ = encoder(&target)("a b/c");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3s_rules() {
        for good in ["abc", "my-bucket.1", "a1b"] {
            assert!(valid_bucket_name(good), "{good}");
        }
        for bad in [
            "ab",
            "Abc",
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.1",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn conditions_follow_rfc_9110_order() {
        let object = Object {
            etag: "abc".into(),
            last_modified_unix_seconds: 1_000_000_000,
            ..Object::default()
        };
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            h
        };
        let before = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(999_999_999));
        let after = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_000_000_001));
        assert!(check_conditions(&headers(&[("if-match", "\"abc\"")]), &object).is_ok());
        assert_eq!(
            check_conditions(&headers(&[("if-match", "\"x\"")]), &object)
                .unwrap_err()
                .status,
            StatusCode::PRECONDITION_FAILED
        );
        // If-Match holds: If-Unmodified-Since is not looked at.
        assert!(check_conditions(
            &headers(&[("if-match", "\"abc\""), ("if-unmodified-since", &before)]),
            &object
        )
        .is_ok());
        assert_eq!(
            check_conditions(&headers(&[("if-unmodified-since", &before)]), &object)
                .unwrap_err()
                .status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            check_conditions(&headers(&[("if-none-match", "\"abc\"")]), &object)
                .unwrap_err()
                .status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            check_conditions(&headers(&[("if-modified-since", &after)]), &object)
                .unwrap_err()
                .status,
            StatusCode::NOT_MODIFIED
        );
        assert!(check_conditions(&headers(&[("if-modified-since", &before)]), &object).is_ok());
    }

    #[test]
    fn a_completed_upload_checks_its_parts_and_takes_the_multipart_etag() {
        let part = |size: u64, md5: &str| Part {
            pieces: vec![Piece {
                blob_id: [size as u8; 32],
                size,
            }],
            size,
            md5_hex: md5.into(),
            last_modified_unix_seconds: 0,
        };
        let a = "0123456789abcdef0123456789abcdef";
        let b = "fedcba9876543210fedcba9876543210";
        let parts = vec![(1, part(PART_BYTES_MIN, a)), (2, part(10, b))];
        let upload = floe_storage::namespace::Upload::default();
        let listed = |items: &[(u32, &str)]| -> Vec<super::super::xml::CompletedPart> {
            items
                .iter()
                .map(|(n, e)| super::super::xml::CompletedPart {
                    part_number: *n,
                    etag: format!("\"{e}\""),
                })
                .collect()
        };
        let object = build_object(&upload, &parts, &listed(&[(1, a), (2, b)])).unwrap();
        assert_eq!(object.size, PART_BYTES_MIN + 10);
        assert_eq!(object.part_sizes, vec![PART_BYTES_MIN, 10]);
        let mut md5s = Md5::new();
        md5s.update(hex_bytes(a).unwrap());
        md5s.update(hex_bytes(b).unwrap());
        assert_eq!(object.etag, format!("{}-2", sigv4::hex(&md5s.finalize())));
        let code = |items: &[(u32, &str)], parts: &[(u32, Part)]| {
            build_object(&upload, parts, &listed(items))
                .unwrap_err()
                .code
        };
        assert_eq!(code(&[(2, b), (1, a)], &parts), "InvalidPartOrder");
        assert_eq!(code(&[(1, b)], &parts), "InvalidPart");
        assert_eq!(code(&[(3, a)], &parts), "InvalidPart");
        let small = vec![(1, part(10, a)), (2, part(10, b))];
        assert_eq!(code(&[(1, a), (2, b)], &small), "EntityTooSmall");
    }
}
