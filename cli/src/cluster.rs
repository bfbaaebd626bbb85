//! `floe cluster up` and `floe cluster down`: a local committee of K node processes on
//! loopback, for trying floe and for tests.
//!
//! `up` picks free ports, writes `DIR/committee.toml` (n shards spread over the nodes in
//! contiguous ranges) and per node `DIR/node-i/node.toml`, starts `floe node --config` for
//! each (own process group, log in `DIR/node-i/node.log`, PID in `DIR/node-i/pid`), and waits
//! until every node answers `/v1/health`. With `--etcd` it first starts a local etcd in
//! `DIR/etcd` (PID, log and client URL there), loads the committee into it, and the nodes take
//! it from there (with a generated cluster secret). `down` sends each SIGTERM, waits for it to
//! exit (SIGKILL after a grace period), and removes the PID files; the data stays.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long `up` waits for a node to answer, and `down` for one to exit before SIGKILL.
const WAIT: Duration = Duration::from_secs(30);

/// What `cluster up` starts.
pub struct Up {
    pub dir: PathBuf,
    pub nodes: usize,
    pub shards: u16,
    pub cores: usize,
    pub sync_interval_seconds: u64,
    /// Coordinate through a local etcd started in `DIR/etcd`.
    pub etcd: bool,
}

fn node_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node-{i}"))
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The committee file's text: node `i` holds a contiguous range of shards.
pub fn committee_toml(ports: &[u16], shards: u16) -> String {
    let nodes = ports.len();
    let mut text = format!("n_shards = {shards}\n");
    let mut first = 0usize;
    for (i, port) in ports.iter().enumerate() {
        let count = usize::from(shards) / nodes + usize::from(i < usize::from(shards) % nodes);
        let last = first + count - 1;
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"node-{i}\"\naddress = \"127.0.0.1:{port}\"\nshards = [\"{first}-{last}\"]\n"
        ));
        first += count;
    }
    text
}

/// Starts the cluster; returns the committee file's path and the nodes' URLs.
pub fn up(spec: &Up) -> Result<(PathBuf, Vec<String>)> {
    if spec.nodes == 0 || usize::from(spec.shards) < spec.nodes {
        bail!("a cluster needs at least one node and at least one shard per node");
    }
    floe_codec::EncodingConfig::new(spec.shards)?;
    if spec.dir.join("committee.toml").exists() {
        bail!(
            "{} already holds a cluster; stop it with `floe cluster down --dir {0}` and remove \
             the directory, or choose another --dir",
            spec.dir.display()
        );
    }
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("creating {}", spec.dir.display()))?;
    let dir = spec.dir.canonicalize()?;
    let ports = (0..spec.nodes)
        .map(|_| free_port())
        .collect::<Result<Vec<_>>>()?;
    let committee = dir.join("committee.toml");
    std::fs::write(&committee, committee_toml(&ports, spec.shards))?;
    // With etcd: the committee is loaded there and the nodes take it from there; peers sign
    // their requests with a secret generated here.
    let source = if spec.etcd {
        let url = start_etcd(&dir)?;
        crate::committee::init(
            &committee,
            std::slice::from_ref(&url),
            floe_control::PREFIX_DEFAULT,
        )
        .context("loading the committee into etcd")?;
        format!(
            "etcd_endpoints = [{url:?}]\ncluster_secret = {:?}\n",
            random_hex(16)?
        )
    } else {
        format!("committee = {:?}\n", committee.display().to_string())
    };
    let exe = std::env::current_exe().context("finding the floe executable")?;
    let mut urls = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let home = node_dir(&dir, i);
        std::fs::create_dir_all(&home)?;
        let config = home.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"node-{i}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dirs = [{:?}]\n\
                 {source}cores = {}\npin_cores = false\nsync_interval_seconds = {}\n",
                home.join("data").display().to_string(),
                spec.cores,
                spec.sync_interval_seconds,
            ),
        )?;
        let log = std::fs::File::create(home.join("node.log"))?;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(&exe)
                .arg("node")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            0,
        )
        .spawn()
        .with_context(|| format!("starting node-{i}"))?;
        std::fs::write(home.join("pid"), child.id().to_string())?;
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for (i, url) in urls.iter().enumerate() {
        wait_healthy(url).with_context(|| {
            format!(
                "node-{i} did not come up; see {}",
                node_dir(&dir, i).join("node.log").display()
            )
        })?;
    }
    Ok((committee, urls))
}

