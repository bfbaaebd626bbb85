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

#[test]
fn nodes_take_their_committee_from_etcd() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let file = dir.path().join("committee.toml");
    std::fs::write(
        &file,
        format!(
            "n_shards = 10\n\
             [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:{}\"\nshards = [\"0-4\"]\n\
             [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:{}\"\nshards = [\"5-9\"]\n",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let url = etcd.url.clone();
    let (ok, text) = committee(&["init", file.to_str().unwrap(), "--etcd", &url]);
    assert!(ok, "{text}");
    let start = |i: usize, name: &str| {
        let data = dir.path().join(name);
        try_start_at(
            &format!("127.0.0.1:{}", ports[i]),
            &[
                "--etcd",
                &url,
                "--name",
                name,
                "--data-dir",
                data.to_str().unwrap(),
                "--cores",
                "1",
            ],
            &[],
        )
    };
    let a = start(0, "a").unwrap();
    let b = start(1, "b").unwrap();
    // A blob stored through a is read back through b: both hold the committee from etcd.
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let answer = ureq::put(&format!("{}/v1/blobs?epochs=2", a.url))
        .send(&blob[..])
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(answer["newlyCreated"]["shardsConfirmed"], 10, "{answer}");
    let back = ureq::get(&format!("{}/v1/blobs/{id}", b.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    assert!(back == blob);
    // A name etcd's committee lacks, and a committee file beside etcd, are refused with the fix.
    let err = start(0, "stranger").err().expect("not a member");
    assert!(err.contains("not in the committee in etcd"), "{err}");
    let data = dir.path().join("x");
    let err = try_start(
        &[
            "--etcd",
            &url,
            "--committee",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
    .err()
    .expect("both sources");
    assert!(
        err.contains("both a committee file and etcd_endpoints"),
        "{err}"
    );
    // etcd down at start: the node says so and does not start.
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    let err = try_start(
        &[
            "--etcd",
            &url,
            "--name",
            "a",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
    .err()
    .expect("etcd is down");
    assert!(err.contains("cannot be reached"), "{err}");
    drop((a, b));
}
