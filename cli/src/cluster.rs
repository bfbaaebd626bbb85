//! `floe cluster up` and `floe cluster down`: a local committee of K node processes on
//! loopback, for trying floe and for tests.
//!
//! `up` picks free ports, writes `DIR/committee.toml` (n shards spread over the nodes in
//! contiguous ranges) and per node `DIR/node-i/node.toml`, starts `floe node --config` for
//! each (own process group, log in `DIR/node-i/node.log`, PID in `DIR/node-i/pid`), and waits
//! until every node answers `/v1/health`. `down` sends each SIGTERM, waits for it to exit
//! (SIGKILL after a grace period), and removes the PID files; the data stays.

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
                 committee = {:?}\ncores = {}\npin_cores = false\nsync_interval_seconds = {}\n",
                home.join("data").display().to_string(),
                committee.display().to_string(),
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

/// Whether `pid` is still a running floe process (not a reused PID).
fn is_floe(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("floe"))
}

/// Stops every node of the cluster in `dir`; returns how many were running.
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
        let pid_file = home.join("pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            continue;
        };
        let pid: i32 = text.trim().parse().context("a PID file holds no number")?;
        if is_floe(pid) {
            // SAFETY: kill(2) with a PID checked to be a floe process; no memory is involved.
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
            stopped += 1;
        }
        std::fs::remove_file(&pid_file)?;
    }
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
