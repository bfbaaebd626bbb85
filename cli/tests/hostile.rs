//! Hostile clients on every listener (issue 18): slow heads, huge heads, endless bodies, many
//! idle connections, path tricks and missing or wrong credentials. Each gets a bounded answer
//! and costs bounded memory and file descriptors; the node keeps serving others.
//!
//! One node serves both listeners (its own API and S3) with a write token, a cluster secret
//! and an S3 key, and short timeouts so that the tests wait seconds, not minutes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::*;

const TOKEN: &str = "hostile-write-token";
const SECRET: &str = "hostile-cluster-secret";
const S3_KEY: &str = "AKIDHOSTILE";
const S3_SECRET: &str = "hostile-s3-secret";
const IDLE_SECONDS: u64 = 3;
const HEAD_SECONDS: u64 = 2;

fn start_node(dir: &Path, extra_toml: &str) -> NodeProcess {
    start_node_idle(dir, extra_toml, IDLE_SECONDS)
}

fn start_node_idle(dir: &Path, extra_toml: &str, idle_seconds: u64) -> NodeProcess {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "n_shards = 10\ncores = 1\ns3_listen = \"127.0.0.1:0\"\n{extra_toml}\n[limits]\n\
             idle_timeout_seconds = {idle_seconds}\nhead_timeout_seconds = {HEAD_SECONDS}\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            ("FLOE_WRITE_TOKEN", TOKEN),
            ("FLOE_CLUSTER_SECRET", SECRET),
            ("FLOE_S3_ACCESS_KEY_ID", S3_KEY),
            ("FLOE_S3_SECRET_ACCESS_KEY", S3_SECRET),
        ],
    )
}

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// Both listeners of `node`: (name, address).
fn listeners(node: &NodeProcess) -> Vec<(&'static str, SocketAddr)> {
    vec![
        ("floe", addr(&node.url)),
        ("s3", addr(node.s3_url.as_deref().expect("S3 is on"))),
    ]
}

fn connect(at: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(at).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads an answer's status line and headers (and whatever body came with them); `None` if
/// the node closed the connection first.
fn read_head(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            // The rest of a short body, if it is already there.
            std::thread::sleep(Duration::from_millis(50));
            let _ = stream.set_nonblocking(true);
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = stream.set_nonblocking(false);
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Sends `request` on a new connection and reads the answer.
fn exchange(at: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = connect(at);
    stream.write_all(request).ok()?;
    read_head(&mut stream)
}

/// Whether the node closed `stream` (EOF or reset) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn healthy(node: &NodeProcess) -> bool {
    get(&node.url, "/v1/health").0 == 200
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Regression (issue 18): a client that trickled its request head a byte at a time was never
/// idle and held its connection for ever, so a few thousand of them took every connection of
/// a core. Heads must now arrive within `head_timeout_seconds` of their first byte.
#[test]
fn slowloris_heads_are_cut_off_at_the_head_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "");
    for (name, at) in listeners(&node) {
        let mut slow: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut s = connect(at);
                s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
                    .unwrap();
                s
            })
            .collect();
        let started = Instant::now();
        // A header byte every 200 ms: never idle, never done.
        let mut cut = vec![false; slow.len()];
        while started.elapsed() < Duration::from_secs(HEAD_SECONDS + 4) && cut.contains(&false) {
            for (stream, cut) in slow.iter_mut().zip(cut.iter_mut()) {
                if !*cut && stream.write_all(b"x").is_err() {
                    *cut = true;
                }
            }
            for (stream, cut) in slow.iter_mut().zip(cut.iter_mut()) {
                if !*cut && closed_within(stream, Duration::from_millis(10)) {
                    *cut = true;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let took = started.elapsed();
        assert!(
            !cut.contains(&false),
            "{name}: slow heads still open after {took:?}"
        );
        assert!(
            took >= Duration::from_secs(HEAD_SECONDS) - Duration::from_millis(300),
            "{name}: cut before the head timeout ({took:?})"
        );
        assert!(healthy(&node), "{name}: the node serves others");
    }
    let cut = metric(&node.url, "floe_http_rejected_total{reason=\"slow_head\"}");
    assert!(cut >= 40.0, "slow heads counted: {cut}");
    // A normal client on a kept-alive connection that pauses between requests is not cut.
    let mut stream = connect(addr(&node.url));
    for _ in 0..2 {
        stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        assert_eq!(read_head(&mut stream).map(|a| a.0), Some(200));
        // Quiet for longer than the head timeout (but not idle): no head is arriving.
        std::thread::sleep(Duration::from_millis(HEAD_SECONDS * 1000 + 500));
    }
}

/// Heads over the node's 64 KiB buffer, or with thousands of headers, get 431 (or a close),
/// at once, on both listeners.
#[test]
fn huge_heads_get_a_bounded_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "");
    let pid = node.child.id();
    let rss = rss_anon_kib(pid);
    for (name, at) in listeners(&node) {
        let big_value = format!(
            "GET /v1/health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(1 << 20)
        );
        let many: String = (0..5000).map(|i| format!("x-h{i}: v\r\n")).collect();
        let many = format!("GET /v1/health HTTP/1.1\r\nhost: x\r\n{many}\r\n");
        let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(1 << 20));
        for (what, request) in [
            ("a 1 MiB header", big_value),
            ("5,000 headers", many),
            ("a 1 MiB target", long_target),
        ] {
            let started = Instant::now();
            let answer = exchange(at, request.as_bytes());
            if let Some((status, _)) = &answer {
                assert!(
                    matches!(status, 400 | 414 | 431),
                    "{name}: {what} answered {status}"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name}: {what} took {:?}",
                started.elapsed()
            );
        }
    }
    assert!(healthy(&node));
    let grown = rss_anon_kib(pid).saturating_sub(rss);
    assert!(grown < 64 << 10, "RssAnon grew {grown} KiB");
}

