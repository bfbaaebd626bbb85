//! What the end-to-end tests of `floe node` share: starting the real binary on free loopback
//! ports and stopping it by its PID.
#![allow(dead_code)] // each test crate uses some of it

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running node; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
    /// The S3 endpoint, when started with `--s3-listen`.
    pub s3_url: Option<String>,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn start(args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
    try_start(args, env).unwrap_or_else(|err| panic!("node did not start: {err}"))
}

/// A node of n = 10 shards on `cores` cores with its data in `data`.
pub fn start_n10(data: &str, cores: usize, env: &[(&str, &str)]) -> NodeProcess {
    let cores = cores.to_string();
    start(
        &["--data-dir", data, "--shards", "10", "--cores", &cores],
        env,
    )
}

/// A node configured by `toml` (written to `dir/node.toml`), its data in `dir/data`, with
/// `extra` options.
pub fn start_configured(dir: &std::path::Path, toml: &str, extra: &[&str]) -> NodeProcess {
    let config = dir.join("node.toml");
    std::fs::write(&config, toml).unwrap();
    let data = dir.join("data");
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    start(&args, &[])
}

pub fn try_start(args: &[&str], env: &[(&str, &str)]) -> Result<NodeProcess, String> {
    try_start_at("127.0.0.1:0", args, env)
}

/// [`try_start`] listening on `listen`.
pub fn try_start_at(
    listen: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<NodeProcess, String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_floe"));
    command.arg("node").args(["--listen", listen]).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    try_start_command(command)
}

/// Runs `command` (a `floe node`, perhaps behind a wrapper) as [`try_start`] does.
pub fn try_start_command(mut command: Command) -> Result<NodeProcess, String> {
    command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run floe node");
    let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = stderr_text.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        sink.lock().unwrap().push_str(&text);
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    // The greeting ends with its `stop:` line; the S3 endpoint, when S3 is on, comes before.
    let mut s3_url = None;
    if line.contains("http://") {
        let mut more = String::new();
        while stdout.read_line(&mut more).is_ok_and(|n| n > 0) {
            if let Some(rest) = more.strip_prefix("S3 API on ") {
                s3_url = rest.split_whitespace().next().map(str::to_string);
            }
            if more.trim_start().starts_with("stop:") {
                break;
            }
            more.clear();
        }
    }
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        return Err(format!("{status}: {}", stderr_text.lock().unwrap()));
    };
    Ok(NodeProcess {
        url: url.to_string(),
        s3_url,
        child,
        stderr: stderr_text,
    })
}

impl NodeProcess {
    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        send_signal(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                assert!(
                    status.success(),
                    "node exited with {status}: {}",
                    self.stderr.lock().unwrap()
                );
                return status;
            }
            assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn send_signal(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// A single-member etcd (Debian's `etcd-server`) on free loopback ports in a temporary
/// directory; killed when dropped. `None` (with a note) where etcd is not installed, unless
/// FLOE_REQUIRE_ETCD is set (CI sets it and installs it).
pub struct Etcd {
    pub child: Child,
    pub url: String,
    peer_url: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 30 s) until `etcdctl endpoint health` passes for `endpoints`.
fn wait_etcd_healthy(endpoints: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = Command::new("etcdctl")
            .args(["--endpoints", endpoints, "endpoint", "health"])
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success());
        if healthy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd at {endpoints} did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts one etcd member (output discarded; errors only).
#[allow(clippy::too_many_arguments)]
fn spawn_etcd(
    name: &str,
    url: &str,
    peer_url: &str,
    data: &std::path::Path,
    initial_cluster: &str,
    state: &str,
    token: &str,
    extra: &[&str],
) -> Child {
    Command::new("etcd")
        .args(["--name", name, "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", url, "--advertise-client-urls", url])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args([
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            token,
        ])
        .args(extra)
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run etcd")
}

impl Etcd {
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("FLOE_REQUIRE_ETCD").is_none(),
                "etcd is required (apt-get install etcd-server etcd-client)"
            );
            eprintln!("note: etcd is not installed; the control-plane checks are skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Self::spawn(&url, &peer_url, dir.path(), "new");
        let etcd = Etcd {
            child,
            url,
            peer_url,
            dir,
        };
        etcd.wait_healthy();
        Some(etcd)
    }

    fn spawn(url: &str, peer_url: &str, dir: &std::path::Path, state: &str) -> Child {
        let initial = format!("m0={peer_url}");
        let token = format!("floe-test-{url}");
        spawn_etcd(
            "m0",
            url,
            peer_url,
            &dir.join("m0"),
            &initial,
            state,
            &token,
            &[],
        )
    }

    fn wait_healthy(&self) {
        wait_etcd_healthy(&self.url);
    }

    /// Kills etcd (SIGKILL); [`Etcd::restart`] brings it back with its data.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.url, &self.peer_url, self.dir.path(), "existing");
        self.wait_healthy();
    }

