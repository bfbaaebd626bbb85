//! End-to-end tests of a committee: several real `floe node` processes on free loopback ports,
//! each with its own data directory, driven over HTTP (and by curl, Python `requests` and
//! `fsspec`) like users drive them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floe_codec::{encode, BlobId, EncodingConfig};

mod common;
use common::{
    blob_bytes, get, get_with, json, metric, read_proxied_request, run, store, store_new, Etcd,
};

/// A node of the test committee.
struct Node {
    name: String,
    /// Where it listens (the committee may name a proxy in front of it instead).
    port: u16,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// How the nodes of a test committee learn of blobs, deletions and lifetimes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A committee file; each node lists its peers' blobs every sync round.
    Listing,
    /// The committee and the blob registry in a real etcd started for the test; nodes watch it.
    Registry,
}

/// A committee of node processes, stopped when dropped.
struct Cluster {
    /// The etcd of [`Mode::Registry`] (dropped after the nodes).
    _etcd: Option<Etcd>,
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    n_shards: u16,
    /// Shards of each node.
    shards: Vec<Vec<u16>>,
    /// `FLOE_WRITE_TOKEN` of every node, if any.
    token: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// `nodes` nodes sharing `n_shards` in contiguous ranges; `address_of(i, port)` is what the
    /// committee file lists for node `i` (its port, or a proxy's).
    fn start_with(
        nodes: usize,
        n_shards: u16,
        address_of: impl Fn(usize, u16) -> String,
    ) -> Cluster {
        Self::start_opts(nodes, n_shards, address_of, None)
    }

    /// [`Cluster::start_with`], every node with write token `token`.
    fn start_opts(
        nodes: usize,
        n_shards: u16,
        address_of: impl Fn(usize, u16) -> String,
        token: Option<&str>,
    ) -> Cluster {
        Self::start_full(nodes, n_shards, address_of, token, "")
    }

    /// [`Cluster::start`] with `extra` lines (TOML) replacing keys in every node's config.
    fn start_configured(nodes: usize, n_shards: u16, extra: &str) -> Cluster {
        let address_of = |_, port| format!("127.0.0.1:{port}");
        Self::start_full(nodes, n_shards, address_of, None, extra)
    }

    fn start_full(
        nodes: usize,
        n_shards: u16,
        address_of: impl Fn(usize, u16) -> String,
        token: Option<&str>,
        extra: &str,
    ) -> Cluster {
        Self::start_in(Mode::Listing, nodes, n_shards, address_of, token, extra)
            .expect("a committee file needs nothing else")
    }

    /// A cluster in `mode`; `None` (the test skipped) where etcd is not installed.
    fn start_in(
        mode: Mode,
        nodes: usize,
        n_shards: u16,
        address_of: impl Fn(usize, u16) -> String,
        token: Option<&str>,
        extra: &str,
    ) -> Option<Cluster> {
        let etcd = match mode {
            Mode::Listing => None,
            Mode::Registry => Some(Etcd::start()?),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut committee = format!("n_shards = {n_shards}\n");
        let mut shards = Vec::new();
        let mut first = 0u16;
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        for (i, port) in ports.iter().enumerate() {
            let count = n_shards / nodes as u16 + u16::from((i as u16) < n_shards % nodes as u16);
            shards.push((first..first + count).collect::<Vec<u16>>());
            committee.push_str(&format!(
                "[[nodes]]\nname = \"n{i}\"\naddress = \"{}\"\nshards = [\"{first}-{}\"]\n",
                address_of(i, *port),
                first + count - 1
            ));
            first += count;
        }
        let committee_path = dir.path().join("committee.toml");
        std::fs::write(&committee_path, committee).unwrap();
        let source = match &etcd {
            None => format!("committee = {:?}", committee_path.display().to_string()),
            Some(etcd) => {
                let out = Command::new(env!("CARGO_BIN_EXE_floe"))
                    .args(["committee", "init"])
                    .arg(&committee_path)
                    .args(["--etcd", &etcd.url])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                format!(
                    "etcd_endpoints = [{:?}]\ncluster_secret = \"test cluster\"",
                    etcd.url
                )
            }
        };
        let mut cluster = Cluster {
            _etcd: etcd,
            nodes: Vec::new(),
            n_shards,
            shards,
            _dir: dir,
            token: token.map(String::from),
        };
        for (i, port) in ports.into_iter().enumerate() {
            let home = cluster._dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&home).unwrap();
            let config = home.join("node.toml");
            let data = home.join("data");
            let mut lines: Vec<String> = [
                format!("name = \"n{i}\""),
                format!("listen = \"127.0.0.1:{port}\""),
                format!("data_dirs = [{:?}]", data.display().to_string()),
                source.clone(),
                "cores = 1".into(),
                "pin_cores = false".into(),
                "sync_interval_seconds = 1".into(),
                "peer_timeout_seconds = 10".into(),
                "shutdown_grace_seconds = 2".into(),
            ]
            .into();
            for line in extra.lines().filter(|l| !l.trim().is_empty()) {
                let key = line.split('=').next().unwrap().trim();
                lines.retain(|l| l.split('=').next().unwrap().trim() != key);
                lines.push(line.to_string());
            }
            std::fs::write(&config, lines.join("\n") + "\n").unwrap();
            cluster.nodes.push(Node {
                name: format!("n{i}"),
                port,
                config,
                data,
                log: home.join("node.log"),
                child: None,
            });
        }
        for i in 0..nodes {
            cluster.spawn(i);
        }
        for i in 0..nodes {
            cluster.wait_up(i);
        }
        Some(cluster)
    }