/// A chunked body that never ends is cut at the route's limit (413) or refused before it is
/// read (401/403 without credentials); the client cannot make the node take more.
#[test]
fn endless_chunked_bodies_end_at_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    // At n = 10 a blob holds at most about 1.8 MB: the store's limit.
    let node = start_node(dir.path(), "");
    let floe = addr(&node.url);
    let s3 = addr(node.s3_url.as_deref().unwrap());
    let id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let cases: Vec<(&str, SocketAddr, String, &[u16])> = vec![
        (
            "store a blob (token)",
            floe,
            format!("PUT /v1/blobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n"),
            &[413],
        ),
        (
            "store a blob (no token)",
            floe,
            "PUT /v1/blobs HTTP/1.1\r\nhost: x\r\n".to_string(),
            &[401],
        ),
        (
            "a peer's slivers (unsigned)",
            floe,
            format!("PUT /v1/blobs/{id}/slivers HTTP/1.1\r\nhost: x\r\n"),
            &[401],
        ),
        (
            "an S3 object (unsigned)",
            s3,
            "PUT /bucket/key HTTP/1.1\r\nhost: x\r\n".to_string(),
            &[403],
        ),
    ];
    for (what, at, head, expected) in cases {
        let mut stream = connect(at);
        stream
            .write_all(format!("{head}transfer-encoding: chunked\r\n\r\n").as_bytes())
            .unwrap();
        let chunk = format!("10000\r\n{}\r\n", "z".repeat(0x10000));
        let mut sent = 0u64;
        let started = Instant::now();
        // At most 64 MiB or 20 s: far past any limit here.
        while sent < 64 << 20 && started.elapsed() < Duration::from_secs(20) {
            if stream.write_all(chunk.as_bytes()).is_err() {
                break;
            }
            sent += 0x10000;
        }
        let answer = read_head(&mut stream);
        let status = answer.as_ref().map(|a| a.0);
        assert!(
            status.is_some_and(|s| expected.contains(&s)),
            "{what}: answered {answer:?} after {sent} bytes"
        );
        assert!(sent < 64 << 20, "{what}: took the whole 64 MiB");
    }
    assert!(healthy(&node));
    // Nothing half-stored: no blob is listed.
    let (status, body) = get(&node.url, "/v1/blobs");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["blobs"].as_array().map(Vec::len), Some(0));
}

/// Raises this process's descriptor limit (the node inherits it) to its hard limit, which must
/// allow `want` connections.
fn raise_nofile(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= want,
        "this test needs {want} descriptors; the hard limit is {} (ulimit -Hn)",
        limit.rlim_cur
    );
}

