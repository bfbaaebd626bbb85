//! AWS Signature Version 2 in query strings (presigned URLs: `AWSAccessKeyId`, `Expires`,
//! `Signature`), which boto3 still makes by default in us-east-1 (`generate_presigned_url`
//! without `signature_version="s3v4"`). Only presigned URLs: requests signed in headers must
//! use SigV4.
//!
//! Pure: the caller passes the time and looks up secrets. Boundary: a malformed URL is a
//! [`SigV4Error`] (the same codes), never a panic; signatures are compared in constant time.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::sigv4::{percent_decode, Request, SigV4Error};

/// Query parameters that are part of the resource a SigV2 signature covers (S3's list).
const SUB_RESOURCES: &[&str] = &[
    "acl",
    "delete",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "partNumber",
    "policy",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// Whether a request's query carries a SigV2 presigned signature.
pub fn is_presigned(query: &str) -> bool {
    query.split('&').any(|p| p.starts_with("AWSAccessKeyId="))
}

/// Verifies a SigV2 presigned URL at `now` (Unix seconds). Returns the access key.
pub fn verify_presigned(
    request: &Request<'_>,
    now: i64,
    secret_of: impl Fn(&str) -> Option<String>,
) -> Result<String, SigV4Error> {
    let params: Vec<(String, String)> = request
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| SigV4Error::Malformed(format!("no {name} in the query")))
    };
    let key = param("AWSAccessKeyId")?;
    let signature = param("Signature")?;
    let expires: i64 = param("Expires")?
        .parse()
        .map_err(|_| SigV4Error::Malformed("Expires is not a number of seconds".into()))?;
    if now > expires {
        return Err(SigV4Error::Expired);
    }
    let secret = secret_of(key).ok_or_else(|| SigV4Error::UnknownKey(key.to_string()))?;
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.trim())
    };
    let mut amz: Vec<(String, &str)> = request
        .headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-amz-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim()))
        .collect();
    amz.sort();
    let mut sub: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| SUB_RESOURCES.contains(&k.as_str()))
        .collect();
    sub.sort();
    let mut resource = request.path.to_string();
    for (i, (k, v)) in sub.iter().enumerate() {
        resource.push(if i == 0 { '?' } else { '&' });
        resource.push_str(k);
        if !v.is_empty() {
            resource.push('=');
            resource.push_str(v);
        }
    }
    let mut to_sign = format!(
        "{}\n{}\n{}\n{expires}\n",
        request.method,
        header("content-md5"),
        header("content-type")
    );
    for (name, value) in amz {
        to_sign.push_str(&format!("{name}:{value}\n"));
    }
    to_sign.push_str(&resource);
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(to_sign.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if !super::sigv4::same(&expected, signature) {
        return Err(SigV4Error::Mismatch);
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example of query string authentication (S3 developer guide, "Signing
    /// and authenticating REST requests": the presigned GET of /johnsmith/photos/puppy.jpg).
    #[test]
    fn the_documented_presigned_url_holds() {
        let request = Request {
            method: "GET",
            path: "/johnsmith/photos/puppy.jpg",
            query: "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1175139620&Signature=NpgCjnDzrM%2BWFzoENXmpNDUsSn8%3D",
            headers: &[("Host".into(), "s3.amazonaws.com".into())],
        };
        let secret = |k: &str| {
            (k == "AKIAIOSFODNN7EXAMPLE")
                .then(|| "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string())
        };
        assert!(is_presigned(request.query));
        assert_eq!(
            verify_presigned(&request, 1_175_139_000, secret).unwrap(),
            "AKIAIOSFODNN7EXAMPLE"
        );
        assert_eq!(
            verify_presigned(&request, 1_175_139_621, secret),
            Err(SigV4Error::Expired)
        );
        let tampered = Request {
            path: "/johnsmith/photos/kitten.jpg",
            ..request
        };
        assert_eq!(
            verify_presigned(&tampered, 1_175_139_000, secret),
            Err(SigV4Error::Mismatch)
        );
        let unknown = |_: &str| None;
        assert!(matches!(
            verify_presigned(&request, 1_175_139_000, unknown),
            Err(SigV4Error::UnknownKey(_))
        ));
    }
}