/// `bytes` random bytes from the kernel, as hex.
fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The client URL of the cluster's etcd in `dir`, if it was started with one.
pub fn etcd_url(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("etcd").join("url"))
        .ok()
        .map(|u| u.trim().to_string())
}

/// Starts a single-member etcd in `dir/etcd` on free loopback ports (log `etcd.log`, PID in
/// `pid`, client URL in `url`) and waits until it answers; its client URL.
fn start_etcd(dir: &Path) -> Result<String> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!(
            "etcd is not installed: `apt-get install etcd-server` (Debian, Ubuntu) or put an \
             etcd binary on PATH"
        );
    }
    let home = dir.join("etcd");
    std::fs::create_dir_all(&home)?;
    let url = format!("http://127.0.0.1:{}", free_port()?);
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let log = std::fs::File::create(home.join("etcd.log"))?;
    let child = std::os::unix::process::CommandExt::process_group(
        Command::new("etcd")
            .args(["--name", "floe-etcd", "--data-dir"])
            .arg(home.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("floe-etcd={peer}")])
            // History kept an hour: etcd's space stays bounded; a node that was down longer
            // reads the whole registry instead of the events it missed.
            .args([
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "1h",
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log),
        0,
    )
    .spawn()
    .context("starting etcd")?;
    std::fs::write(home.join("pid"), child.id().to_string())?;
    std::fs::write(home.join("url"), &url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    loop {
        let answered = runtime.block_on(floe_control::Control::connect(
            std::slice::from_ref(&url),
            floe_control::PREFIX_DEFAULT,
            Duration::from_secs(1),
        ));
        if answered.is_ok() {
            return Ok(url);
        }
        if started.elapsed() > WAIT {
            bail!(
                "etcd did not answer at {url} within {} s; see {}",
                WAIT.as_secs(),
                home.join("etcd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_healthy(url: &str) -> Result<()> {
    let started = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    loop {
        if agent.get(&format!("{url}/v1/health")).call().is_ok() {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            bail!("{url} did not answer within {} s", WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `pid` is still a running process whose command line names `program` (not a
/// reused PID).
fn is_program(pid: i32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(program))
}

/// Stops the process in `pid_file` if it is still `program` (SIGTERM, SIGKILL after the grace
/// period) and removes the file; whether it was running.
fn stop(pid_file: &Path, program: &str) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(false);
    };
    let pid: i32 = text.trim().parse().context("a PID file holds no number")?;
    let running = is_program(pid, program);
    if running {
        // SAFETY: kill(2) with a PID checked to be that program; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        // Until it is gone (or a zombie): its command line empties while it is still exiting.
        while is_running(pid) {
            if started.elapsed() > WAIT {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::fs::remove_file(pid_file)?;
    Ok(running)
}

/// Stops every node of the cluster in `dir`, then its etcd if it has one; returns how many
/// nodes were running.
pub fn down(dir: &Path) -> Result<usize> {
    if !dir.join("committee.toml").exists() {
        bail!("{} holds no cluster (no committee.toml)", dir.display());
    }
    let mut stopped = 0;
    for i in 0.. {
        let home = node_dir(dir, i);
        if !home.exists() {
            break;
        }
        if stop(&home.join("pid"), "floe")? {
            stopped += 1;
        }
    }
    stop(&dir.join("etcd").join("pid"), "etcd")?;
    Ok(stopped)
}

/// The process exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committee_spreads_every_shard_once() {
        let text = committee_toml(&[1000, 1001, 1002, 1003], 10);
        assert!(text.contains("shards = [\"0-2\"]"));
        assert!(text.contains("shards = [\"3-5\"]"));
        assert!(text.contains("shards = [\"6-7\"]"));
        assert!(text.contains("shards = [\"8-9\"]"));
        let committee = floe_server::config::Committee::parse(&text, Path::new("x")).unwrap();
        assert_eq!(committee.members.len(), 4);
    }
}
