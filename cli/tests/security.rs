//! The node runs with only what it needs (issue 18): as an unprivileged user, with no new
//! privileges, on a read-only system where only its data directory is writable (what
//! `deploy/floe.service` sets up with systemd), here with unshare(1) and setpriv(1).

use std::process::Command;

mod common;
use common::*;

const NOBODY: u32 = 65534;

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn the_node_serves_as_an_unprivileged_user_on_a_read_only_system() {
    let is_root = status_field(std::process::id(), "Uid:").starts_with("0\t");
    let tools = have("unshare (util-linux)", &["unshare", "--version"])
        && have("setpriv (util-linux)", &["setpriv", "--version"]);
    if !is_root || !tools {
        assert!(
            std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
            "CI runs as root with util-linux (unshare, setpriv)"
        );
        eprintln!("note: needs root, unshare and setpriv; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
    let start = || {
        let data = data.to_str().unwrap();
        let script = format!(
            "mount --bind {data} {data} && mount -o remount,bind,ro / && exec setpriv \
             --reuid={NOBODY} --regid={NOBODY} --clear-groups --no-new-privs \"$0\" node \
             --data-dir {data} --shards 10 --cores 1 --listen 127.0.0.1:0"
        );
        let mut command = Command::new("unshare");
        command
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .arg(env!("CARGO_BIN_EXE_floe"));
        try_start_command(command).unwrap_or_else(|e| panic!("node did not start: {e}"))
    };
    let mut node = start();
    let pid = node.child.id();
    assert!(status_field(pid, "Uid:").starts_with(&NOBODY.to_string()));
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    let blob = blob_bytes(300_000, 5);
    let id = store_new(&node.url, &blob, 2);
    assert_eq!(get(&node.url, &format!("/v1/blobs/{id}")).1, blob);
    node.stop();
    let node = start();
    assert_eq!(
        get(&node.url, &format!("/v1/blobs/{id}")).1,
        blob,
        "after a restart"
    );
    // Everything it wrote is in its data directory, owned by its user.
    let foreign: Vec<_> = walk(&data)
        .into_iter()
        .filter(|p| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap()) != NOBODY)
        .collect();
    assert!(
        foreign.is_empty(),
        "files not owned by the node's user: {foreign:?}"
    );
}

fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}
