//! End-to-end tests of `floe node`: the real binary on a free loopback port, driven over HTTP
//! like a client drives it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use floe_codec::{
    encode, encode_metadata, encode_sliver, BlobId, EncodedBlob, EncodingConfig, SliverKind,
};

mod common;
use common::*;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    content_type: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer: the status and a JSON error body with a code and message.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type, "application/json");
        let json = self.json();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
}

fn call(method: &str, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Answer {
    let agent = agent();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = match body {
        Some(body) => agent.run(request.body(body.to_vec()).unwrap()),
        None => agent.run(request.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Answer {
        status: response.status().as_u16(),
        body: response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap(),
        content_type,
    }
}

fn get(url: &str) -> Answer {
    call("GET", url, None, &[])
}

fn put(url: &str, body: &[u8]) -> Answer {
    call("PUT", url, Some(body), &[])
}

fn store(node: &NodeProcess, blob: &EncodedBlob) {
    let id = blob.blob_id();
    let n = blob.layout().config.n_shards();
    let answer = put(
        &format!("{}/v1/blobs/{id}/metadata?epochs=3", node.url),
        &encode_metadata(blob.metadata()),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    for pair in 0..n {
        for (kind, index) in [
            (SliverKind::Primary, pair),
            (SliverKind::Secondary, n - 1 - pair),
        ] {
            let url = format!("{}/v1/blobs/{id}/slivers/{pair}/{kind}", node.url);
            let answer = put(&url, &encode_sliver(&blob.to_sliver(kind, index)));
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
        }
    }
}

fn store_metadata(node: &NodeProcess, blob: &EncodedBlob) {
    let url = format!("{}/v1/blobs/{}/metadata", node.url, blob.blob_id());
    let answer = put(&url, &encode_metadata(blob.metadata()));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

/// Opens a connection and sends the head of a sliver upload and the first half of its body.
fn start_upload(node: &NodeProcess, id: &BlobId, pair: usize, body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "PUT /v1/blobs/{id}/slivers/{pair}/primary HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream
}

fn check_stored(node: &NodeProcess, blob: &EncodedBlob) {
    let id = blob.blob_id();
    let n = blob.layout().config.n_shards();
    let meta = get(&format!("{}/v1/blobs/{id}/metadata", node.url));
    assert_eq!(meta.status, 200);
    assert_eq!(meta.content_type, "application/octet-stream");
    assert_eq!(meta.body, encode_metadata(blob.metadata()));
    for pair in 0..n {
        for (kind, index) in [
            (SliverKind::Primary, pair),
            (SliverKind::Secondary, n - 1 - pair),
        ] {
            let answer = get(&format!("{}/v1/blobs/{id}/slivers/{pair}/{kind}", node.url));
            assert_eq!(answer.status, 200);
            assert_eq!(
                answer.body,
                encode_sliver(&blob.to_sliver(kind, index)),
                "{kind} {pair}"
            );
        }
    }
    let status = get(&format!("{}/v1/blobs/{id}/status", node.url)).json();
    assert_eq!(status["known"], true);
    let all: Vec<serde_json::Value> = (0..n).map(|p| p.into()).collect();
    assert_eq!(status["primaryPairs"].as_array().unwrap(), &all);
    assert_eq!(status["secondaryPairs"].as_array().unwrap(), &all);
}

fn blob_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Bytes without repeats (xorshift), so that a window of them is found once in a file.
fn unique_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn stores_reads_back_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let config = EncodingConfig::new(10).unwrap();
    let blobs: Vec<EncodedBlob> = [0usize, 1, 33, 100_000]
        .iter()
        .enumerate()
        .map(|(i, len)| encode(&config, &blob_bytes(*len, i as u8)).unwrap())
        .collect();
    let mut node = start(&["--data-dir", data, "--shards", "10", "--cores", "2"], &[]);
    let health = get(&format!("{}/v1/health", node.url)).json();
    assert_eq!(health["nShards"], 10);
    assert_eq!(health["shardsOwned"], 10);
    assert_eq!(health["shardsHealthy"], 10);
    for blob in &blobs {
        store(&node, blob);
        check_stored(&node, blob);
    }
    // Storing again is harmless.
    store(&node, &blobs[2]);
    let metrics = get(&format!("{}/metrics", node.url));
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("floe_http_requests_total{route=\"put_sliver\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("floe_disk_free_bytes{dir="), "{text}");
    assert!(
        text.contains("floe_http_in_flight_requests{core="),
        "{text}"
    );
    assert!(
        !text.contains(&blobs[0].blob_id().to_string()),
        "no blob IDs in labels"
    );
    let status = node.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let node = start(&["--data-dir", data, "--shards", "10", "--cores", "2"], &[]);
    for blob in &blobs {
        check_stored(&node, blob);
    }
    // Recovery symbols from the restarted node rebuild a sliver.
    let blob = &blobs[3];
    let id = blob.blob_id();
    let answer = get(&format!(
        "{}/v1/blobs/{id}/recoverySymbols?targetPair=4&targetKind=primary",
        node.url
    ));
    assert_eq!(answer.status, 200);
    let symbols = floe_codec::decode_recovery_symbols(&answer.body).unwrap();
    let rebuilt =
        floe_codec::recover_sliver(blob.metadata(), SliverKind::Primary, 4, &symbols).unwrap();
    assert_eq!(rebuilt.data, blob.primary_sliver(4));
    assert!(rebuilt.rejected_sources.is_empty());
}

#[test]
fn put_and_get_commands_round_trip_at_the_default_n() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["--data-dir", dir.path().to_str().unwrap()], &[]);
    let file = dir.path().join("blob");
    std::fs::write(&file, blob_bytes(300_000, 9)).unwrap();
    let floe = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_floe"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let id = floe(&["store", file.to_str().unwrap(), "--node", &node.url]);
    let id = id.trim();
    assert_eq!(id, floe(&["blob-id", file.to_str().unwrap()]).trim());
    let back = dir.path().join("back");
    floe(&[
        "read",
        id,
        "--node",
        &node.url,
        "-o",
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
}

#[test]
fn every_node_api_error_is_a_json_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_n10(dir.path().to_str().unwrap(), 1, &[]);
    let url = &node.url;
    let config = EncodingConfig::new(10).unwrap();
    let blob = encode(&config, &blob_bytes(5000, 1)).unwrap();
    let other = encode(&config, &blob_bytes(5000, 2)).unwrap();
    let id = blob.blob_id();
    let sliver = |b: &EncodedBlob, i| encode_sliver(&b.to_sliver(SliverKind::Primary, i));

    // Malformed path, query, blob ID, method.
    get(&format!("{url}/v1/nothing")).assert_error(404, "unknownPath");
    get(&format!("{url}/v1/blobs/not-an-id/metadata")).assert_error(400, "invalidBlobId");
    get(&format!("{url}/v1/blobs/{id}/slivers/x/primary")).assert_error(400, "invalidNumber");
    get(&format!("{url}/v1/blobs/{id}/slivers/1/middle")).assert_error(400, "invalidSliverKind");
    get(&format!("{url}/v1/blobs/{id}/status?verbose=1")).assert_error(400, "invalidQuery");
    get(&format!("{url}/v1/blobs/{id}/slivers/10/primary")).assert_error(400, "pairOutOfRange");
    call(
        "POST",
        &format!("{url}/v1/blobs/{id}/metadata"),
        Some(b""),
        &[],
    )
    .assert_error(405, "methodNotAllowed");
    // Unknown blob.
    get(&format!("{url}/v1/blobs/{id}/metadata")).assert_error(404, "blobNotFound");
    get(&format!("{url}/v1/blobs/{id}/slivers/1/primary")).assert_error(404, "sliverNotFound");
    put(
        &format!("{url}/v1/blobs/{id}/slivers/1/primary"),
        &sliver(&blob, 1),
    )
    .assert_error(404, "blobNotFound");
    // Malformed BCS; metadata of another blob; both store nothing.
    put(&format!("{url}/v1/blobs/{id}/metadata"), b"\x00\x01garbage")
        .assert_error(400, "invalidBcs");
    put(
        &format!("{url}/v1/blobs/{id}/metadata"),
        &encode_metadata(other.metadata()),
    )
    .assert_error(400, "verificationFailed");
    get(&format!("{url}/v1/blobs/{id}/metadata")).assert_error(404, "blobNotFound");
    // Metadata over the format's limit for n = 10.
    put(
        &format!("{url}/v1/blobs/{id}/metadata"),
        &vec![0u8; 100_000],
    )
    .assert_error(413, "bodyTooLarge");
    assert_eq!(
        put(
            &format!("{url}/v1/blobs/{id}/metadata"),
            &encode_metadata(blob.metadata())
        )
        .status,
        200
    );
    // A sliver of another blob, a flipped byte, the wrong index: 400, nothing stored.
    let pair_url = format!("{url}/v1/blobs/{id}/slivers/1/primary");
    put(&pair_url, &sliver(&other, 1)).assert_error(400, "verificationFailed");
    let mut flipped = sliver(&blob, 1);
    flipped[3] ^= 0x10;
    put(&pair_url, &flipped).assert_error(400, "verificationFailed");
    put(&pair_url, &sliver(&blob, 2)).assert_error(400, "wrongSliverIndex");
    put(&pair_url, &sliver(&blob, 1)[..5]).assert_error(400, "invalidBcs");
    get(&pair_url).assert_error(404, "sliverNotFound");
    let metrics = String::from_utf8(get(&format!("{url}/metrics")).body).unwrap();
    assert!(
        metrics.contains("floe_verification_failures_total{reason=\"sliver\"} 2"),
        "{metrics}"
    );
    assert_eq!(put(&pair_url, &sliver(&blob, 1)).status, 200);
    assert_eq!(get(&pair_url).body, sliver(&blob, 1));
}

#[test]
fn writes_need_the_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_n10(
        dir.path().to_str().unwrap(),
        1,
        &[("FLOE_WRITE_TOKEN", "s3cret")],
    );
    let blob = encode(&EncodingConfig::new(10).unwrap(), b"token").unwrap();
    let url = format!("{}/v1/blobs/{}/metadata", node.url, blob.blob_id());
    let body = encode_metadata(blob.metadata());
    put(&url, &body).assert_error(401, "unauthorized");
    call(
        "PUT",
        &url,
        Some(&body),
        &[("authorization", "Bearer wrong!")],
    )
    .assert_error(401, "unauthorized");
    get(&url).assert_error(404, "blobNotFound");
    let ok = call(
        "PUT",
        &url,
        Some(&body),
        &[("authorization", "Bearer s3cret")],
    );
    assert_eq!(ok.status, 200);
    // Reads need no token.
    assert_eq!(get(&url).status, 200);
}

/// Sends a request head and part of the declared body, then ends the connection in one of two
/// ways; nothing may be stored.
#[test]
fn truncated_uploads_and_vanishing_clients_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_n10(dir.path().to_str().unwrap(), 2, &[]);
    let blob = encode(&EncodingConfig::new(10).unwrap(), &blob_bytes(50_000, 3)).unwrap();
    let id = blob.blob_id();
    store_metadata(&node, &blob);
    let body = encode_sliver(&blob.to_sliver(SliverKind::Primary, 2));
    for shut_write_only in [true, false] {
        let mut stream = start_upload(&node, id, 2, &body);
        if shut_write_only {
            // A truncated upload: the client says it is done sending, and reads the answer.
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
                "answer to a truncated body: {answer}"
            );
        }
        drop(stream);
    }
    std::thread::sleep(Duration::from_millis(200));
    let pair_url = format!("{}/v1/blobs/{id}/slivers/2/primary", node.url);
    get(&pair_url).assert_error(404, "sliverNotFound");
    // The node is still well and takes the whole sliver.
    assert_eq!(put(&pair_url, &body).status, 200);
}

#[test]
fn over_the_connection_limit_answers_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "n_shards = 10\ncores = 1\n[limits]\nconnections_per_core = 1\n",
    )
    .unwrap();
    let node = start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
        ],
        &[],
    );
    // One connection held open (idle, keep-alive) takes the only slot.
    let held = TcpStream::connect(node.address()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut second = TcpStream::connect(node.address()).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(second, "GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = second.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("tooManyConnections"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&format!("{}/v1/health", node.url)).status, 200);
}

#[test]
fn startup_errors_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    // Port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args([
            "node",
            "--listen",
            &address,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains("--listen"),
        "{err}"
    );
    // A data directory that is a file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = try_start(&["--data-dir", file.to_str().unwrap()], &[])
        .err()
        .unwrap();
    assert!(
        err.contains("not usable") && err.contains("--data-dir"),
        "{err}"
    );
    // Locked memory too small for the configured I/O memory.
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "io_memory_bytes = 1099511627776\n").unwrap();
    let err = try_start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
        ],
        &[],
    )
    .err()
    .unwrap();
    assert!(err.contains("ulimit -l"), "{err}");
    // A data directory written with another core count.
    let data = dir.path().join("cores");
    std::fs::create_dir_all(data.join("core-0-of-3")).unwrap();
    let err = try_start(&["--data-dir", data.to_str().unwrap(), "--cores", "2"], &[])
        .err()
        .unwrap();
    assert!(err.contains("--cores 3"), "{err}");
    // A typo in node.toml.
    std::fs::write(&config, "listn = \"127.0.0.1:1\"\n").unwrap();
    let err = try_start(&["--config", config.to_str().unwrap()], &[])
        .err()
        .unwrap();
    assert!(err.contains("unknown field"), "{err}");
}