    fn start(nodes: usize, n_shards: u16) -> Cluster {
        Self::start_with(nodes, n_shards, |_, port| format!("127.0.0.1:{port}"))
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_floe"));
        if let Some(token) = &self.token {
            command.env("FLOE_WRITE_TOKEN", token);
        }
        let child = command
            .arg("node")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    fn wait_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&self.url(i), "/v1/health").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{} did not come up: {}",
                self.nodes[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// SIGKILL: the node vanishes mid-whatever.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            Command::new("kill")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "{}: {status}", self.log(i));
        }
    }

    fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_up(i);
    }

    fn shard_count(&self) -> usize {
        self.n_shards.into()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn curl(args: &[&str]) -> (String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-D", "/dev/stderr"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

#[test]
fn blobs_of_every_size_round_trip_through_any_node() {
    // n = 100: a blob of 100 MiB needs k_p * k_s * 65534 bytes of room, which n = 10 lacks.
    let mut cluster = Cluster::start(4, 100);
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 1 << 20, 100 << 20];
    let mut ids = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let blob = blob_bytes(size, i as u64 + 1);
        let via = cluster.url(i % 4);
        let id = if size == 100 << 20 {
            // The big one through the CLI, as users store files.
            let file = dir.path().join("big");
            std::fs::write(&file, &blob).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_floe"))
                .args([
                    "store",
                    file.to_str().unwrap(),
                    "--node",
                    &via,
                    "--epochs",
                    "3",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        } else {
            let (status, answer) = store(&via, &blob, 2);
            assert_eq!(status, 200, "{answer}");
            let created = &answer["newlyCreated"];
            assert_eq!(created["size"], size as u64);
            assert_eq!(created["encodingType"], "RS2");
            // The answer comes at the write quorum; the rest may still be under way.
            assert!(
                created["shardsConfirmed"].as_u64().unwrap() >= 67,
                "{answer}"
            );
            created["blobId"].as_str().unwrap().to_string()
        };
        // The same ID Walrus gives these bytes at n = 100.
        let expected = encode(&EncodingConfig::new(100).unwrap(), &blob).unwrap();
        assert_eq!(id, expected.blob_id().to_string(), "size {size}");
        // Read back through another node, whole.
        let (status, body) = get(&cluster.url((i + 1) % 4), &format!("/v1/blobs/{id}"));
        assert_eq!(status, 200, "size {size}");
        assert!(body == blob, "size {size}: the bytes differ");
        ids.push((id, blob));
    }
    // Storing again answers alreadyCertified and sends nothing.
    let (status, answer) = store(&cluster.url(3), &ids[2].1, 1);
    assert_eq!(status, 200);
    assert_eq!(
        answer["alreadyCertified"]["blobId"],
        ids[2].0.as_str(),
        "{answer}"
    );
    // Every node keeps the metadata, and each pair is on the node of its shard.
    let (id, blob) = &ids[2];
    for i in 0..4 {
        let status = json(&get(&cluster.url(i), &format!("/v1/blobs/{id}/status")).1);
        assert_eq!(status["known"], true);
        assert_eq!(
            status["primaryPairs"].as_array().unwrap().len(),
            cluster.shards[i].len()
        );
    }

    // curl: whole, ranges, HEAD, conditional, out of range.
    let url = format!("{}/v1/blobs/{id}", cluster.url(2));
    let (head, body) = curl(&[&url]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("etag: \"{id}\"")), "{head}");
    assert!(head.contains("cache-control: public, max-age=31536000, immutable"));
    assert!(body == *blob);
    let size = blob.len();
    for (range, want) in [
        ("bytes=0-0".to_string(), &blob[..1]),
        (
            format!("bytes={}-{}", size - 1, size - 1),
            &blob[size - 1..],
        ),
        ("bytes=-777".to_string(), &blob[size - 777..]),
        ("bytes=300000-".to_string(), &blob[300_000..]),
    ] {
        let (head, body) = curl(&["-H", &format!("Range: {range}"), &url]);
        assert!(head.starts_with("HTTP/1.1 206"), "{range}: {head}");
        assert!(body == want, "{range}");
    }
    let (head, _) = curl(&["-H", &format!("Range: bytes={size}-"), &url]);
    assert!(head.starts_with("HTTP/1.1 416"), "{head}");
    assert!(
        head.contains(&format!("content-range: bytes */{size}")),
        "{head}"
    );
    let (head, body) = curl(&["-I", &url]);
    assert!(head.contains(&format!("content-length: {size}")), "{head}");
    // -I prints the head on standard output too: nothing follows it.
    assert_eq!(String::from_utf8_lossy(&body), head);
    let (head, _) = curl(&["-H", &format!("If-None-Match: \"{id}\""), &url]);
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    let (head, _) = curl(&[&format!("{}/v1/blobs/{}", cluster.url(0), BlobId([7; 32]))]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Python clients: requests and fsspec (seek and read).
    python_clients(&url, blob);
    // The 100 MiB blob by ranges through yet another node.
    let (id, big) = &ids[3];
    let (status, part) = get_with(
        &cluster.url(0),
        &format!("/v1/blobs/{id}"),
        &[("Range", "bytes=55555555-66666666")],
    );
    assert_eq!(status, 206);
    assert!(part == big[55_555_555..=66_666_666]);
    cluster.stop(0);
}

/// Runs cli/tests/clients.py against `url`. Skipped (with a note) where Python's `requests`
/// or `fsspec` are missing, unless FLOE_REQUIRE_PYTHON_CLIENTS is set (CI sets it).
fn python_clients(url: &str, blob: &[u8]) {
    let have = Command::new("python3")
        .args(["-c", "import requests, fsspec, aiohttp"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
            "python3 with requests, fsspec and aiohttp is required (pip install requests fsspec aiohttp)"
        );
        eprintln!(
            "note: python3 requests/fsspec/aiohttp missing; the Python client check is skipped"
        );
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), blob).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(url)
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reads_and_writes_survive_f_lost_nodes_and_fail_clearly_beyond() {
    // n = 10, f = 3: nodes hold 3, 3, 2 and 2 shards. A write needs 7, a read 4 primary slivers.
    let mut cluster = Cluster::start(4, 10);
    let before = blob_bytes(500_000, 11);
    let before_id = store_new(&cluster.url(0), &before, 1);

    cluster.kill(1); // 3 shards = f
    let during = blob_bytes(400_000, 12);
    let (status, answer) = store(&cluster.url(2), &during, 1);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["newlyCreated"]["shardsConfirmed"], 7);
    // Answered at the quorum: the dead node failed already, or is still being retried.
    let failed = answer["newlyCreated"]["failedNodes"][0].as_str();
    let pending = answer["newlyCreated"]["pendingNodes"][0].as_str();
    assert!(
        failed.is_some_and(|f| f.starts_with("n1")) || pending == Some("n1"),
        "{answer}"
    );
    let during_id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();
    for (id, blob) in [(&before_id, &before), (&during_id, &during)] {
        // Through node 2, so that node 3's cache stays empty for what follows.
        let (status, body) = get(&cluster.url(2), &format!("/v1/blobs/{id}"));
        assert_eq!(status, 200);
        assert!(body == *blob);
    }

    cluster.kill(0); // 6 shards down: writes fail, naming who
    let (status, answer) = store(&cluster.url(3), &blob_bytes(1000, 13), 1);
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("only 4 of 10 shards"), "{message}");
    assert!(
        message.contains("n0") && message.contains("n1"),
        "{message}"
    );
    // 4 shards left: exactly k_p primary slivers, so reads still decode.
    let (status, body) = get_with(
        &cluster.url(3),
        &format!("/v1/blobs/{before_id}"),
        &[("Range", "bytes=1000-399999")],
    );
    assert_eq!(status, 206);
    assert!(body == before[1000..400_000]);

    cluster.kill(2); // 2 shards left: too few to read
                     // A range in a systematic row node 3 does not hold itself.
    let id: BlobId = before_id.parse().unwrap();
    let layout = *encode(&EncodingConfig::new(10).unwrap(), &before)
        .unwrap()
        .layout();
    let row = (0..4)
        .find(|&r| !cluster.shards[3].contains(&(id.shard_for_pair(r, 10) as u16)))
        .unwrap();
    let start = row * layout.primary_sliver_bytes();
    let (status, body) = get_with(
        &cluster.url(3),
        &format!("/v1/blobs/{before_id}"),
        &[("Range", &format!("bytes={start}-{}", start + 99))],
    );
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let answer = json(&body);
    assert_eq!(answer["error"]["code"], "notEnoughSlivers", "{answer}");
}