/// 10,000 idle connections: the node holds at most `connections_per_core` of them (the rest
/// get 503 and are closed), spends bounded memory and descriptors on them, closes them after
/// the idle timeout, and serves again.
#[test]
fn ten_thousand_idle_connections_cost_bounded_memory_and_descriptors() {
    raise_nofile(10_200);
    let dir = tempfile::tempdir().unwrap();
    // Idle long enough that the first connections are still held when the last are made.
    let idle_seconds = 10;
    let node = start_node_idle(dir.path(), "", idle_seconds);
    let pid = node.child.id();
    let fds = open_fds(pid);
    let rss = rss_anon_kib(pid);
    let limit = 4096; // connections_per_core, default, one core
    let at = addr(&node.url);
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        match TcpStream::connect(at) {
            Ok(stream) => idle.push(stream),
            Err(err) => panic!("connect {}: {err}", idle.len()),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let held_fds = open_fds(pid);
    let held_rss = rss_anon_kib(pid);
    assert!(
        held_fds <= fds + limit + 64,
        "descriptors {fds} -> {held_fds} for 10,000 connections (limit {limit})"
    );
    let per_connection = held_rss.saturating_sub(rss) * 1024 / limit as u64;
    assert!(
        per_connection < 40 << 10,
        "RssAnon {rss} -> {held_rss} KiB: {per_connection} bytes per held connection"
    );
    // Those over the limit were answered 503 and closed.
    let mut refused = 0;
    for stream in idle.iter_mut().rev().take(100) {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 64];
        let got = stream.read(&mut buf);
        if let Ok(n) = got {
            if n > 0 && String::from_utf8_lossy(&buf[..n]).contains(" 503 ") {
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 90,
        "the last connections were refused 503 ({refused}/100)"
    );
    // After the idle timeout the node has let them all go and serves again.
    let deadline = Instant::now() + Duration::from_secs(idle_seconds + 10);
    while open_fds(pid) > fds + 16 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = open_fds(pid);
    assert!(
        after <= fds + 16,
        "descriptors after the idle timeout: {after} (from {fds})"
    );
    drop(idle);
    assert!(healthy(&node));
    println!(
        "10,000 idle connections: descriptors {fds} -> {held_fds} -> {after}; RssAnon {rss} -> \
         {held_rss} KiB ({per_connection} B per held connection)"
    );
}

/// Path tricks in every path segment of every route, on both listeners: each gets a 4xx (or
/// an S3 key that is only a key), never a 5xx, and no file appears in or out of the data
/// directory.
#[test]
fn path_tricks_in_every_segment_touch_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "");
    let files = |root: &Path| -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
        out.sort();
        out
    };
    let before = files(dir.path());
    let tricks = [
        "..",
        "%2e%2e",
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2F",
        "%00",
        "a%00b",
        "%ff%fe",
        ".",
        "~root",
        "%5c..%5c",
        "CON",
        &"a".repeat(4000),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%2f",
        "-1",
        "99999999999999999999",
    ];
    let id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let templates = [
        "/v1/blobs/{}",
        "/v1/blobs/{}/metadata",
        "/v1/blobs/{}/status",
        "/v1/blobs/{}/slivers",
        "/v1/blobs/{}/recoverySymbols",
        "/v1/blobs/ID/slivers/{}/primary",
        "/v1/blobs/ID/slivers/0/{}",
        "/v1/shards/{}/slivers",
        "/{}/v1/health",
        "/v1/{}",
    ];
    let floe = addr(&node.url);
    let mut asked = 0;
    for template in templates {
        for trick in tricks {
            let path = template.replace("ID", id).replace("{}", trick);
            for method in ["GET", "PUT", "DELETE"] {
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
                     content-length: 0\r\nconnection: close\r\n\r\n"
                );
                let answer = exchange(floe, request.as_bytes());
                let status = answer.as_ref().map(|a| a.0).unwrap_or(0);
                assert!((400..500).contains(&status), "{method} {path}: {answer:?}");
                asked += 1;
            }
        }
    }
    // S3: bucket names are checked; keys are names in the namespace, never paths.
    let s3 = addr(node.s3_url.as_deref().unwrap());
    for trick in tricks {
        for path in [
            format!("/{trick}"),
            format!("/{trick}/key"),
            format!("/b/{trick}"),
        ] {
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let answer = exchange(s3, request.as_bytes());
            let status = answer.as_ref().map(|a| a.0).unwrap_or(0);
            assert!((400..500).contains(&status), "S3 GET {path}: {answer:?}");
            asked += 1;
        }
    }
    assert!(healthy(&node));
    assert_eq!(before, files(dir.path()), "no file came or went");
    println!("{asked} requests with path tricks: all 4xx, no file touched");
}

