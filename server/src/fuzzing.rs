//! Entry points for the fuzz targets in `fuzz/`, shared with the test that replays their
//! corpus (`server/tests/fuzz_corpus.rs`), so that CI runs every saved input through the same
//! code. Each must never panic, whatever the bytes.

use floe_codec::{
    decode_metadata, decode_recovery_symbols, decode_sliver, encode_metadata,
    encode_recovery_symbols, encode_sliver, SliverKind,
};
use hyper::{HeaderMap, Method, Uri};

use crate::http::body::{bearer_token, declared_length};
use crate::http::route;

/// Headers parsed per request. Why: hyper's own default.
const HEADERS_MAX: usize = 100;

/// An HTTP/1.1 request head, parsed the way the node parses one (httparse, as inside hyper),
/// then routed, with the headers the node reads.
pub fn request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = parsed.parse(data) {
        let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
            return;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return;
        };
        let Ok(uri) = path.parse::<Uri>() else {
            return;
        };
        let _ = route::parse(&method, uri.path(), uri.query());
        let mut map = HeaderMap::new();
        for header in parsed.headers.iter() {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(header.name.as_bytes()),
                hyper::header::HeaderValue::from_bytes(header.value),
            ) {
                map.append(name, value);
            }
        }
        let _ = declared_length(&map);
        let _ = bearer_token(&map);
    }
    // The router on its own, with arbitrary text for the method, path and query.
    if let Ok(text) = std::str::from_utf8(data) {
        let mut parts = text.splitn(3, ' ');
        let (method, path, query) = (parts.next(), parts.next(), parts.next());
        if let (Some(method), Some(path)) = (method, path) {
            if let Ok(method) = Method::from_bytes(method.as_bytes()) {
                let _ = route::parse(&method, path, query);
            }
        }
    }
}

/// BCS bodies as a peer sends them: metadata, slivers, recovery symbols. Whatever decodes must
/// encode back to the same bytes (the encodings are canonical).
pub fn bcs(data: &[u8]) {
    if let Ok(metadata) = decode_metadata(data) {
        assert_eq!(encode_metadata(&metadata), data);
    }
    for kind in [SliverKind::Primary, SliverKind::Secondary] {
        if let Ok(sliver) = decode_sliver(kind, data) {
            assert_eq!(encode_sliver(&sliver), data);
        }
    }
    if let Ok(symbols) = decode_recovery_symbols(data) {
        assert_eq!(encode_recovery_symbols(&symbols), data);
    }
}

/// A request for SigV4 verification: `METHOD path?query` on the first line, then `name: value`
/// headers, one per line; verified as signed in its header and as a presigned URL.
pub fn sigv4(data: &[u8]) {
    use crate::s3::sigv4::{verify_header, verify_presigned, Request};
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let request = Request {
        method,
        path,
        query,
        headers: &headers,
    };
    let secret = |_: &str| Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string());
    let _ = verify_header(&request, 1_369_353_600, secret);
    let _ = verify_presigned(&request, 1_369_353_600, secret);
    let _ = request.canonical(
        &["host".into(), "x-amz-date".into()],
        "UNSIGNED-PAYLOAD",
        None,
    );
}

/// An `aws-chunked` body, decoded unsigned with a CRC32 trailer, fed in two pieces split at
/// its first byte's value.
pub fn aws_chunked(data: &[u8]) {
    use crate::s3::chunked::Decoder;
    let Ok(mut decoder) = Decoder::new(None, None, Some("x-amz-checksum-crc32"), None) else {
        return;
    };
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut sink = |_: &[u8]| {};
    if decoder.feed(&data[..split], &mut sink).is_ok() {
        let _ = decoder.feed(&data[split..], &mut sink);
    }
}

/// S3's XML request bodies (`CompleteMultipartUpload`, `Delete`) as the S3 API parses them.
pub fn s3_xml(data: &[u8]) {
    let _ = crate::s3::xml::parse_complete(data);
    let _ = crate::s3::xml::parse_delete(data);
}

/// What the control plane takes from outside: by the first byte, a page of a moving shard
/// from a peer (`protocol::shard_page`), a peer signature header (`http::peer_auth`), or
/// records read from etcd (a committee, checked by rendering it as a committee file: a name
/// that parses back must be the name in the record; blob, epoch and move records).
pub fn control(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let body = bytes::Bytes::copy_from_slice(rest);
            if let Ok((_, slivers)) = crate::protocol::shard_page(&body) {
                let total: usize = slivers.iter().map(|(_, _, s)| s.len() + 37).sum();
                assert!(total < body.len().max(1), "frames fit in the page");
            }
        }
        1 => {
            let header = String::from_utf8_lossy(rest);
            let _ = crate::http::peer_auth::verify("secret", Some(&header), "PUT", "/x", 1000);
            let name: String = header.chars().filter(|c| !c.is_whitespace()).collect();
            let signed = crate::http::peer_auth::sign("secret", &name, "GET", "/y", 1000);
            assert_eq!(
                crate::http::peer_auth::verify("secret", Some(&signed), "GET", "/y", 1000),
                Ok(name)
            );
        }
        2 => {
            let Ok(record) = serde_json::from_slice::<floe_control::CommitteeRecord>(rest) else {
                return;
            };
            if let Ok(committee) = crate::control::committee_of(&record, "fuzz") {
                let names: Vec<&str> = committee.members.iter().map(|m| m.name.as_str()).collect();
                let expected: Vec<&str> = record.members.iter().map(|m| m.name.as_str()).collect();
                assert_eq!(
                    names, expected,
                    "a record renders as the committee it names"
                );
            }
        }
        _ => {
            let _ = serde_json::from_slice::<floe_control::BlobRecord>(rest);
            let _ = serde_json::from_slice::<floe_control::EpochRecord>(rest);
            let _ = serde_json::from_slice::<floe_control::MovePlan>(rest);
            let _ = serde_json::from_slice::<floe_control::MoveProgress>(rest);
        }
    }
}