/// A proxy in front of a node that passes requests on and flips a byte in every answer that
/// carries slivers or recovery symbols: a peer that lies. One request per connection.
fn lying_proxy(listener: TcpListener, target: u16) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                let _ = relay_once(&mut client, target);
            });
        }
    });
}

fn relay_once(client: &mut TcpStream, target: u16) -> std::io::Result<()> {
    let Some(request) = read_proxied_request(client)? else {
        return Ok(());
    };
    let lie = request.lower.contains("/slivers") || request.lower.contains("recoverysymbols");
    let mut node = TcpStream::connect(("127.0.0.1", target))?;
    node.write_all(request.head.as_bytes())?;
    node.write_all(&request.body)?;
    let mut response = Vec::new();
    node.read_to_end(&mut response)?;
    if lie {
        if let Some(start) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            // Flip a byte well inside the body (past the batch and sliver headers).
            let at = start + 4 + (response.len() - start - 4) / 2;
            if at < response.len() {
                response[at] ^= 0x55;
            }
        }
    }
    client.write_all(&response)
}

#[test]
fn a_node_that_returns_corrupted_slivers_is_detected_skipped_and_reported() {
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    // Node 0 is listed at the proxy's address: every other node reaches it through the lie.
    let mut cluster = Cluster::start_with(4, 10, |i, port| {
        format!("127.0.0.1:{}", if i == 0 { proxy_port } else { port })
    });
    lying_proxy(proxy, cluster.nodes[0].port);
    let config = EncodingConfig::new(10).unwrap();
    let k_p = config.n_primary_source();
    // Blobs some of whose systematic slivers node 0 holds, so that a reader must ask it: a
    // small one (its slivers verified on the reading core) and a large one (verified on the
    // blocking pool, over every core).
    let mut last = None;
    for (round, size) in [300_000, 1_500_000].into_iter().enumerate() {
        let (blob, id) = (0..)
            .map(|seed| {
                let blob = blob_bytes(size, 100 + seed);
                let id = *encode(&config, &blob).unwrap().blob_id();
                (blob, id)
            })
            .find(|(_, id)| {
                (0..k_p).any(|row| cluster.shards[0].contains(&(id.shard_for_pair(row, 10) as u16)))
            })
            .unwrap();
        let (status, answer) = store(&cluster.url(1), &blob, 1);
        assert_eq!(status, 200, "{answer}");
        let (status, body) = get(&cluster.url(3), &format!("/v1/blobs/{id}"));
        assert_eq!(status, 200);
        assert!(
            body == blob,
            "the reader got the wrong bytes ({size} bytes)"
        );
        let faults = metric(
            &cluster.url(3),
            "floe_peer_faults_total{peer=\"n0\",kind=\"bad_sliver\"}",
        );
        assert!(
            faults > round as f64,
            "the lie was not counted ({size} bytes)"
        );
        last = Some((blob, id));
    }
    let (blob, id) = last.unwrap();
    assert!(
        cluster.log(3).contains("fails verification"),
        "the lie was not logged"
    );
    // Healing through the liar: wipe node 3, its slivers come back verified all the same.
    cluster.stop(3);
    std::fs::remove_dir_all(&cluster.nodes[3].data).unwrap();
    cluster.restart(3);
    wait_healed(&cluster, 3, &id);
    let expected = encode(&config, &blob).unwrap();
    check_slivers(&cluster, 3, &id, &expected);
}

