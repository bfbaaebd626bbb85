//! End-to-end tests of the control plane (issue 17, as far as it is built): `floe committee`
//! against a real etcd (Debian's `etcd-server`, started by the test on free ports).

mod common;
use common::*;

use std::process::Command;

/// Runs `floe committee ARGS`: (success, stdout + stderr).
fn committee(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floe"))
        .arg("committee")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn committee_init_and_show_through_a_real_etcd() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("committee.toml");
    std::fs::write(
        &file,
        "n_shards = 10\nepoch_seconds = 3600\n\
         [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:7001\"\nshards = [\"0-4\"]\n\
         [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:7002\"\nshards = [\"5-8\", 9]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let url = etcd.url.clone();

    let (ok, text) = committee(&["show", "--etcd", &url]);
    assert!(!ok && text.contains("floe committee init"), "{text}");

    let (ok, text) = committee(&["init", file, "--etcd", &url]);
    assert!(ok, "{text}");
    assert!(text.contains("epoch 0 of 2 nodes (n = 10)"), "{text}");

    let (ok, text) = committee(&["show", "--json", "--etcd", &url]);
    assert!(ok, "{text}");
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["epoch"]["epoch"], 0);
    assert_eq!(shown["committee"]["nShards"], 10);
    assert_eq!(shown["committee"]["epochSeconds"], 3600);
    assert_eq!(shown["committee"]["members"][1]["name"], "b");
    assert_eq!(
        shown["committee"]["members"][1]["shards"],
        serde_json::json!([5, 6, 7, 8, 9])
    );
    let (ok, text) = committee(&["show", "--etcd", &url]);
    assert!(
        ok && text.contains("b            127.0.0.1:7002           5 shards: 5-9"),
        "{text}"
    );

    // Initialised once; another prefix is another control plane.
    let (ok, text) = committee(&["init", file, "--etcd", &url]);
    assert!(!ok && text.contains("already holds epoch 0"), "{text}");
    let (ok, text) = committee(&["init", file, "--etcd", &url, "--etcd-prefix", "/other"]);
    assert!(ok, "{text}");

    // A committee file floe would refuse is refused before etcd is touched.
    std::fs::write(
        dir.path().join("bad.toml"),
        "n_shards = 10\n[[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nshards = [\"0-4\"]\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    let (ok, text) = committee(&[
        "init",
        bad.to_str().unwrap(),
        "--etcd",
        &url,
        "--etcd-prefix",
        "/bad",
    ]);
    assert!(!ok && text.contains("shard 5 belongs to no node"), "{text}");

    // etcd down: a clear error within the timeout, not a hang.
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    let started = std::time::Instant::now();
    let (ok, text) = committee(&["show", "--etcd", &url]);
    assert!(!ok && text.contains("cannot be reached"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