/// SIGTERM while a request is half uploaded: the node stops accepting, lets that request
/// finish, answers it, and exits 0; what it acknowledged is there after a restart.
#[test]
fn sigterm_finishes_in_flight_requests_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data, "--shards", "10", "--cores", "1"];
    let mut node = start(&args, &[]);
    let blob = encode(&EncodingConfig::new(10).unwrap(), &blob_bytes(40_000, 5)).unwrap();
    let id = blob.blob_id();
    store_metadata(&node, &blob);
    let body = encode_sliver(&blob.to_sliver(SliverKind::Primary, 1));
    let mut stream = start_upload(&node, id, 1, &body);
    std::thread::sleep(Duration::from_millis(200));
    send_signal(node.child.id(), 15);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(node.address()).is_err(),
        "a stopping node accepts no new connection"
    );
    stream.write_all(&body[body.len() / 2..]).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = node.stop();
    assert!(status.success());
    let node = start(&args, &[]);
    let answer = get(&format!("{}/v1/blobs/{id}/slivers/1/primary", node.url));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, body);
}

/// A full disk answers 507 with a JSON error, and everything stored before stays readable.
#[test]
fn a_full_disk_answers_507_and_keeps_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "2m") else {
        println!("skipped: mounting a 2 MiB tmpfs needs root (and mount rights)");
        return;
    };
    fill_until_507(&disk.path);
}