/// Waits until node `i` holds both slivers of each of its shards for `id`.
fn wait_healed(cluster: &Cluster, i: usize, id: &BlobId) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&cluster.url(i), &format!("/v1/blobs/{id}/status"));
        if status == 200 {
            let status = json(&body);
            let count = |key: &str| status[key].as_array().map_or(0, Vec::len);
            let want = cluster.shards[i].len();
            if count("primaryPairs") == want && count("secondaryPairs") == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {i} did not heal blob {id}: {}",
            cluster.log(i)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Node `i`'s slivers of `id` are exactly the encoder's.
fn check_slivers(cluster: &Cluster, i: usize, id: &BlobId, expected: &floe_codec::EncodedBlob) {
    let n = cluster.shard_count();
    for &shard in &cluster.shards[i] {
        let pair = id.pair_for_shard(shard.into(), n);
        for (kind, index) in [("primary", pair), ("secondary", n - 1 - pair)] {
            let (status, body) = get(
                &cluster.url(i),
                &format!("/v1/blobs/{id}/slivers/{pair}/{kind}"),
            );
            assert_eq!(status, 200, "{kind} sliver of pair {pair}");
            let kind = if kind == "primary" {
                floe_codec::SliverKind::Primary
            } else {
                floe_codec::SliverKind::Secondary
            };
            let sliver = floe_codec::decode_sliver(kind, &body).unwrap();
            assert!(
                sliver.data == expected.sliver(kind, index),
                "{kind} sliver {index}"
            );
        }
    }
}

#[test]
fn a_wiped_node_rebuilds_its_slivers_from_peers_with_about_one_sliver_of_traffic_each() {
    wiped_node_heals(Mode::Listing);
}

/// The same with the registry in place of listing: the wiped node lost its registry revision
/// too, reads the whole registry, and heals.
#[test]
fn a_wiped_node_on_etcd_reads_the_registry_and_rebuilds_its_slivers() {
    wiped_node_heals(Mode::Registry);
}

fn wiped_node_heals(mode: Mode) {
    let address = |_, port| format!("127.0.0.1:{port}");
    let Some(mut cluster) = Cluster::start_in(mode, 4, 10, address, None, "") else {
        return;
    };
    let config = EncodingConfig::new(10).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3).map(|s| blob_bytes(1_500_000, 200 + s)).collect();
    let mut ids = Vec::new();
    for blob in &blobs {
        ids.push(
            store_new(&cluster.url(0), blob, 2)
                .parse::<BlobId>()
                .unwrap(),
        );
    }
    cluster.stop(1);
    std::fs::remove_dir_all(&cluster.nodes[1].data).unwrap();
    cluster.restart(1);
    for id in &ids {
        wait_healed(&cluster, 1, id);
    }
    let mut rebuilt_expected = 0usize;
    for (id, blob) in ids.iter().zip(&blobs) {
        let encoded = encode(&config, blob).unwrap();
        check_slivers(&cluster, 1, id, &encoded);
        let layout = encoded.layout();
        rebuilt_expected += cluster.shards[1].len()
            * (layout.primary_sliver_bytes() + layout.secondary_sliver_bytes());
    }
    let url = cluster.url(1);
    let rebuilt = metric(&url, "floe_heal_rebuilt_bytes_total");
    let fetched = metric(&url, "floe_heal_fetched_bytes_total");
    assert_eq!(rebuilt as usize, rebuilt_expected);
    // Recovery symbols plus proofs and the metadata it relearned: close to what it rebuilt,
    // never the blobs (3 x 1.5 MB).
    let ratio = fetched / rebuilt;
    eprintln!("healed {rebuilt} bytes of slivers with {fetched} bytes fetched (ratio {ratio:.3})");
    assert!(ratio < 1.1, "fetched {fetched} bytes to rebuild {rebuilt}");
    // The counts of the next sync round.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = json(&get(&url, "/v1/health").1);
        if health["sync"]["blobsKnown"] == 3 {
            assert_eq!(health["sync"]["missingSlivers"], 0, "{health}");
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node of a committee whose data directory's disk fails retires it; its shards move to
/// the node's other disk and are rebuilt there from peers' recovery symbols (about one sliver
/// of traffic per sliver, as for a wiped node), byte for byte the encoder's slivers, while
/// writes through the node go on. Regression (issue 18): a failed disk's shards were never
/// healed onto the node's healthy disks, and every write to the node failed.
#[test]
fn a_failed_disk_of_a_node_heals_onto_its_other_disk_from_peers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disks) = common::SmallDisk::mount_loops(dir.path(), &["a", "b"], 32) else {
        return;
    };
    let mut cluster = Cluster::start(4, 10);
    let config = EncodingConfig::new(10).unwrap();
    let mut blobs: Vec<Vec<u8>> = (0..3).map(|s| blob_bytes(1_500_000, 300 + s)).collect();
    let mut ids: Vec<BlobId> = blobs
        .iter()
        .map(|blob| store_new(&cluster.url(0), blob, 2).parse().unwrap())
        .collect();
    // Node 1 (shards 3, 4 and 5) moves onto two disks: shard 3 on `b`, 4 on `a`, 5 on `b`.
    cluster.stop(1);
    let data: Vec<String> = disks
        .iter()
        .map(|d| d.path.join("data").display().to_string())
        .collect();
    let toml = std::fs::read_to_string(&cluster.nodes[1].config).unwrap();
    let toml: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("data_dirs") {
                format!("data_dirs = {data:?}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&cluster.nodes[1].config, toml).unwrap();
    cluster.restart(1);
    for id in &ids {
        wait_healed(&cluster, 1, id);
    }
    let url = cluster.url(1);
    let rebuilt_before = metric(&url, "floe_heal_rebuilt_bytes_total");
    let fetched_before = metric(&url, "floe_heal_fetched_bytes_total");

    common::shut_down_ext4(&disks[0].path);
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    // A store through the failed node: its commit to `a` fails, and lands on `b`.
    blobs.push(blob_bytes(1_500_000, 310));
    ids.push(store_new(&url, &blobs[3], 2).parse().unwrap());
    let health = json(&get(&url, "/v1/health").1);
    let disk_a = health["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dir"] == data[0])
        .cloned()
        .unwrap();
    assert_eq!(disk_a["problem"], "retired", "{health}");
    assert_eq!(health["shardsHealthy"], 3, "{health}");
    for id in &ids {
        wait_healed(&cluster, 1, id);
    }
    let mut rebuilt_expected = 0usize;
    for (id, blob) in ids.iter().zip(&blobs) {
        let encoded = encode(&config, blob).unwrap();
        check_slivers(&cluster, 1, id, &encoded);
        if *id != ids[3] {
            let layout = encoded.layout();
            rebuilt_expected += layout.primary_sliver_bytes() + layout.secondary_sliver_bytes();
        }
        let (status, body) = get(&url, &format!("/v1/blobs/{id}"));
        assert_eq!(status, 200);
        assert!(body == *blob, "{id} reads back through the node");
    }
    // Shard 4's two slivers of each of the three earlier blobs, from peers.
    let rebuilt = metric(&url, "floe_heal_rebuilt_bytes_total") - rebuilt_before;
    let fetched = metric(&url, "floe_heal_fetched_bytes_total") - fetched_before;
    assert_eq!(rebuilt as usize, rebuilt_expected);
    let ratio = fetched / rebuilt;
    eprintln!("healed {rebuilt} bytes of slivers with {fetched} bytes fetched (ratio {ratio:.3})");
    assert!(ratio < 1.2, "fetched {fetched} bytes to rebuild {rebuilt}");
    cluster.stop(1);
}

#[test]
fn cluster_up_store_read_and_down_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("c");
    let floe = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_floe"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dir_arg = cluster_dir.to_str().unwrap();
    let committee = floe(&[
        "cluster", "up", "--nodes", "3", "--shards", "7", "--dir", dir_arg,
    ]);
    assert_eq!(committee.matches("[[nodes]]").count(), 3, "{committee}");
    let urls: Vec<String> = committee
        .lines()
        .filter_map(|l| l.strip_prefix("address = \""))
        .map(|a| format!("http://{}", a.trim_end_matches('"')))
        .collect();
    let file = dir.path().join("blob");
    let blob = blob_bytes(200_000, 5);
    std::fs::write(&file, &blob).unwrap();
    let id = floe(&[
        "store",
        file.to_str().unwrap(),
        "--node",
        &urls[0],
        "--verify",
    ]);
    let back = dir.path().join("back");
    floe(&[
        "read",
        id.trim(),
        "--node",
        &urls[2],
        "-o",
        back.to_str().unwrap(),
        "--verify",
    ]);
    assert!(std::fs::read(&back).unwrap() == blob);
    // A deletable blob, deleted through another node: no node serves it after.
    std::fs::write(&file, blob_bytes(5000, 6)).unwrap();
    let id = floe(&[
        "store",
        file.to_str().unwrap(),
        "--node",
        &urls[1],
        "--deletable",
    ]);
    floe(&["delete", id.trim(), "--node", &urls[2]]);
    for url in &urls {
        assert_eq!(get(url, &format!("/v1/blobs/{}", id.trim())).0, 404);
    }
    let pids: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(cluster_dir.join(format!("node-{i}/pid"))).unwrap())
        .collect();
    floe(&["cluster", "down", "--dir", dir_arg]);
    for pid in pids {
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "node {pid} still runs"
        );
    }
}

