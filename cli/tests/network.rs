//! Network faults (issue 18): a committee whose nodes live in their own network namespaces
//! (`ip netns`, a veth pair each, joined by a bridge), with links cut and restored mid-run.
//! Cut off at most f shards: stores and reads go on within their deadlines. Cut off more
//! than f: stores answer 503 within their deadline and nothing acknowledged is lost. Links
//! back: stores succeed again and the nodes that were cut off heal what they missed.
//!
//! Needs root (namespaces, links); skipped with a note elsewhere, required in CI.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Namespaces `ns(i)`, each with address `ip(i)` on a bridge the test reaches from the root
/// namespace at `.254`. Removed on drop.
struct Net {
    prefix: String,
    subnet: u32,
    count: usize,
}

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Net {
    fn create(count: usize) -> Result<Net, String> {
        let pid = std::process::id();
        let net = Net {
            prefix: format!("fl{}", pid % 100_000),
            subnet: 100 + pid % 100,
            count,
        };
        let bridge = net.bridge();
        ip_cmd(&["link", "add", &bridge, "type", "bridge"])?;
        ip_cmd(&[
            "addr",
            "add",
            &format!("10.{}.0.254/24", net.subnet),
            "dev",
            &bridge,
        ])?;
        ip_cmd(&["link", "set", &bridge, "up"])?;
        for i in 0..count {
            let (ns, outer, inner) = (net.ns(i), net.link(i), format!("{}p{i}", net.prefix));
            ip_cmd(&["netns", "add", &ns])?;
            ip_cmd(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip_cmd(&["link", "set", &inner, "netns", &ns])?;
            ip_cmd(&["link", "set", &outer, "master", &bridge])?;
            ip_cmd(&["link", "set", &outer, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip_cmd(&all)
            };
            inside(&["addr", "add", &format!("{}/24", net.ip(i)), "dev", &inner])?;
            inside(&["link", "set", &inner, "up"])?;
            inside(&["link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// The bridge side of node `i`'s link: down cuts the node off from everyone.
    fn link(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.subnet, i + 1)
    }

    fn cut(&self, i: usize) {
        ip_cmd(&["link", "set", &self.link(i), "down"]).unwrap();
    }

    fn restore(&self, i: usize) {
        ip_cmd(&["link", "set", &self.link(i), "up"]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = ip_cmd(&["netns", "del", &self.ns(i)]);
            let _ = ip_cmd(&["link", "del", &self.link(i)]);
        }
        let _ = ip_cmd(&["link", "del", &self.bridge()]);
    }
}

const PORT: u16 = 31415;

/// Shards of node `i` of 4 at n = 10: 3, 3, 2, 2 (f = 3).
const SHARDS: [&str; 4] = ["0-2", "3-5", "6-7", "8-9"];

/// Writes the committee file (node `i` at `addresses[i]`, shards as in [`SHARDS`]) and each
/// node's config (listening on `listens[i]`); returns the configs' paths.
fn write_configs(
    dir: &std::path::Path,
    addresses: &[String],
    listens: &[String],
) -> Vec<std::path::PathBuf> {
    let mut committee = "n_shards = 10\n".to_string();
    for (i, shards) in SHARDS.iter().enumerate() {
        committee.push_str(&format!(
            "[[nodes]]\nname = \"n{i}\"\naddress = \"{}\"\nshards = [\"{shards}\"]\n",
            addresses[i]
        ));
    }
    let committee_path = dir.join("committee.toml");
    std::fs::write(&committee_path, committee).unwrap();
    (0..SHARDS.len())
        .map(|i| {
            let config = dir.join(format!("n{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "name = \"n{i}\"\nlisten = \"{}\"\ndata_dirs = [{:?}]\n\
                     committee = {:?}\ncores = 1\npin_cores = false\n\
                     sync_interval_seconds = 1\npeer_timeout_seconds = 5\n\
                     peer_connect_timeout_ms = 500\nshutdown_grace_seconds = 2\n",
                    listens[i],
                    dir.join(format!("n{i}-data")).display().to_string(),
                    committee_path.display().to_string(),
                ),
            )
            .unwrap();
            config
        })
        .collect()
}

/// The committee of [`SHARDS`], node `i` in namespace `net.ns(i)`.
fn start_committee(net: &Net, dir: &std::path::Path) -> Vec<NodeProcess> {
    let addresses: Vec<String> = (0..SHARDS.len())
        .map(|i| format!("{}:{PORT}", net.ip(i)))
        .collect();
    write_configs(dir, &addresses, &addresses)
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", &net.ns(i), env!("CARGO_BIN_EXE_floe")])
                .args(["node", "--config", config.to_str().unwrap()]);
            try_start_command(command).unwrap_or_else(|e| panic!("node n{i}: {e}"))
        })
        .collect()
}

/// A store through `url`: the blob ID on 200, else the status and answer; and how long it took.
fn timed_store(url: &str, blob: &[u8]) -> (Result<String, (u16, String)>, Duration) {
    let started = Instant::now();
    let (status, answer) = store(url, blob, 5);
    let took = started.elapsed();
    if status == 200 {
        let id = answer["newlyCreated"]["blobId"]
            .as_str()
            .or(answer["alreadyCertified"]["blobId"].as_str())
            .unwrap()
            .to_string();
        (Ok(id), took)
    } else {
        (Err((status, answer.to_string())), took)
    }
}

fn reads_back(url: &str, blobs: &[(String, Vec<u8>)]) -> Duration {
    let mut slowest = Duration::ZERO;
    for (id, blob) in blobs {
        let started = Instant::now();
        let (status, body) = get(url, &format!("/v1/blobs/{id}"));
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "read of {id} through {url}");
        assert!(body == *blob, "{id} through {url} differs");
    }
    slowest
}

#[test]
fn links_cut_and_restored_under_load_lose_nothing_acknowledged() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let net = match is_root.then(|| Net::create(SHARDS.len())) {
        Some(Ok(net)) => net,
        why => {
            let why = match why {
                Some(Err(e)) => e,
                _ => "not root".into(),
            };
            assert!(
                std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
                "CI runs as root with ip netns: {why}"
            );
            eprintln!("note: network namespaces unavailable ({why}); skipped");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_committee(&net, dir.path());
    let url = |i: usize| nodes[i].url.trim_end_matches('/').to_string();
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut seed = 1u64;
    let mut store_some = |count: usize, acked: &mut Vec<(String, Vec<u8>)>| -> Duration {
        let mut slowest = Duration::ZERO;
        for _ in 0..count {
            seed += 1;
            let blob = blob_bytes(150_000 + seed as usize * 1000, seed);
            let (id, took) = timed_store(&url(0), &blob);
            slowest = slowest.max(took);
            acked.push((id.unwrap_or_else(|e| panic!("store: {e:?}")), blob));
        }
        slowest
    };
    store_some(5, &mut acked);
    reads_back(&url(1), &acked);

    // Node 3 (2 shards, at most f = 3) cut off: stores and reads go on, within deadlines.
    net.cut(3);
    let store_cut = store_some(5, &mut acked);
    let read_cut = reads_back(&url(0), &acked).max(reads_back(&url(1), &acked));
    assert!(
        store_cut < Duration::from_secs(5),
        "a store with f shards cut off took {store_cut:?}"
    );
    assert!(
        read_cut < Duration::from_secs(3),
        "a read with f shards cut off took {read_cut:?}"
    );

    // Node 2 too (4 shards > f): stores answer 503 within their deadline; reads still serve
    // (6 shards hold more than enough slivers).
    net.cut(2);
    let (refused, took) = timed_store(&url(0), &blob_bytes(120_000, 999));
    let (status, answer) = refused.expect_err("a store with more than f shards cut off");
    assert_eq!(status, 503, "{answer}");
    assert!(
        took < Duration::from_secs(15),
        "the refusal took {took:?}: {answer}"
    );
    reads_back(&url(0), &acked);

    // Links back: stores succeed again, and the nodes that were cut off heal what they missed.
    net.restore(2);
    net.restore(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        seed += 1;
        let blob = blob_bytes(100_000, seed);
        match timed_store(&url(0), &blob).0 {
            Ok(id) => {
                acked.push((id, blob));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e:?}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("stores do not recover after the links return: {e:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, _) in &acked {
        loop {
            let (status, body) = get(&url(3), &format!("/v1/blobs/{id}/status"));
            let held = (status == 200)
                .then(|| json(&body)["primaryPairs"].as_array().map(Vec::len))
                .flatten()
                .unwrap_or(0);
            if held == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n3 did not heal {id}: {}",
                String::from_utf8_lossy(&body)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    for i in 0..SHARDS.len() {
        reads_back(&url(i), &acked);
    }
    println!(
        "{} acknowledged, lost 0; with f shards cut off: slowest store {store_cut:?}, slowest \
         read {read_cut:?}; more than f cut off: 503 in {took:?}",
        acked.len()
    );
    drop(nodes);
}

/// What the fault proxy does to the traffic of the node behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Pass,
    /// Each answer held back 400 ms.
    Delay,
    /// The request read, then nothing: no answer, no close (for 30 s).
    Stall,
    /// The connection reset at once (RST).
    Reset,
    /// The answer cut after its first 120 bytes.
    Truncate,
    /// The answer one byte per write, a pause every 256 bytes.
    ByteByByte,
    /// Bytes that are not HTTP.
    Garbage,
}

/// A proxy in front of a node whose traffic suffers `fault` (switchable while it runs). One
/// request per connection (it asks the node to close after each).
struct FaultProxy {
    port: u16,
    fault: std::sync::Arc<std::sync::Mutex<Fault>>,
}

impl FaultProxy {
    fn start(target: u16) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = std::sync::Arc::new(std::sync::Mutex::new(Fault::Pass));
        let shared = fault.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let fault = *shared.lock().unwrap();
                std::thread::spawn(move || {
                    let _ = relay(client, target, fault);
                });
            }
        });
        FaultProxy { port, fault }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

fn relay(mut client: std::net::TcpStream, target: u16, fault: Fault) -> std::io::Result<()> {
    use std::io::{Read, Write};
    if fault == Fault::Reset {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a valid linger struct on an open socket.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&client),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
        return Ok(());
    }
    let Some(request) = read_proxied_request(&mut client)? else {
        return Ok(());
    };
    match fault {
        Fault::Stall => {
            std::thread::sleep(Duration::from_secs(30));
            return Ok(());
        }
        Fault::Garbage => {
            let noise = blob_bytes(70_000, request.body.len() as u64);
            return client.write_all(&noise);
        }
        _ => {}
    }
    let mut node = std::net::TcpStream::connect(("127.0.0.1", target))?;
    node.write_all(request.head.as_bytes())?;
    node.write_all(&request.body)?;
    let mut response = Vec::new();
    node.read_to_end(&mut response)?;
    match fault {
        Fault::Delay => {
            std::thread::sleep(Duration::from_millis(400));
            client.write_all(&response)
        }
        Fault::Truncate => client.write_all(&response[..response.len().min(120)]),
        Fault::ByteByByte => {
            client.set_nodelay(true)?;
            for (i, b) in response.iter().enumerate() {
                client.write_all(std::slice::from_ref(b))?;
                if i % 256 == 255 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(())
        }
        _ => client.write_all(&response),
    }
}

/// A peer whose traffic is delayed, stalled, reset, truncated, dribbled byte by byte or
/// replaced with garbage (node 3 of 4, 2 shards of 10: at most f): every store and read
/// through the others succeeds within its deadline with the right bytes, and once the peer's
/// traffic is clean again it heals what it missed.
#[test]
fn a_peer_that_delays_stalls_resets_truncates_dribbles_or_babbles_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let proxy = FaultProxy::start(ports[3]);
    let listens: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut addresses = listens.clone();
    addresses[3] = format!("127.0.0.1:{}", proxy.port);
    let nodes: Vec<NodeProcess> = write_configs(dir.path(), &addresses, &listens)
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_floe"));
            command.args(["node", "--config", config.to_str().unwrap()]);
            try_start_command(command).unwrap_or_else(|e| panic!("node n{i}: {e}"))
        })
        .collect();
    let url = |i: usize| nodes[i].url.trim_end_matches('/').to_string();
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut figures = Vec::new();
    for (round, fault) in [
        Fault::Delay,
        Fault::Stall,
        Fault::Reset,
        Fault::Truncate,
        Fault::ByteByByte,
        Fault::Garbage,
    ]
    .into_iter()
    .enumerate()
    {
        proxy.set(fault);
        let mut slowest_store = Duration::ZERO;
        for k in 0..2 {
            let blob = blob_bytes(200_000 + round * 1000 + k, (round * 10 + k) as u64);
            let (id, took) = timed_store(&url(0), &blob);
            let id = id.unwrap_or_else(|e| panic!("store with a {fault:?} peer: {e:?}"));
            slowest_store = slowest_store.max(took);
            acked.push((id, blob));
        }
        let slowest_read = reads_back(&url(0), &acked).max(reads_back(&url(1), &acked));
        assert!(
            slowest_store < Duration::from_secs(6) && slowest_read < Duration::from_secs(6),
            "{fault:?}: store {slowest_store:?}, read {slowest_read:?}"
        );
        figures.push(format!(
            "{fault:?}: store {slowest_store:.0?}, read {slowest_read:.0?}"
        ));
    }
    proxy.set(Fault::Pass);
    // Clean again: n3 heals every blob stored while its traffic was bad.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, _) in &acked {
        while get(&url(3), &format!("/v1/blobs/{id}/status"))
            .1
            .windows(b"\"primaryPairs\":[]".len())
            .any(|w| w == b"\"primaryPairs\":[]")
            || get(&url(3), &format!("/v1/blobs/{id}/status")).0 != 200
        {
            assert!(Instant::now() < deadline, "n3 did not heal {id}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    reads_back(&url(3), &acked);
    println!("slowest per fault: {}", figures.join("; "));
}