/// Every write route of every API refuses a request without its credentials and one with
/// wrong credentials, before reading its body.
#[test]
fn every_write_route_needs_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), "");
    let floe = addr(&node.url);
    let s3 = addr(node.s3_url.as_deref().unwrap());
    let id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    // User writes need the write token.
    for (method, path) in [
        ("PUT", "/v1/blobs"),
        ("DELETE", &*format!("/v1/blobs/{id}")),
    ] {
        for auth in [
            "",
            "authorization: Bearer wrong\r\n",
            "authorization: Basic eA==\r\n",
        ] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 3\r\n\
                 connection: close\r\n\r\nabc"
            );
            let answer = exchange(floe, request.as_bytes()).unwrap();
            assert_eq!(answer.0, 401, "{method} {path} [{auth}]: {answer:?}");
            assert!(answer.1.contains("unauthorized"), "{}", answer.1);
        }
    }
    // Peer calls need a signature made with the cluster secret (the write token is not one).
    let peer_routes = [
        ("PUT", format!("/v1/blobs/{id}/metadata")),
        ("DELETE", format!("/v1/blobs/{id}/metadata")),
        ("PUT", format!("/v1/blobs/{id}/slivers/0/primary")),
        ("PUT", format!("/v1/blobs/{id}/slivers")),
        ("GET", "/v1/shards/0/slivers".to_string()),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (method, path) in &peer_routes {
        for auth in [
            String::new(),
            format!("authorization: Bearer {TOKEN}\r\n"),
            format!("x-floe-peer: node-1 {now} {}\r\n", "0".repeat(64)),
            "x-floe-peer: garbage\r\n".to_string(),
        ] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 3\r\n\
                 connection: close\r\n\r\nabc"
            );
            let answer = exchange(floe, request.as_bytes()).unwrap();
            assert_eq!(answer.0, 401, "{method} {path} [{auth}]: {answer:?}");
            assert!(answer.1.contains("peerUnauthorized"), "{}", answer.1);
        }
    }
    // S3 writes need a valid signature.
    let date = "20261130T000000Z";
    let wrong_sig = format!(
        "authorization: AWS4-HMAC-SHA256 Credential={S3_KEY}/20261130/us-east-1/s3/aws4_request, \
         SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}\r\n\
         x-amz-date: {date}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n",
        "0".repeat(64)
    );
    let unknown_key = wrong_sig.replace(S3_KEY, "AKIDNOBODY");
    let s3_writes = [
        ("PUT", "/bucket"),
        ("DELETE", "/bucket"),
        ("PUT", "/bucket/key"),
        ("DELETE", "/bucket/key"),
        ("POST", "/bucket/key?uploads"),
        ("PUT", "/bucket/key?partNumber=1&uploadId=u"),
        ("POST", "/bucket/key?uploadId=u"),
        ("DELETE", "/bucket/key?uploadId=u"),
        ("POST", "/bucket?delete"),
    ];
    for (method, path) in s3_writes {
        for auth in [String::new(), wrong_sig.clone(), unknown_key.clone()] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 3\r\n\
                 connection: close\r\n\r\nabc"
            );
            let answer = exchange(s3, request.as_bytes()).unwrap();
            assert_eq!(answer.0, 403, "S3 {method} {path} [{auth}]: {answer:?}");
        }
        // A copy names its source in a header: refused the same.
        let request = "PUT /bucket/copy HTTP/1.1\r\nhost: x\r\nx-amz-copy-source: /bucket/key\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n";
        assert_eq!(exchange(s3, request.as_bytes()).unwrap().0, 403);
    }
    assert!(healthy(&node));
}