/// A request with an optional bearer token: status and body.
fn send(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    run(request, body)
}

/// Node `i`'s `/status` of `id`.
fn blob_status(cluster: &Cluster, i: usize, id: &BlobId) -> serde_json::Value {
    let (status, body) = get(&cluster.url(i), &format!("/v1/blobs/{id}/status"));
    assert_eq!(status, 200);
    json(&body)
}

#[test]
fn deletable_blobs_are_deleted_on_every_node_and_permanent_ones_never() {
    deletions_converge(Mode::Listing);
}

/// The same with the registry in place of listing: the node that was down learns the deletion
/// from the registry when it returns.
#[test]
fn deletions_converge_through_the_registry() {
    deletions_converge(Mode::Registry);
}

fn deletions_converge(mode: Mode) {
    let token = Some("s3cret");
    let address = |_, port| format!("127.0.0.1:{port}");
    let Some(mut cluster) = Cluster::start_in(mode, 4, 10, address, token, "") else {
        return;
    };
    let urls: Vec<String> = (0..4).map(|i| cluster.url(i)).collect();
    let put = |i: usize, blob: &[u8], query: &str| {
        let url = format!("{}/v1/blobs?epochs=3{query}", urls[i]);
        let (status, body) = send("PUT", &url, token, blob);
        (status, json(&body))
    };
    let id_of = |answer: &serde_json::Value, outcome: &str| -> BlobId {
        answer[outcome]["blobId"].as_str().unwrap().parse().unwrap()
    };
    let a = blob_bytes(1 << 20, 31);
    let b = blob_bytes(300_000, 32);
    let c = blob_bytes(200_000, 33);
    let (status, answer) = put(0, &a, "&deletable=true");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["newlyCreated"]["deletable"], true, "{answer}");
    let id_a = id_of(&answer, "newlyCreated");
    let (status, answer) = put(0, &b, "");
    assert_eq!(status, 200, "{answer}");
    let id_b = id_of(&answer, "newlyCreated");
    // C stored deletable, then permanent: permanent wins, on every node.
    assert_eq!(put(1, &c, "&deletable=true").0, 200);
    let (status, answer) = put(2, &c, "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["newlyCreated"]["deletable"], false, "{answer}");
    let id_c = id_of(&answer, "newlyCreated");
    for i in 0..4 {
        assert_eq!(blob_status(&cluster, i, &id_a)["deletable"], true);
        assert_eq!(blob_status(&cluster, i, &id_c)["deletable"], false);
    }
    // Warm the caches of two nodes: a deletion must reach them too.
    for i in [0, 2] {
        assert!(get(&cluster.url(i), &format!("/v1/blobs/{id_a}")).1 == a);
    }
    cluster.stop(3);
    let delete = |i: usize, id: &BlobId, token: Option<&str>| {
        let (status, body) = send("DELETE", &format!("{}/v1/blobs/{id}", urls[i]), token, b"");
        (status, json(&body))
    };
    assert_eq!(delete(1, &id_a, None).0, 401);
    assert_eq!(delete(1, &id_a, Some("wrong")).0, 401);
    for id in [&id_b, &id_c] {
        let (status, answer) = delete(1, id, token);
        assert_eq!(status, 409, "{answer}");
        assert_eq!(answer["error"]["code"], "notDeletable", "{answer}");
    }
    let (status, answer) = delete(1, &id_a, token);
    assert_eq!(status, 200, "{answer}");
    let names = |key: &str| -> Vec<String> {
        answer["deleted"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let mut deleted = names("nodesDeleted");
    deleted.sort();
    assert_eq!(deleted, ["n0", "n1", "n2"], "{answer}");
    assert!(names("failedNodes")[0].starts_with("n3"), "{answer}");
    for i in 0..3 {
        let (status, body) = get(&cluster.url(i), &format!("/v1/blobs/{id_a}"));
        assert_eq!(status, 404, "node {i}: {}", String::from_utf8_lossy(&body));
        let status = blob_status(&cluster, i, &id_a);
        assert_eq!(status["known"], false, "{status}");
        assert_eq!(status["deleted"], true, "{status}");
        assert_eq!(status["primaryPairs"].as_array().unwrap().len(), 0);
        assert!(get(&cluster.url(i), &format!("/v1/blobs/{id_b}")).1 == b);
    }
    let listed = json(&get(&cluster.url(2), "/v1/blobs").1);
    let entry = listed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["blobId"] == id_a.to_string())
        .cloned()
        .unwrap();
    assert_eq!(entry["deleted"], true, "{listed}");
    // Deleting again is no error; storing it deletable again is refused, clearly.
    assert_eq!(delete(0, &id_a, token).0, 200);
    let (status, answer) = put(0, &a, "&deletable=true");
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "blobDeleted", "{answer}");
    // Node 3 was down: it still holds A's slivers, and learns the deletion through sync.
    cluster.restart(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = blob_status(&cluster, 3, &id_a);
        if status["deleted"] == true && status["primaryPairs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not learn the deletion: {status}; {}",
            cluster.log(3)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&cluster.url(3), &format!("/v1/blobs/{id_a}")).0, 404);
    assert!(metric(&cluster.url(3), "floe_blobs_deleted_total") >= 1.0);
    // A permanent store brings the same bytes back.
    let (status, answer) = put(3, &a, "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(id_of(&answer, "newlyCreated"), id_a);
    for i in 0..4 {
        assert!(
            get(&cluster.url(i), &format!("/v1/blobs/{id_a}")).1 == a,
            "node {i}"
        );
        assert_eq!(blob_status(&cluster, i, &id_a)["deleted"], false);
    }
}

/// A burst of reads of a blob that is not cached yet gathers and decodes it once: the other
/// readers wait for that fill, and every one gets the bytes.
#[test]
fn concurrent_reads_of_an_uncached_blob_fill_the_cache_once() {
    let cluster = Cluster::start(2, 10);
    let blob = blob_bytes(1_500_000, 41);
    let id = store_new(&cluster.url(0), &blob, 2);
    let url = cluster.url(1);
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (url, id) = (url.clone(), id.clone());
            std::thread::spawn(move || get(&url, &format!("/v1/blobs/{id}")))
        })
        .collect();
    for reader in readers {
        let (status, body) = reader.join().unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(body == blob);
    }
    assert_eq!(metric(&url, "floe_blob_cache_fills_total"), 1.0);
    assert_eq!(metric(&url, "floe_blob_cache_hits_total"), 15.0);
}

