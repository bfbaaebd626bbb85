//! How peers prove they belong to the cluster: with a cluster secret (`cluster_secret`,
//! `FLOE_CLUSTER_SECRET`), kept apart from the users' write token, every request a node sends
//! a peer carries `x-floe-peer: NAME UNIX HMAC`, where HMAC is the hex HMAC-SHA256 under the
//! secret of the method, path and query, name and time. A node takes it only within
//! [`SKEW_SECONDS`] of its own clock, and compares in constant time (`hmac`'s `verify_slice`).
//! The secret never travels.
//!
//! Pure: no I/O, no node state.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header a peer request carries.
pub const HEADER: &str = "x-floe-peer";

/// How far a peer's clock may be from this node's. Why: covers clock drift between machines
/// while limiting how long a captured header could be replayed.
pub const SKEW_SECONDS: u64 = 300;

fn mac(secret: &str, method: &str, path_and_query: &str, name: &str, unix: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    for part in [method, path_and_query, name, &unix.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac
}

/// The header value for a request from node `name` at `unix` seconds.
pub fn sign(secret: &str, name: &str, method: &str, path_and_query: &str, unix: u64) -> String {
    let tag = mac(secret, method, path_and_query, name, unix).finalize();
    let hex: String = tag
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{name} {unix} {hex}")
}

/// The name of the peer that signed `value` for this request, or why it is refused.
pub fn verify(
    secret: &str,
    value: Option<&str>,
    method: &str,
    path_and_query: &str,
    now: u64,
) -> Result<String, String> {
    let value = value.ok_or_else(|| format!("no {HEADER} header"))?;
    let mut parts = value.split(' ');
    let (Some(name), Some(unix), Some(hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{HEADER} is not `NAME UNIX HMAC`"));
    };
    let unix: u64 = unix
        .parse()
        .map_err(|_| format!("{HEADER}: the time is not a number"))?;
    if unix.abs_diff(now) > SKEW_SECONDS {
        return Err(format!(
            "{HEADER} was signed at unix {unix}, {} s from this node's clock (at most \
             {SKEW_SECONDS}); check the clocks",
            unix.abs_diff(now)
        ));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{HEADER}: the HMAC is not 64 hex digits"));
    }
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex"))
        .collect();
    mac(secret, method, path_and_query, name, unix)
        .verify_slice(&tag)
        .map_err(|_| format!("{HEADER}: the HMAC does not match (another cluster secret?)"))?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_any_change_does_not() {
        let value = sign("s3cret", "node-a", "PUT", "/v1/blobs/x/slivers", 1000);
        assert_eq!(
            verify("s3cret", Some(&value), "PUT", "/v1/blobs/x/slivers", 1100),
            Ok("node-a".into())
        );
        let refused = |secret, value: &str, method, path, now| {
            verify(secret, Some(value), method, path, now).is_err()
        };
        assert!(refused("other", &value, "PUT", "/v1/blobs/x/slivers", 1000));
        assert!(refused(
            "s3cret",
            &value,
            "DELETE",
            "/v1/blobs/x/slivers",
            1000
        ));
        assert!(refused(
            "s3cret",
            &value,
            "PUT",
            "/v1/blobs/y/slivers",
            1000
        ));
        assert!(refused(
            "s3cret",
            &value,
            "PUT",
            "/v1/blobs/x/slivers",
            1000 + 301
        ));
        let renamed = value.replacen("node-a", "node-b", 1);
        assert!(refused(
            "s3cret",
            &renamed,
            "PUT",
            "/v1/blobs/x/slivers",
            1000
        ));
        assert!(refused("s3cret", "garbage", "PUT", "/", 1000));
        assert!(verify("s3cret", None, "PUT", "/", 1000).is_err());
    }
}