/// The same on an ext4 file system on a loop device (issue 18: the real backend, O_DIRECT
/// through io_uring, on a real file system, not tmpfs).
#[test]
fn a_full_ext4_disk_on_a_loop_device_answers_507_and_keeps_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount_loop(&dir.path().join("disk"), 4) {
        Ok(disk) => disk,
        Err(why) => {
            assert!(
                std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
                "CI runs as root with loop devices: {why}"
            );
            println!("skipped: a loop device needs root ({why})");
            return;
        }
    };
    fill_until_507(&disk.path);
}

/// Stores slivers on a node whose data is on the small disk at `disk` until it answers 507;
/// everything stored before stays readable and the node healthy.
fn fill_until_507(disk: &std::path::Path) {
    let data = disk.join("data");
    let node = start_n10(data.to_str().unwrap(), 1, &[]);
    let config = EncodingConfig::new(10).unwrap();
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut full = None;
    'blobs: for i in 0..100u8 {
        let blob = encode(&config, &blob_bytes(60_000, i)).unwrap();
        let id = blob.blob_id();
        let url = format!("{}/v1/blobs/{id}/metadata", node.url);
        let answer = put(&url, &encode_metadata(blob.metadata()));
        if answer.status != 200 {
            full = Some(answer);
            break;
        }
        for pair in 0..10 {
            let url = format!("{}/v1/blobs/{id}/slivers/{pair}/primary", node.url);
            let body = encode_sliver(&blob.to_sliver(SliverKind::Primary, pair));
            let answer = put(&url, &body);
            if answer.status != 200 {
                full = Some(answer);
                break 'blobs;
            }
            stored.push((url, body));
        }
    }
    let full = full.expect("a 2 MiB disk fills up");
    full.assert_error(507, "noSpace");
    assert!(stored.len() > 20, "stored {} slivers first", stored.len());
    for (url, body) in &stored {
        let answer = get(url);
        assert_eq!(answer.status, 200, "{url}");
        assert_eq!(&answer.body, body);
    }
    assert_eq!(get(&format!("{}/v1/health", node.url)).status, 200);
    drop(node);
}

/// A sliver corrupted on disk behind the node's back is found by the background scrubber,
/// counted, and from then on treated as missing (404), never served.
#[test]
fn the_scrubber_finds_a_corrupted_sliver_and_stops_serving_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // One pass every two seconds (the default is a week).
    let node = start_configured(
        dir.path(),
        "scrub_interval_seconds = 2\n",
        &["--shards", "10", "--cores", "1"],
    );
    let blob = encode(&EncodingConfig::new(10).unwrap(), &unique_bytes(100_000, 7)).unwrap();
    store(&node, &blob);
    let id = blob.blob_id();
    let body = encode_sliver(&blob.to_sliver(SliverKind::Primary, 2));
    let url = format!("{}/v1/blobs/{id}/slivers/2/primary", node.url);
    assert_eq!(get(&url).body, body);
    // Flip one byte of that sliver's record in the segment file.
    let segment = std::fs::read_dir(data.join("core-0-of-1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let needle = &body[100..164];
    let at = bytes
        .windows(64)
        .position(|w| w == needle)
        .expect("sliver in the segment")
        + 10;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[bytes[at] ^ 0x01], at as u64).unwrap();
    file.sync_all().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(&url);
        if answer.status == 404 {
            answer.assert_error(404, "sliverNotFound");
            break;
        }
        assert_eq!(answer.status, 200);
        assert!(
            Instant::now() < deadline,
            "the scrubber did not find the corruption"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = String::from_utf8(get(&format!("{}/metrics", node.url)).body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("floe_corrupt_records_total{") && l.ends_with(" 1")),
        "{metrics}"
    );
    // Everything else is still served.
    let other = format!("{}/v1/blobs/{id}/slivers/3/primary", node.url);
    assert_eq!(
        get(&other).body,
        encode_sliver(&blob.to_sliver(SliverKind::Primary, 3))
    );
}

/// `floe tune` measures a directory and writes io-properties.toml; the node sizes its I/O from
/// it and says so in /v1/health; `--check --json` reports the system; a named properties file
/// that is missing stops the start with the fix.
#[test]
fn tune_writes_properties_that_the_node_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let properties = dir.path().join("io-properties.toml");
    let floe = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_floe"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = floe(&[
        "tune",
        "--data-dir",
        data.to_str().unwrap(),
        "--duration",
        "50ms",
        "--file-size",
        "8M",
        "--max-depth",
        "2",
        "--out",
        properties.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("random     read"),
        "progress per point: {stderr}"
    );
    let text = std::fs::read_to_string(&properties).unwrap();
    assert!(text.contains("read_iops"), "{text}");
    assert!(
        !data.join(".floe-tune.dat").exists(),
        "the test file is removed"
    );

    let check = floe(&[
        "tune",
        "--check",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let findings: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let names: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"io_uring") && names.contains(&"memlock"),
        "{names:?}"
    );

    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "n_shards = 10\ncores = 1\nio_properties = {:?}\n",
            properties.to_str().unwrap()
        ),
    )
    .unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let node = start(&args, &[]);
    let health = get(&format!("{}/v1/health", node.url)).json();
    let io = &health["io"][0];
    assert_eq!(io["source"], properties.to_str().unwrap(), "{health}");
    assert!(
        io["readBandwidthBytesPerSecond"].as_u64().unwrap() > 0,
        "{health}"
    );
    assert!(
        io["commitBytesMax"].as_u64().unwrap() >= 1 << 20,
        "{health}"
    );
    drop(node);

    std::fs::remove_file(&properties).unwrap();
    let err = try_start(&args, &[]).err().unwrap();
    assert!(err.contains("floe tune"), "{err}");
}