/// Sends a signal to node `i`'s process.
fn signal(cluster: &Cluster, i: usize, signal: &str) {
    let pid = cluster.nodes[i].child.as_ref().unwrap().id();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A node that hangs (SIGSTOP: it accepts connections and never answers) holding f shards'
/// worth: every store through another node still succeeds within 3 s (the publisher answers at
/// the write quorum), and every uncached read within 1 s (it asks other peers when the hung one
/// is slow). Bounds only a stall can break.
#[test]
fn a_hung_node_holds_up_no_write_and_no_read() {
    let mut cluster = Cluster::start(4, 10);
    assert_eq!(cluster.shards[0].len(), 3, "n0 holds f = 3 shards");
    let before: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            let blob = blob_bytes(150_000 + i * 50_000, 70 + i as u64);
            (store_new(&cluster.url(2), &blob, 5), blob)
        })
        .collect();
    signal(&cluster, 0, "STOP");
    let mut after = Vec::new();
    for i in 0..3u64 {
        let blob = blob_bytes(180_000, 80 + i);
        let started = Instant::now();
        let (status, answer) = store(&cluster.url(1), &blob, 5);
        let took = started.elapsed();
        assert_eq!(status, 200, "{answer}");
        assert!(
            took < Duration::from_secs(3),
            "a store took {took:?}: {answer}"
        );
        let created = &answer["newlyCreated"];
        assert!(
            created["shardsConfirmed"].as_u64().unwrap() >= 7,
            "{answer}"
        );
        assert_eq!(
            created["pendingNodes"],
            serde_json::json!(["n0"]),
            "{answer}"
        );
        after.push((created["blobId"].as_str().unwrap().to_string(), blob));
    }
    // Every read on n3 is its first of that blob: nothing cached.
    for (id, blob) in before.iter().chain(&after) {
        let started = Instant::now();
        let (status, body) = get(&cluster.url(3), &format!("/v1/blobs/{id}"));
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert!(&body == blob, "blob {id} read back different");
        assert!(
            took < Duration::from_secs(1),
            "an uncached read took {took:?}"
        );
    }
    let (id, blob) = &after[0];
    let started = Instant::now();
    let (status, body) = get_with(
        &cluster.url(2),
        &format!("/v1/blobs/{id}"),
        &[("Range", "bytes=1000-99999")],
    );
    assert_eq!(status, 206);
    assert!(body == blob[1000..100_000]);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(metric(&cluster.url(3), "floe_hedged_reads_total") >= 1.0);
    signal(&cluster, 0, "CONT");
    // The hung node, back, gets what it missed (in the background or through sync).
    for (id, _) in &after {
        wait_healed(&cluster, 0, &id.parse().unwrap());
    }
    cluster.kill(0);
}