/// Request headers and query text as the read paths parse them: `Range` (the node's reads),
/// S3's conditional headers (`If-Match`, `If-None-Match`, `If-Modified-Since`,
/// `If-Unmodified-Since`, their `x-amz-copy-source-if-*` forms), copy source and range, content
/// headers, and query parameters (`partNumber`, `max-keys`, `encoding-type`). Input: the
/// object's size (8 bytes), the query on the first line, then `name: value` lines.
pub fn headers(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % (1 << 44);
    let text = String::from_utf8_lossy(&data[8..]);
    let mut lines = text.split("\r\n");
    let query = lines.next().unwrap_or_default();
    let mut map = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.trim().as_bytes()),
            hyper::header::HeaderValue::from_str(value.trim()),
        ) {
            map.append(name, value);
        }
    }
    if let Ok(Some((start, end))) = crate::aggregator::parse_range(map.get("range"), size) {
        assert!(start < end && end <= size, "range {start}..{end} of {size}");
    }
    crate::s3::api::fuzz_headers(&map, query, size);
}

/// `node.toml` and committee files: parsed and checked as the node does at start. Whatever
/// parses must validate or say why, never panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<crate::config::NodeConfig>(text) {
        let _ = config.validate();
        let _ = config.listen_addr();
        let _ = config.s3_listen_addr();
        let _ = config.peer_deadlines();
    }
    if let Ok(committee) =
        crate::config::Committee::parse(text, std::path::Path::new("committee.toml"))
    {
        let _ = committee.n_faults();
        let _ = committee.epoch_at(u64::MAX / 2);
    }
}

/// On-disk records. The format's parsers on raw bytes; then a store whose files were damaged
/// by the input (an offset, then bytes written there over one of its files) is reopened and
/// must serve every record whole or not at all, never other bytes. And the S3 namespace's
/// stored records (JSON): whatever parses must write back to what parses the same.
pub fn records(data: &[u8]) {
    use floe_storage::device::MemDir;
    use floe_storage::format::{
        parse_segment_header, parse_segment_name, parse_trailer, FooterEntry, RecordHeader,
        RecordKind,
    };
    use floe_storage::namespace::{Object, Upload};
    use floe_storage::store::{Key, Put, Store};

    let _ = RecordHeader::parse(data).map(|h| h.record_bytes());
    let _ = RecordHeader::checksum_holds(data);
    if data.len() >= floe_storage::format::FOOTER_ENTRY_BYTES {
        let _ = FooterEntry::parse(&data[..floe_storage::format::FOOTER_ENTRY_BYTES]);
    }
    let _ = parse_segment_header(data);
    let _ = parse_trailer(data);
    let _ = parse_segment_name(&String::from_utf8_lossy(data));
    if let Ok(object) = serde_json::from_slice::<Object>(data) {
        let again: Object = serde_json::from_slice(&serde_json::to_vec(&object).unwrap()).unwrap();
        assert_eq!(again, object);
    }
    if let Ok(upload) = serde_json::from_slice::<Upload>(data) {
        let again: Upload = serde_json::from_slice(&serde_json::to_vec(&upload).unwrap()).unwrap();
        assert_eq!(again, upload);
    }
    if data.len() < 9 {
        return;
    }
    let records: Vec<(Key, Vec<u8>)> = (0..6u8)
        .map(|i| {
            let key = Key {
                blob_id: [i; 32],
                kind: if i % 2 == 0 {
                    RecordKind::Metadata
                } else {
                    RecordKind::Primary
                },
                shard: if i % 2 == 0 { 0 } else { u16::from(i) },
            };
            (key, vec![i ^ 0x5a; 100 + 700 * usize::from(i)])
        })
        .collect();
    let dir = MemDir::new(1);
    {
        let (mut store, _) = ready(Store::open(dir.clone())).expect("a fresh store opens");
        let puts: Vec<Put<'_>> = records
            .iter()
            .map(|(key, bytes)| Put {
                key: *key,
                end_epoch: 10,
                flags: 0,
                data: bytes,
            })
            .collect();
        ready(store.put(&puts[..3])).expect("stored");
        ready(store.put(&puts[3..])).expect("stored");
    }
    let names = dir.names();
    let name = &names[usize::from(data[0]) % names.len()];
    let size = dir.file_bytes(name).unwrap_or(0);
    let offset = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes")) % (size + 64);
    dir.overwrite(name, offset, &data[9..]);
    if let Ok((mut store, _)) = ready(Store::open(dir)) {
        for (key, bytes) in &records {
            if let Ok(Some(got)) = ready(store.get(key)) {
                assert!(
                    got[..] == bytes[..],
                    "a damaged record was served as {key:?}"
                );
            }
        }
    }
}

/// Runs a future of the in-memory device, which is ready at its first poll.
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => unreachable!("MemDir futures are ready at once"),
    }
}