    /// `etcdctl ARGS` against this etcd: its stdout, `None` if it failed.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &self.url])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let status = self
            .ctl(&["endpoint", "status", "-w", "json"])
            .expect("etcdctl endpoint status");
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-member etcd cluster on free loopback ports (fast elections: heartbeat 50 ms,
/// election timeout 500 ms); killed when dropped. `None` where etcd is not installed (see
/// [`Etcd::start`]).
pub struct EtcdCluster {
    pub members: Vec<Option<Child>>,
    pub urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start() -> Option<EtcdCluster> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("FLOE_REQUIRE_ETCD").is_none(),
                "etcd is required (apt-get install etcd-server etcd-client)"
            );
            eprintln!("note: etcd is not installed; the control-plane checks are skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let names = ["m0", "m1", "m2"];
        let clients: Vec<String> = (0..3)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = (0..3)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = names
            .iter()
            .zip(&peers)
            .map(|(n, p)| format!("{n}={p}"))
            .collect();
        let members = (0..3)
            .map(|i| {
                let token = format!("floe-test-{}", clients[0]);
                Some(spawn_etcd(
                    names[i],
                    &clients[i],
                    &peers[i],
                    &dir.path().join(names[i]),
                    &initial.join(","),
                    "new",
                    &token,
                    &["--heartbeat-interval", "50", "--election-timeout", "500"],
                ))
            })
            .collect();
        let cluster = EtcdCluster {
            members,
            urls: clients,
            _dir: dir,
        };
        wait_etcd_healthy(&cluster.urls.join(","));
        Some(cluster)
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Whether `check` (a command) runs; if not, what needs `what` is skipped with a note, unless CI
/// requires every client (FLOE_REQUIRE_PYTHON_CLIENTS; `.ci/run` installs them).
pub fn have(what: &str, check: &[&str]) -> bool {
    let found = Command::new(check[0])
        .args(&check[1..])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
            "{what} is required (CI installs it: see .ci/run)"
        );
        eprintln!("note: {what} is missing; the checks that need it are skipped");
    }
    found
}

// HTTP helpers of the cluster tests.

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

pub fn get(url: &str, path: &str) -> (u16, Vec<u8>) {
    get_with(url, path, &[])
}

pub fn get_with(url: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut request = ureq::http::Request::get(format!("{url}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    run(request, &[])
}

/// Sends a request: status and body (status 0 if the node could not be reached).
pub fn run(request: ureq::http::request::Builder, body: &[u8]) -> (u16, Vec<u8>) {
    match agent().run(request.body(body.to_vec()).unwrap()) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()
                .unwrap();
            (status, body)
        }
        Err(_) => (0, Vec::new()),
    }
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// Stores `blob` through node `url`: status and JSON answer.
pub fn store(url: &str, blob: &[u8], epochs: u32) -> (u16, serde_json::Value) {
    let mut response = agent()
        .put(&format!("{url}/v1/blobs?epochs={epochs}"))
        .send(blob)
        .unwrap();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().unwrap();
    (status, json(&body))
}

/// Stores a new `blob` through node `url` (status 200 asserted): its blob ID.
pub fn store_new(url: &str, blob: &[u8], epochs: u32) -> String {
    let (status, answer) = store(url, blob, epochs);
    assert_eq!(status, 200, "{answer}");
    answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Deterministic pseudo-random bytes.
pub fn blob_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn metric(url: &str, name: &str) -> f64 {
    let (_, body) = get(url, "/metrics");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A request a test proxy read from its client: the head with `connection: close` added (one
/// request per connection to the node), the head in lowercase (to match on), and the body.
pub struct ProxiedRequest {
    pub head: String,
    pub lower: String,
    pub body: Vec<u8>,
}

/// Reads one request (its head, then a body of its Content-Length) from a proxy's client;
/// `None` if the client closed first.
pub fn read_proxied_request(
    client: &mut std::net::TcpStream,
) -> std::io::Result<Option<ProxiedRequest>> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(None);
        }
        request.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let lower = text.to_ascii_lowercase();
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    Ok(Some(ProxiedRequest {
        head: text.replacen("\r\n", "\r\nconnection: close\r\n", 1),
        lower,
        body,
    }))
}

/// A small file system mounted for the test (root only; skipped, and said so, elsewhere).
pub struct SmallDisk {
    pub path: std::path::PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self {
            path: path.to_path_buf(),
        })
    }
}

impl SmallDisk {
    /// An ext4 file system of `megabytes` in an image file, on a loop device (`mount -o loop`),
    /// mounted at `path`: the real backend (O_DIRECT, io_uring) on a real file system.
    pub fn mount_loop(path: &std::path::Path, megabytes: u32) -> Result<Self, String> {
        std::fs::create_dir_all(path).unwrap();
        let image = path.with_extension("img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(u64::from(megabytes) << 20))
            .map_err(|e| e.to_string())?;
        let run = |command: &mut Command| -> Result<(), String> {
            let out = command.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(path))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl SmallDisk {
    /// [`SmallDisk::mount_loop`] for each of `names` under `dir`, or `None` (said) where loop
    /// devices cannot be used; CI runs as root and must have them.
    pub fn mount_loops(dir: &std::path::Path, names: &[&str], megabytes: u32) -> Option<Vec<Self>> {
        match names
            .iter()
            .map(|name| Self::mount_loop(&dir.join(name), megabytes))
            .collect::<Result<_, _>>()
        {
            Ok(disks) => Some(disks),
            Err(why) => {
                assert!(
                    std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
                    "CI runs as root with loop devices: {why}"
                );
                println!("skipped: loop devices need root ({why})");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Also what a test mounted over it.
        for _ in 0..3 {
            let unmounted = Command::new("umount")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status();
            if !unmounted.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}

/// Shuts down the ext4 file system mounted at `path` (`EXT4_IOC_SHUTDOWN`, without flushing
/// its log): from then on its reads and writes fail with EIO, as after a fatal device error.
pub fn shut_down_ext4(path: &std::path::Path) {
    const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
    const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;
    let dir = std::fs::File::open(path).unwrap();
    let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 from a valid pointer.
    let done = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            EXT4_IOC_SHUTDOWN,
            &flags as *const u32,
        )
    };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
}