/// A later end epoch stored on one node only (as when a node missed an extension) reaches
/// every node through sync, and every core of each, whatever it had cached.
#[test]
fn a_later_end_epoch_reaches_every_node_and_core() {
    let cluster = Cluster::start_configured(4, 10, "cores = 2");
    let blob = blob_bytes(120_000, 91);
    let id = store_new(&cluster.url(0), &blob, 2);
    let end_epochs = |i: usize| -> Vec<u64> {
        // Fresh connections, spread over the node's cores by the kernel.
        (0..8)
            .map(|_| {
                let mut stream =
                    TcpStream::connect(cluster.url(i).trim_start_matches("http://")).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                write!(
                    stream,
                    "HEAD /v1/blobs/{id} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                )
                .unwrap();
                let mut head = String::new();
                let _ = stream.read_to_string(&mut head);
                head.lines()
                    .find_map(|l| l.strip_prefix("x-floe-end-epoch: "))
                    .unwrap_or_else(|| panic!("no end epoch in {head}"))
                    .trim()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let first: u64 = json(&get(&cluster.url(0), &format!("/v1/blobs/{id}/status")).1)["endEpoch"]
        .as_u64()
        .unwrap();
    for i in 0..4 {
        assert!(end_epochs(i).iter().all(|e| *e == first), "node {i}");
    }
    // Extended on n0 only, through the node API (no fan-out).
    let (_, metadata) = get(&cluster.url(0), &format!("/v1/blobs/{id}/metadata"));
    let (status, answer) = send(
        "PUT",
        &format!("{}/v1/blobs/{id}/metadata?epochs=30", cluster.url(0)),
        None,
        &metadata,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let later = json(&answer)["endEpoch"].as_u64().unwrap();
    assert!(later > first);
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..4 {
        loop {
            let status = json(&get(&cluster.url(i), &format!("/v1/blobs/{id}/status")).1);
            let seen = end_epochs(i);
            if status["endEpoch"] == later && seen.iter().all(|e| *e == later) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}: status {status}, cores answer {seen:?}, want {later}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(metric(&cluster.url(1), "floe_sync_blobs_updated_total") >= 1.0);
}

/// On etcd, a lifetime extended while a node was down reaches it through the registry (the
/// store that extends it registers the later end epoch), on every core.
#[test]
fn a_later_end_epoch_reaches_a_node_that_was_down_through_the_registry() {
    let address = |_, port| format!("127.0.0.1:{port}");
    let Some(mut cluster) = Cluster::start_in(Mode::Registry, 4, 10, address, None, "cores = 2")
    else {
        return;
    };
    let blob = blob_bytes(120_000, 92);
    let id = store_new(&cluster.url(0), &blob, 2);
    let urls: Vec<String> = (0..4).map(|i| cluster.url(i)).collect();
    let end_epoch = |i: usize| {
        json(&get(&urls[i], &format!("/v1/blobs/{id}/status")).1)["endEpoch"]
            .as_u64()
            .unwrap()
    };
    let first = end_epoch(3);
    cluster.stop(3);
    let (status, answer) = store(&cluster.url(1), &blob, 30);
    assert_eq!(status, 200, "{answer}");
    let later = end_epoch(0);
    assert!(later > first, "{answer}");
    cluster.restart(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while end_epoch(3) != later {
        assert!(
            Instant::now() < deadline,
            "node 3 did not learn the later end epoch"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&cluster.url(3), "floe_sync_blobs_updated_total") >= 1.0);
    let (_, head) = get(&cluster.url(3), &format!("/v1/blobs/{id}"));
    assert!(head == blob);
}

/// A big blob through a committee: 4 nodes, n = 100, a 45 MB blob (over the 32 MiB the
/// publisher encodes in memory: spooled, encoded in strips, sent to peers in batches), read
/// back through another node as a stream of rows fetched from its peers, whole and by range.
#[test]
fn a_big_blob_is_spooled_spread_and_streamed_back_through_another_node() {
    let cluster = Cluster::start_configured(
        4,
        100,
        "[limits]\nbuffer_bytes_per_core = 67108864\nbody_bytes_max = 16777216",
    );
    let blob = blob_bytes(45_000_000, 93);
    let (status, answer) = store(&cluster.url(1), &blob, 3);
    assert_eq!(status, 200, "{answer}");
    let id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();
    let expected = encode(&EncodingConfig::new(100).unwrap(), &blob).unwrap();
    assert_eq!(id, expected.blob_id().to_string());
    for i in [0, 3] {
        let (status, body) = get(&cluster.url(i), &format!("/v1/blobs/{id}"));
        assert_eq!(status, 200);
        assert!(body == blob, "read back through node {i}");
    }
    let (status, body) = get_with(
        &cluster.url(2),
        &format!("/v1/blobs/{id}"),
        &[("Range", "bytes=10000000-29999999")],
    );
    assert_eq!(status, 206);
    assert!(body == blob[10_000_000..30_000_000]);
    // Every node got its slivers from the publisher (in the foreground or the background).
    for i in 0..4 {
        wait_healed(&cluster, i, &id.parse().unwrap());
    }
}

/// The S3 endpoint node `i` printed at start (in its log).
fn s3_endpoint(cluster: &Cluster, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(url) = cluster
            .log(i)
            .lines()
            .find_map(|l| l.strip_prefix("S3 API on "))
            .and_then(|rest| rest.split_whitespace().next())
        {
            return url.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no S3 endpoint in {}",
            cluster.log(i)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn s3_in_a_committee_names_blobs_every_node_holds_and_keeps_released_ones() {
    s3_committee(Mode::Listing);
}

/// On etcd the S3 namespace is the cluster's: a bucket made, an object written, a multipart
/// upload begun on one node are seen at once by another (read-after-write, list-after-write),
/// conditions hold across nodes, and a non-empty bucket cannot be deleted from anywhere.
#[test]
fn s3_on_etcd_serves_the_same_buckets_and_keys_on_every_node() {
    s3_committee(Mode::Registry);
}

fn s3_committee(mode: Mode) {
    if !common::have("boto3", &["python3", "-c", "import boto3"]) {
        return;
    }
    let keys = r#"s3 = { keys = [{ access_key_id = "AKIDCLUSTER", secret_access_key = "cluster-secret" }] }"#;
    let config = format!("s3_listen = \"127.0.0.1:0\"\n{keys}");
    let address = |_, port| format!("127.0.0.1:{port}");
    let Some(mut cluster) = Cluster::start_in(mode, 4, 10, address, None, &config) else {
        return;
    };
    let (s3_0, s3_1) = (s3_endpoint(&cluster, 0), s3_endpoint(&cluster, 1));
    // Node 3 (2 shards, within f = 3) is down: writes still reach the quorum.
    cluster.kill(3);
    let script = r#"
import sys, boto3, urllib.request
s3_0, s3_1, node_2, mode = sys.argv[1:5]
def client(url):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id="AKIDCLUSTER",
                        aws_secret_access_key="cluster-secret", region_name="us-east-1")
a, b = client(s3_0), client(s3_1)
a.create_bucket(Bucket="committee")
body = bytes(range(256)) * 12000   # 3 MB: two blobs at n = 10
a.put_object(Bucket="committee", Key="k", Body=body)
got = a.get_object(Bucket="committee", Key="k")
assert got["Body"].read() == body
ids = got["ResponseMetadata"]["HTTPHeaders"]["x-floe-blob-ids"].split(",")
assert len(ids) == 2, ids
# Every node serves the blobs through floe's own API...
whole = b"".join(urllib.request.urlopen(f"{node_2}/v1/blobs/{i}").read() for i in ids)
assert whole == body
def code(call):
    try:
        call()
    except b.exceptions.ClientError as err:
        return err.response["Error"]["Code"]
    return "ok"
if mode == "listing":
    # ...but with a committee file the namespace is each node's own.
    assert code(lambda: b.head_bucket(Bucket="committee")) in ("404", "NoSuchBucket")
else:
    # On etcd every node serves the same namespace, at once.
    b.head_bucket(Bucket="committee")
    assert b.get_object(Bucket="committee", Key="k")["Body"].read() == body
    assert [o["Key"] for o in b.list_objects_v2(Bucket="committee")["Contents"]] == ["k"]
    b.put_object(Bucket="committee", Key="dir/x", Body=b"x")
    listed = a.list_objects_v2(Bucket="committee", Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["k"], listed
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["dir/"], listed
    assert code(lambda: a.put_object(Bucket="committee", Key="dir/x", Body=b"y",
                                     IfNoneMatch="*")) in ("412", "PreconditionFailed")
    # A multipart upload begun on one node, parts on both, completed on the first.
    up = b.create_multipart_upload(Bucket="committee", Key="big")["UploadId"]
    assert [u["UploadId"] for u in a.list_multipart_uploads(Bucket="committee")["Uploads"]] == [up]
    p1 = bytes([1]) * (5 << 20)
    p2 = b"tail"
    e1 = a.upload_part(Bucket="committee", Key="big", UploadId=up, PartNumber=1, Body=p1)["ETag"]
    e2 = b.upload_part(Bucket="committee", Key="big", UploadId=up, PartNumber=2, Body=p2)["ETag"]
    assert len(a.list_parts(Bucket="committee", Key="big", UploadId=up)["Parts"]) == 2
    a.complete_multipart_upload(Bucket="committee", Key="big", UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert b.get_object(Bucket="committee", Key="big")["Body"].read() == p1 + p2
    assert code(lambda: b.list_parts(Bucket="committee", Key="big", UploadId=up)) == "NoSuchUpload"
    # Deleted on one node, gone on the other; a bucket with keys is not deleted anywhere.
    b.delete_object(Bucket="committee", Key="dir/x")
    assert code(lambda: a.head_object(Bucket="committee", Key="dir/x")) in ("404", "NoSuchKey")
    assert code(lambda: b.delete_bucket(Bucket="committee")) == "BucketNotEmpty"
    b.create_bucket(Bucket="empty")
    a.delete_bucket(Bucket="empty")
    assert code(lambda: b.head_bucket(Bucket="empty")) in ("404", "NoSuchBucket")
# Released blobs are kept in a committee (another node's namespace may name them).
a.delete_object(Bucket="committee", Key="k")
for i in ids:
    assert urllib.request.urlopen(f"{node_2}/v1/blobs/{i}").read()
print("committee S3 ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s3_0, &s3_1, &cluster.url(2)])
        .arg(if mode == Mode::Listing {
            "listing"
        } else {
            "registry"
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bit flipped on a node's disk (issue 18): its scrubber finds the record, which from then
/// on is never served, and the node heals it from its peers, so it holds every sliver whole
/// again, all without a restart.
#[test]
fn a_bit_flip_on_disk_is_found_by_the_scrubber_never_served_and_healed_from_peers() {
    let cluster = Cluster::start_configured(4, 10, "scrub_interval_seconds = 2");
    let blob = blob_bytes(600_000, 77);
    let id: BlobId = store_new(&cluster.url(0), &blob, 2).parse().unwrap();
    let expected = encode(&EncodingConfig::new(10).unwrap(), &blob).unwrap();
    // Flip a byte of node 1's primary sliver of its first shard, in its segment file.
    let n = cluster.shard_count();
    let pair = id.pair_for_shard(cluster.shards[1][0].into(), n);
    let data = expected.sliver(floe_codec::SliverKind::Primary, pair);
    let needle = &data[data.len() / 2..data.len() / 2 + 64];
    let mut flipped = 0;
    for core_dir in std::fs::read_dir(&cluster.nodes[1].data).unwrap() {
        let core_dir = core_dir.unwrap().path();
        if !core_dir.is_dir() {
            continue;
        }
        for segment in std::fs::read_dir(&core_dir).unwrap() {
            let segment = segment.unwrap().path();
            if segment.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let bytes = std::fs::read(&segment).unwrap();
            if let Some(at) = bytes.windows(64).position(|w| w == needle) {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&segment)
                    .unwrap();
                std::os::unix::fs::FileExt::write_all_at(
                    &file,
                    &[bytes[at + 5] ^ 0x10],
                    (at + 5) as u64,
                )
                .unwrap();
                file.sync_all().unwrap();
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 1, "the sliver is in one segment of node 1");
    // Found by the scrubber (counted), never served, then healed from peers.
    let url = cluster.url(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&url, "floe_corrupt_records_total") < 1.0 {
        let (status, body) = get(&url, &format!("/v1/blobs/{id}/slivers/{pair}/primary"));
        if status == 200 {
            let sliver = floe_codec::decode_sliver(floe_codec::SliverKind::Primary, &body).unwrap();
            assert!(sliver.data == data, "a corrupt sliver was served");
        }
        assert!(Instant::now() < deadline, "the scrubber did not find it");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_healed(&cluster, 1, &id);
    check_slivers(&cluster, 1, &id, &expected);
    assert!(get(&cluster.url(2), &format!("/v1/blobs/{id}")).1 == blob);
}