/// Ctrl-C during `floe tune` stops it at once and still removes its test file.
#[test]
fn an_interrupted_tune_removes_its_test_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["tune", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--duration", "30s", "--file-size", "8M"])
        .args(["--out", dir.path().join("p.toml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let test_file = dir.path().join(".floe-tune.dat");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !test_file.exists() {
        assert!(Instant::now() < deadline, "the test file never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    send_signal(child.id(), 2);
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped promptly"
    );
    assert!(!status.success(), "an interrupted tune reports failure");
    assert!(!test_file.exists(), "the test file is removed");
    assert!(
        !dir.path().join("p.toml").exists(),
        "no properties from a partial run"
    );
}

/// Makes `close` reset the connection at once (SO_LINGER 0), as a client that gives up does.
fn reset_on_close(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    let done = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(done, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// The sum of a metric's samples in `/metrics`.
fn metric(node: &NodeProcess, name: &str) -> f64 {
    let body = get(&format!("{}/metrics", node.url)).body;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Stores `blob` through the publisher; its blob ID.
fn publish(node: &NodeProcess, blob: &[u8], epochs: u32) -> String {
    let answer = put(&format!("{}/v1/blobs?epochs={epochs}", node.url), blob);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let json = answer.json();
    json["newlyCreated"]["blobId"]
        .as_str()
        .or(json["alreadyCertified"]["blobId"].as_str())
        .unwrap()
        .to_string()
}

/// Clients that hang up mid-upload or right after asking, thousands of times, on one core
/// (512 requests in flight at most): every count they took is given back, and the node keeps
/// answering everything.
#[test]
fn clients_that_hang_up_give_back_everything_they_took() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let node = start(
        &["--data-dir", data, "--shards", "100", "--cores", "1"],
        &[],
    );
    let blob = unique_bytes(3_000_000, 5);
    let id = publish(&node, &blob, 1);
    let partial = vec![7u8; 1000];
    for i in 0..3000 {
        let mut stream = TcpStream::connect(node.address()).unwrap();
        if i % 2 == 0 {
            // An upload that stops after a part of its body.
            write!(
                stream,
                "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n"
            )
            .unwrap();
            stream.write_all(&partial).unwrap();
        } else {
            // A read the client does not wait for (a range: never from the blob cache, so the
            // handler is still gathering slivers when the client goes).
            write!(
                stream,
                "GET /v1/blobs/{id} HTTP/1.1\r\nhost: x\r\nrange: bytes=1-\r\n\r\n"
            )
            .unwrap();
        }
        reset_on_close(&stream);
        drop(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "floe_http_in_flight_requests") > 1.0 {
        assert!(
            Instant::now() < deadline,
            "requests of gone clients still count"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The only request in flight is the one reading /metrics.
    assert_eq!(metric(&node, "floe_http_in_flight_requests"), 1.0);
    assert_eq!(get(&format!("{}/v1/health", node.url)).status, 200);
    assert_eq!(get(&format!("{}/v1/blobs/{id}", node.url)).body, blob);
    publish(&node, &unique_bytes(100_000, 6), 1);
    let connections = metric(&node, "floe_http_connections");
    assert!(
        connections <= 2.0,
        "{connections} connections still counted"
    );
}

/// CPU time (user + system) of a process so far, in seconds, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name, which may hold spaces: fields 14 and 15 (utime, stime).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

/// The default node (n = 1000) holding blobs, restarted and left alone, does next to nothing:
/// its scrubber is paced to one pass a week instead of re-reading everything every second.
#[test]
fn an_idle_default_node_uses_almost_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut node = start(&["--data-dir", data, "--cores", "1"], &[]);
    let mut stored = Vec::new();
    for (i, size) in [65_536usize, 300_000, 700_000, 1_048_576]
        .iter()
        .enumerate()
    {
        let blob = unique_bytes(*size, 40 + i as u64);
        stored.push((publish(&node, &blob, 5), blob));
    }
    node.stop();
    let node = start(&["--data-dir", data, "--cores", "1"], &[]);
    std::thread::sleep(Duration::from_secs(1));
    let pid = node.child.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "an idle node used {used:.2} s of CPU in 10 s (5% of a core is 0.5 s)"
    );
    for (id, blob) in &stored {
        assert_eq!(&get(&format!("{}/v1/blobs/{id}", node.url)).body, blob);
    }
}

/// A blob over the code's limit at the committee's n is refused at once with 413 naming the
/// limit (before its body is read), and /v1/health states that limit; anything below it is
/// taken (big blobs are spooled, not held in memory).
#[test]
fn a_blob_over_the_code_s_limit_is_refused_with_413_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(&["--data-dir", dir.path().to_str().unwrap()], &[]);
    let limit = get(&format!("{}/v1/health", node.url)).json()["blobBytesMax"]
        .as_u64()
        .unwrap();
    // At n = 1000: k_p * k_s * 65534 bytes.
    assert_eq!(limit, 334 * 667 * 65534);
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        limit + 1
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(read) = stream.read(&mut buf) {
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..read]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}}") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("bodyTooLarge"), "{answer}");
    assert!(answer.contains(&limit.to_string()), "{answer}");
}

/// A blob's lifetime extended through its metadata alone (as sync does): its slivers stay past
/// their own end epoch, also after a restart, and go once the extended lifetime ends.
#[test]
fn slivers_live_as_long_as_their_blob_s_extended_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "epoch_seconds = 2\nreclaim_interval_seconds = 1\n").unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap().to_string().leak(),
        "--shards",
        "10",
        "--cores",
        "2",
    ];
    let mut node = start(&args, &[]);
    let blob = unique_bytes(150_000, 9);
    let id = publish(&node, &blob, 1);
    let blob_url = format!("{}/v1/blobs/{id}", node.url);
    let metadata = get(&format!("{blob_url}/metadata")).body;
    let extended = put(&format!("{blob_url}/metadata?epochs=6"), &metadata).json();
    let end = extended["endEpoch"].as_u64().unwrap();
    let epoch = || {
        get(&format!("{}/v1/health", node.url)).json()["epoch"]
            .as_u64()
            .unwrap()
    };
    let first_end = end - 5;
    while epoch() <= first_end + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past the slivers' own end epoch, and a sweep later.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        get(&blob_url).body,
        blob,
        "read past the slivers' own end epoch"
    );
    node.stop();
    let node = start(&args, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let blob_url = format!("{}/v1/blobs/{id}", node.url);
    assert_eq!(get(&blob_url).body, blob, "read after a restart");
    let epoch = || {
        get(&format!("{}/v1/health", node.url)).json()["epoch"]
            .as_u64()
            .unwrap()
    };
    while epoch() <= end {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    get(&blob_url).assert_error(404, "blobNotFound");
    let status = get(&format!("{blob_url}/status")).json();
    assert_eq!(
        status["primaryPairs"].as_array().unwrap().len(),
        0,
        "{status}"
    );
}

/// The node's anonymous memory (`RssAnon`), in bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples a process's `RssAnon` every 20 ms until stopped; the peak.
struct RssWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The files in a node's spool directory.
fn spool_files(data: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data.join("spool"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A node at n = 100 with a 32 MiB per-core buffer budget.
fn start_small_budget(dir: &std::path::Path) -> NodeProcess {
    start_configured(
        dir,
        "n_shards = 100\ncores = 1\n[limits]\nbuffer_bytes_per_core = 33554432\n\
         body_bytes_max = 16777216\n",
        &[],
    )
}

/// A 140 MB blob at n = 100 (the largest is 149 MB) through a node whose per-core buffer
/// budget is 32 MiB: stored by streaming it to the spool and encoding it in strips (the same
/// blob ID as the whole encoder), read back whole and by ranges as streams, with the node's
/// anonymous memory bounded all along; nothing is left in the spool.
#[test]
fn a_big_blob_streams_in_and_out_under_a_small_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_small_budget(dir.path());
    let pid = node.child.id();
    let baseline = rss_anon(pid);
    let blob = unique_bytes(140_000_000, 77);
    let watch = RssWatch::start(pid);
    let id = publish(&node, &blob, 2);
    let stored_peak = watch.peak();
    let expected = floe_codec::compute_metadata(&EncodingConfig::new(100).unwrap(), &blob)
        .unwrap()
        .0;
    assert_eq!(
        id,
        expected.to_string(),
        "the same blob ID as the whole encoder"
    );
    wait_for(10, "the spool files are removed", || {
        spool_files(&dir.path().join("data")).is_empty()
    });

    let url = format!("{}/v1/blobs/{id}", node.url);
    let watch = RssWatch::start(pid);
    assert!(get(&url).body == blob, "read back whole");
    let layout = EncodingConfig::new(100)
        .unwrap()
        .layout(blob.len() as u64)
        .unwrap();
    let row = layout.primary_sliver_bytes();
    let len = blob.len();
    for (start, end) in [
        (0, 1000),
        (len / 2 - 3_000_000, len / 2 + 3_000_000),
        (len - 1000, len),
        (row - 500, row + 500),
        (3 * row - 1, 7 * row + 1),
        (row, len),
    ] {
        let answer = call(
            "GET",
            &url,
            None,
            &[("range", &format!("bytes={start}-{}", end - 1))],
        );
        assert_eq!(answer.status, 206);
        assert!(answer.body == blob[start..end], "range {start}-{end}");
    }
    let read_peak = watch.peak();
    // A bound only a whole-blob buffer breaks: the blob is 140 MB, and the budget 32 MiB.
    let bound = baseline + (96 << 20);
    assert!(
        stored_peak < bound && read_peak < bound,
        "RssAnon peaked at {} MiB storing and {} MiB reading (baseline {} MiB, bound {} MiB)",
        stored_peak >> 20,
        read_peak >> 20,
        baseline >> 20,
        bound >> 20
    );
    eprintln!(
        "RssAnon: baseline {} MiB, peak {} MiB storing, {} MiB reading",
        baseline >> 20,
        stored_peak >> 20,
        read_peak >> 20
    );
}

/// Waits until `check` holds, for at most `seconds`.
fn wait_for(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clients that go away in the middle of a big upload or a big download leave nothing behind:
/// no spool file, no reservation (more aborted transfers than the budget could hold, then
/// whole ones work).
#[test]
fn big_transfers_cut_short_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_small_budget(dir.path());
    let data = dir.path().join("data");
    let blob = unique_bytes(60_000_000, 78);
    let id = publish(&node, &blob, 2);
    let part = vec![9u8; 1 << 20];
    for _ in 0..6 {
        let mut stream = TcpStream::connect(node.address()).unwrap();
        write!(
            stream,
            "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n"
        )
        .unwrap();
        for _ in 0..20 {
            stream.write_all(&part).unwrap();
        }
        wait_for(10, "the upload reached the spool", || {
            !spool_files(&data).is_empty()
        });
        reset_on_close(&stream);
        drop(stream);
        wait_for(10, "spool files of a cut upload are removed", || {
            spool_files(&data).is_empty()
        });
    }
    for _ in 0..10 {
        let mut stream = TcpStream::connect(node.address()).unwrap();
        write!(stream, "GET /v1/blobs/{id} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut head = [0u8; 1 << 16];
        let _ = stream.read(&mut head).unwrap();
        reset_on_close(&stream);
        drop(stream);
    }
    wait_for(10, "cut transfers still count", || {
        metric(&node, "floe_http_in_flight_requests") == 1.0
    });
    assert!(get(&format!("{}/v1/blobs/{id}", node.url)).body == blob);
    let again = unique_bytes(50_000_000, 79);
    publish(&node, &again, 1);
    wait_for(10, "the spool files are removed", || {
        spool_files(&data).is_empty()
    });
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes` at `path`, or says why it cannot (mounting needs root).
    fn mount(path: &std::path::Path, megabytes: u32) -> Result<Self, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A spool disk too small for an upload answers 507 (before the body when its length is
/// declared, midway when it is not) and loses nothing stored before.
#[test]
fn a_full_spool_disk_answers_507_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool-disk");
    let _tmpfs = match Tmpfs::mount(&spool, 52) {
        Ok(mounted) => mounted,
        Err(why) if std::env::var_os("FLOE_REQUIRE_MOUNT").is_none() => {
            eprintln!("SKIPPED: cannot mount a tmpfs ({why}); run as root to check a full spool");
            return;
        }
        Err(why) => panic!("cannot mount a tmpfs: {why}"),
    };
    let toml = format!(
        "n_shards = 100\ncores = 1\nspool_dir = {:?}\n",
        spool.display().to_string()
    );
    let node = start_configured(dir.path(), &toml, &[]);
    let small = unique_bytes(5_000_000, 80);
    let small_id = publish(&node, &small, 2);
    let big = unique_bytes(40_000_000, 81);
    // Declared: refused before the body is read.
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        big.len()
    )
    .unwrap();
    let mut head = vec![0u8; 4096];
    let read = stream.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..read]);
    assert!(head.starts_with("HTTP/1.1 507"), "{head}");
    assert!(head.contains("noSpace"), "{head}");
    drop(stream);
    // Chunked (no length): refused once the body outgrows the disk.
    let mut stream = TcpStream::connect(node.address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .unwrap();
    for piece in big.chunks(1 << 20) {
        if write!(stream, "{:x}\r\n", piece.len()).is_err()
            || stream.write_all(piece).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
    assert!(answer.contains("noSpace"), "{answer}");
    drop(stream);
    wait_for(10, "spool files of a refused upload are removed", || {
        std::fs::read_dir(&spool).unwrap().next().is_none()
    });
    assert!(get(&format!("{}/v1/blobs/{small_id}", node.url)).body == small);

    // Two chunked uploads that each fit the spool alone, not together: the second is told to
    // come back (503 spoolBusy), not that the disk is full; the first goes on. A 9.5 MB blob
    // needs about 42 MB of spool: the first upload, past 8 MiB, has promised 37 MB; the
    // second, at its first 4 MiB, needs 18.5 MB more.
    let chunked_head =
        "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let send_chunk = |stream: &mut TcpStream, data: &[u8]| {
        write!(stream, "{:x}\r\n", data.len())?;
        stream.write_all(data)?;
        stream.write_all(b"\r\n")
    };
    let blob = unique_bytes(9_500_000, 85);
    let mut first = TcpStream::connect(node.address()).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    first.write_all(chunked_head.as_bytes()).unwrap();
    send_chunk(&mut first, &blob[..8_500_000]).unwrap();
    wait_for(10, "the first upload wrote 8 MiB to the spool", || {
        let used: u64 = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        used >= 8 << 20
    });
    let mut second = TcpStream::connect(node.address()).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The node answers before it reads the rest: stop writing when it stops reading.
    second
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    second.write_all(chunked_head.as_bytes()).unwrap();
    let _ = send_chunk(&mut second, &blob[..8_500_000]);
    let answer = read_answer(&mut second);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("spoolBusy"), "{answer}");
    send_chunk(&mut first, &blob[8_500_000..]).unwrap();
    send_chunk(&mut first, b"").unwrap();
    first.write_all(b"\r\n").unwrap();
    let answer = read_answer(&mut first);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Reads one answer (head and a `content-length` body) from a raw connection.
fn read_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= head_end + 4 + length {
                return text;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&answer).into_owned(),
            Ok(read) => answer.extend_from_slice(&buf[..read]),
        }
    }
}

/// A node killed (SIGKILL) in the middle of a big upload shows nothing of it after a restart,
/// and the restart empties the spool.
#[test]
fn a_node_killed_during_a_big_upload_cleans_its_spool_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = start_small_budget(dir.path());
    let mut stream = TcpStream::connect(node.address()).unwrap();
    write!(
        stream,
        "PUT /v1/blobs?epochs=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n"
    )
    .unwrap();
    let part = vec![3u8; 1 << 20];
    for _ in 0..30 {
        stream.write_all(&part).unwrap();
    }
    wait_for(10, "the upload reached the spool", || {
        !spool_files(&data).is_empty()
    });
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop(stream);
    assert!(!spool_files(&data).is_empty(), "the kill left spool files");
    let node = start_small_budget(dir.path());
    assert!(spool_files(&data).is_empty(), "{:?}", spool_files(&data));
    let listing = get(&format!("{}/v1/blobs", node.url)).json();
    assert_eq!(listing["blobs"].as_array().unwrap().len(), 0, "{listing}");
}

/// A proxy to `target` that cuts its first connection after `cut` bytes of answer and relays
/// later ones whole; returns its address.
fn cutting_proxy(target: String, cut: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            let target = target.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(&target) else {
                    return;
                };
                let (mut client_in, mut server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut client_in, &mut server_out));
                let (mut server_in, mut client_out) = (server, client);
                if i == 0 {
                    let mut left = cut;
                    let mut buf = vec![0u8; 64 << 10];
                    while left > 0 {
                        let Ok(read) = server_in.read(&mut buf[..left.min(64 << 10)]) else {
                            break;
                        };
                        if read == 0 || client_out.write_all(&buf[..read]).is_err() {
                            break;
                        }
                        left -= read;
                    }
                    let _ = client_out.shutdown(std::net::Shutdown::Both);
                    let _ = server_in.shutdown(std::net::Shutdown::Both);
                } else {
                    let _ = std::io::copy(&mut server_in, &mut client_out);
                }
            });
        }
    });
    address
}

/// `floe read` of a big blob whose connection breaks midway resumes with a range request and
/// writes the whole blob.
#[test]
fn floe_read_resumes_a_broken_download() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_small_budget(dir.path());
    let blob = unique_bytes(40_000_000, 82);
    let id = publish(&node, &blob, 2);
    let proxy = cutting_proxy(node.address(), 12_000_000);
    let out = dir.path().join("back.bin");
    let run = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["read", &id, "--node", &format!("http://{proxy}"), "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(std::fs::read(&out).unwrap() == blob);
}

/// A streamed read of a big blob whose systematic sliver is corrupt on disk recovers that row
/// from recovery symbols (this node's secondary slivers) instead of failing or decoding the
/// whole blob in memory.
#[test]
fn a_streamed_read_recovers_a_corrupt_systematic_sliver() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_small_budget(dir.path());
    let blob = unique_bytes(60_000_000, 83);
    let id = publish(&node, &blob, 2);
    let layout = EncodingConfig::new(100)
        .unwrap()
        .layout(blob.len() as u64)
        .unwrap();
    let row = layout.primary_sliver_bytes();
    // Flip a byte of primary sliver 5 (row 5 of the blob) in its segment file.
    let needle = &blob[5 * row + 1000..5 * row + 1064];
    let core_dir = dir.path().join("data").join("core-0-of-1");
    let mut flipped = false;
    for entry in std::fs::read_dir(&core_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        // Every copy (reclaiming may have left an older, dead one).
        let found: Vec<usize> = bytes
            .windows(64)
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for at in found {
            std::os::unix::fs::FileExt::write_all_at(
                &file,
                &[bytes[at + 7] ^ 0x40],
                (at + 7) as u64,
            )
            .unwrap();
            flipped = true;
        }
        file.sync_all().unwrap();
    }
    assert!(flipped, "the sliver is in a segment");
    node.stop();
    // Restarted: the first read of each record checks its checksum again.
    let node = start_small_budget(dir.path());
    let url = format!("{}/v1/blobs/{id}", node.url);
    // Over 8 MiB (a quarter of the budget): streamed.
    let (start, end) = (4 * row + 10, 10 * row + 10);
    let answer = call(
        "GET",
        &url,
        None,
        &[("range", &format!("bytes={start}-{}", end - 1))],
    );
    assert_eq!(
        answer.status,
        206,
        "{}",
        String::from_utf8_lossy(&answer.body[..200.min(answer.body.len())])
    );
    assert!(
        answer.body == blob[start..end],
        "the recovered row is the blob's"
    );
    assert!(
        metric(&node, "floe_recovered_reads_total") >= 1.0,
        "corrupt {} recovered {}",
        metric(&node, "floe_corrupt_records_total"),
        metric(&node, "floe_recovered_reads_total")
    );
    assert!(get(&url).body == blob, "and the whole blob");
}

/// A connection whose request the node is still working on is never closed as idle: with a
/// one-second idle timeout, a PUT whose encoding and storing take longer than that (no bytes
/// move meanwhile) still gets its answer; an idle connection is closed after the timeout.
#[test]
fn a_connection_waiting_for_its_answer_is_not_closed_as_idle() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_configured(
        dir.path(),
        "cores = 1\n[limits]\nidle_timeout_seconds = 1\n",
        &[],
    );
    // At n = 1000 a 100 MB blob takes the node seconds to encode and store.
    let blob = unique_bytes(100_000_000, 84);
    let started = Instant::now();
    let id = publish(&node, &blob, 1);
    assert!(
        started.elapsed() > Duration::from_millis(1500),
        "the request was not slow enough to test anything ({:?})",
        started.elapsed()
    );
    assert!(!id.is_empty());
    // An idle connection goes after about a second.
    let mut idle = TcpStream::connect(node.address()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let started = Instant::now();
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "closed without an answer"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A mapped page whose disk read fails raises SIGBUS. Regression (issue 18): it ended the
/// process. Now the first read of a record (its checksum) runs guarded: the fault becomes a
/// read error, the record counts as lost and the read decodes from the other slivers. The
/// fault is made by cutting a segment file short under its mapping, which raises the same
/// SIGBUS a failed device read does.
#[test]
fn a_mapped_page_the_disk_cannot_read_fails_the_record_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_small_budget(dir.path());
    let blob = unique_bytes(6_000_000, 91);
    let id = publish(&node, &blob, 2);
    node.stop();
    let node = start_small_budget(dir.path());
    let encoded = encode(&EncodingConfig::new(100).unwrap(), &blob).unwrap();
    let row = encoded.layout().primary_sliver_bytes();
    let k_p = encoded.layout().config.n_primary_source();
    // Where each primary sliver lies in its segment file: 64 bytes across its first two
    // symbols (a secondary sliver holds one symbol of each row, so no run within a symbol
    // tells them apart).
    let symbol = encoded.layout().symbol_bytes;
    let core_dir = dir.path().join("data").join("core-0-of-1");
    let mut primaries = Vec::new();
    for entry in std::fs::read_dir(&core_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for index in 0..100 {
            let needle = &encoded.primary_sliver(index)[symbol - 32..symbol + 32];
            if let Some(at) = bytes.windows(64).position(|w| w == needle) {
                primaries.push((path.clone(), at, index));
            }
        }
    }
    assert_eq!(primaries.len(), 100, "every primary sliver is in a segment");
    primaries.sort();
    assert!(
        primaries.iter().all(|(p, _, _)| *p == primaries[0].0),
        "one segment"
    );
    // The cut: at a systematic row (a row of the blob itself) with enough primary slivers
    // before it to decode from.
    let path = primaries[0].0.clone();
    let first = primaries.iter().find(|p| p.2 < k_p).unwrap().2;
    let (_, cut_at, lost) = primaries[k_p + 6..]
        .iter()
        .find(|p| p.2 < k_p)
        .cloned()
        .expect("a systematic row late in the segment (the blob's rotation puts one there)");
    let url = format!("{}/v1/blobs/{id}", node.url);
    let range = |r: usize| {
        let (start, end) = (r * row, (r + 1) * row);
        let answer = call(
            "GET",
            &url,
            None,
            &[("range", &format!("bytes={start}-{}", end - 1))],
        );
        (answer, start, end)
    };
    // A first read maps the segment; then its last part is cut from under the mapping.
    let (answer, start, end) = range(first);
    assert!(answer.status == 206 && answer.body == blob[start..end]);
    let page = 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len((cut_at / page * page) as u64)
        .unwrap();
    let (answer, start, end) = range(lost);
    assert_eq!(
        answer.status,
        206,
        "{}",
        String::from_utf8_lossy(&answer.body[..300.min(answer.body.len())])
    );
    assert!(answer.body == blob[start..end], "decoded from the others");
    assert!(metric(&node, "floe_mapped_read_faults_total") >= 1.0);
    assert!(metric(&node, "floe_disk_io_errors_total") >= 1.0);
    assert_eq!(get(&format!("{}/v1/health", node.url)).status, 200);
}

/// Data directories that fail under a running node are retired and their shards healed onto
/// the other disks, from the node's own other shards:
/// - one removed (moved away) or remounted read-only is retired within a second or two;
/// - one whose disk fails (ext4 shut down: EIO) is retired at its first failed write, and that
///   write, like every later one, lands on the other disks;
/// - `/v1/health` and `/metrics` say which and why; the node is degraded until they are
///   replaced, and every blob reads back throughout;
/// - after a restart with them still failed they stay retired (nothing healed again); once
///   replaced by empty file systems their shards move back, are healed there, and the node is
///   healthy again.
///
/// Regression (issue 18): a failed disk failed every later write (metadata goes to every
/// disk), and its shards were never healed onto the healthy disks.
#[test]
fn failed_data_directories_are_retired_and_their_shards_heal_onto_the_other_disks() {
    let dir = tempfile::tempdir().unwrap();
    // Four disks: shards 0, 4, 8 on `a`; 1, 5, 9 on `b`; 2, 6 on `c`; 3, 7 on `d`. Two fail
    // in turn, each losing at most f = 3 shards' slivers before they are healed.
    let Some(mut disks) = SmallDisk::mount_loops(dir.path(), &["a", "b", "c", "d"], 16) else {
        return;
    };
    let data: Vec<std::path::PathBuf> = disks.iter().map(|d| d.path.join("data")).collect();
    let (a, b, c, d) = (&data[0], &data[1], &data[2], &data[3]);
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dirs = {:?}\nn_shards = 10\ncores = 2\npin_cores = false\n\
             sync_interval_seconds = 1\n",
            data.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
        ),
    )
    .unwrap();
    let run = || start(&["--config", config.to_str().unwrap()], &[]);
    let health = |node: &NodeProcess| get(&format!("{}/v1/health", node.url)).json();
    let disk_of = |h: &serde_json::Value, d: &std::path::Path| {
        h["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["dir"] == d.display().to_string())
            .cloned()
            .unwrap()
    };
    let dir_metric = |node: &NodeProcess, name: &str, d: &std::path::Path| {
        metric(node, &format!("floe_{name}{{dir=\"{}\"}}", d.display()))
    };
    let reads_back = |node: &NodeProcess, blobs: &[(String, Vec<u8>)]| {
        for (id, blob) in blobs {
            let answer = get(&format!("{}/v1/blobs/{id}", node.url));
            assert!(
                answer.body == *blob,
                "{id}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
            );
        }
    };
    // Every sliver of every blob is held (after healing, within a minute).
    let all_held = |node: &NodeProcess, blobs: &[(String, Vec<u8>)]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (id, _) in blobs {
            loop {
                let status = get(&format!("{}/v1/blobs/{id}/status", node.url)).json();
                let held = |kind: &str| status[kind].as_array().map_or(0, Vec::len);
                if held("primaryPairs") == 10 && held("secondaryPairs") == 10 {
                    break;
                }
                assert!(Instant::now() < deadline, "{id} not healed: {status}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let until_retired = |node: &NodeProcess, d: &std::path::Path| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let h = health(node);
            if disk_of(&h, d)["problem"] == "retired" {
                return h;
            }
            assert!(Instant::now() < deadline, "not retired: {h}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    let mut node = run();
    let mut blobs: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            let blob = unique_bytes(50_000, 200 + i);
            (publish(&node, &blob, 2), blob)
        })
        .collect();
    assert_eq!(health(&node)["status"], "ok");
    all_held(&node, &blobs);

    // `c` removed (here: moved away) under the running node.
    let moved = disks[2].path.join("gone");
    std::fs::rename(c, &moved).unwrap();
    let h = until_retired(&node, c);
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(
        h["shardsHealthy"], 10,
        "its shards live on the others now: {h}"
    );
    reads_back(&node, &blobs);
    all_held(&node, &blobs);
    std::fs::rename(&moved, c).unwrap();
    assert_eq!(
        disk_of(&health(&node), c)["problem"],
        "retired",
        "back, but not trusted"
    );

    // The disk under `a` fails: ext4's shutdown ioctl (what the file system does on a fatal
    // device error) makes every read and write there fail with EIO. The page cache is dropped,
    // so that reads go to the failed disk too.
    shut_down_ext4(&disks[0].path);
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    reads_back(&node, &blobs);
    for i in 0..2 {
        let blob = unique_bytes(50_000, 300 + i);
        blobs.push((publish(&node, &blob, 2), blob));
    }
    let h = until_retired(&node, a);
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(disk_of(&h, b)["healthy"], true, "{h}");
    assert_eq!(disk_of(&h, d)["healthy"], true, "{h}");
    assert_eq!(
        h["shardsHealthy"], 10,
        "every shard lives on b and d now: {h}"
    );
    assert_eq!(dir_metric(&node, "disk_retired", a), 1.0);
    assert_eq!(dir_metric(&node, "disk_retired", c), 1.0);
    assert_eq!(dir_metric(&node, "disk_healthy", a), 0.0);
    assert_eq!(dir_metric(&node, "disk_healthy", b), 1.0);
    all_held(&node, &blobs);
    reads_back(&node, &blobs);

    // Restarted with both still failed (`a` dead, `c` holding its old records): they stay
    // retired, and nothing needs healing.
    node.stop();
    let mut node = run();
    let h = health(&node);
    assert_eq!(disk_of(&h, a)["problem"], "retired", "{h}");
    assert_eq!(disk_of(&h, c)["problem"], "retired", "{h}");
    assert_eq!(h["shardsHealthy"], 10, "{h}");
    reads_back(&node, &blobs);
    all_held(&node, &blobs);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(health(&node)["sync"]["healedSlivers"], 0);
    node.stop();

    // Replaced: an empty file system at `a`, `c` emptied. Their shards move back and are
    // healed there.
    drop(disks.remove(0));
    disks.insert(
        0,
        SmallDisk::mount_loop(&dir.path().join("a"), 16).expect("mounted again"),
    );
    std::fs::remove_dir_all(c).unwrap();
    let node = run();
    all_held(&node, &blobs);
    let h = health(&node);
    assert_eq!(h["status"], "ok", "{h}");
    assert!(h["sync"]["healedSlivers"].as_u64().unwrap() > 0, "{h}");
    assert_eq!(dir_metric(&node, "disk_retired", a), 0.0);
    reads_back(&node, &blobs);

    // `d` turned read-only (as ext4 does after errors with `errors=remount-ro`; a plain
    // remount is refused while files are open for writing, so a read-only bind mount over it).
    for args in [&["--bind"][..], &["-o", "remount,bind,ro"][..]] {
        let mounted = Command::new("mount")
            .args(args)
            .args([&disks[3].path, &disks[3].path])
            .status()
            .unwrap();
        assert!(mounted.success(), "mount {args:?}");
    }
    let h = until_retired(&node, d);
    assert_eq!(h["status"], "degraded", "{h}");
    all_held(&node, &blobs);
    reads_back(&node, &blobs);
    drop(node);
}

/// A panic in a background task (here a streamed read's producer, made to panic by a
/// failpoint) is caught, logged and counted; the core goes on serving. Regression (issue 18):
/// it unwound through the core's executor and took the core, with every connection and
/// shard it served, down.
#[test]
fn a_background_task_that_panics_takes_down_only_its_own_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "n_shards = 100\ncores = 1\n[limits]\nbuffer_bytes_per_core = 33554432\n\
         body_bytes_max = 16777216\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let node = start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("FLOE_FAILPOINTS", "stream_producer_panics")],
    );
    let small = unique_bytes(100_000, 61);
    let small_id = publish(&node, &small, 2);
    // Over a quarter of the 32 MiB budget: streamed, so its producer runs (and panics).
    let big = unique_bytes(12_000_000, 62);
    let big_id = publish(&node, &big, 2);
    let mut stream = TcpStream::connect(node.url.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET /v1/blobs/{big_id} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(
        got.len() < big.len(),
        "the failpoint cut the stream ({} bytes came)",
        got.len()
    );
    // The one core still serves: health, small blobs, and the next request alike.
    assert_eq!(get(&format!("{}/v1/health", node.url)).status, 200);
    assert!(get(&format!("{}/v1/blobs/{small_id}", node.url)).body == small);
    assert_eq!(metric(&node, "floe_task_panics_total"), 1.0);
    let range = call(
        "GET",
        &format!("{}/v1/blobs/{big_id}", node.url),
        None,
        &[("range", "bytes=0-999")],
    );
    assert_eq!(range.status, 206);
    assert!(range.body == big[..1000]);
}
