//! End-to-end tests of the control plane (issue 17, as far as it is built): `floe committee`
//! against a real etcd (Debian's `etcd-server`, started by the test on free ports).

mod common;
use common::*;

use std::process::Command;

/// Runs `floe committee ARGS`: (success, stdout + stderr).
fn committee(args: &[&str]) -> (bool, String) {
    floe(&[&["committee"], args].concat())
}

/// Runs `floe ARGS`: (success, stdout + stderr).
fn floe(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floe"))
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
    // The first epoch is the one the file's clock is at (genesis 0, epochs of an hour), so a
    // cluster moving from a committee file to etcd keeps its blobs' end epochs.
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    assert!(text.contains("of 2 nodes (n = 10)"), "{text}");
    let first: u64 = text["epoch ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first == hour || first == hour + 1, "{text}");

    let (ok, text) = committee(&["show", "--json", "--etcd", &url]);
    assert!(ok, "{text}");
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["epoch"]["epoch"], first);
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
    assert!(
        !ok && text.contains(&format!("already holds epoch {first}")),
        "{text}"
    );
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
    let start = |i: usize, name: &str| on_etcd(dir.path(), name, ports[i], &url, "");
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

/// Starts node `name` on one core at 127.0.0.1:`port`, its committee from etcd at `etcd`
/// (URLs), its data in `dir/name`, with `config` (node.toml lines) if any.
fn on_etcd(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    etcd: &str,
    config: &str,
) -> Result<NodeProcess, String> {
    let data = dir.join(name);
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    try_start_at(
        &format!("127.0.0.1:{port}"),
        &[
            "--config",
            file.to_str().unwrap(),
            "--etcd",
            etcd,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--cores",
            "1",
        ],
        &[],
    )
}

/// Free loopback ports.
fn ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Polls `check` every 50 ms until it holds or `seconds` pass; the time it took.
fn within(seconds: u64, what: &str, mut check: impl FnMut() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(seconds),
            "{what}: not within {seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    started.elapsed()
}

/// Whether node `url` holds blob `id`'s metadata itself (the node API answers from its own
/// store only).
fn holds_metadata(url: &str, id: &str) -> bool {
    get(url, &format!("/v1/blobs/{id}/metadata")).0 == 200
}

/// A committee of three nodes at n = 100 on a real etcd: blobs are registered, nodes learn of
/// new blobs and deletions through the registry (not by listing peers), a node that was down
/// catches up from its revision (or, once etcd compacted past it, by reading the whole
/// registry), epochs advance by one elected node, and with etcd down reads go on while
/// stores answer 503, all resuming when it returns.
#[test]
fn a_committee_on_etcd_registers_blobs_and_follows_the_registry() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = ports(3);
    let names = ["a", "b", "c"];
    let file = dir.path().join("committee.toml");
    std::fs::write(
        &file,
        format!(
            "n_shards = 100\nepoch_seconds = 2\ngenesis_unix_seconds = 0\n\
             [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:{}\"\nshards = [\"0-33\"]\n\
             [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:{}\"\nshards = [\"34-66\"]\n\
             [[nodes]]\nname = \"c\"\naddress = \"127.0.0.1:{}\"\nshards = [\"67-99\"]\n",
            ports[0], ports[1], ports[2]
        ),
    )
    .unwrap();
    let url = etcd.url.clone();
    let (ok, text) = committee(&["init", file.to_str().unwrap(), "--etcd", &url]);
    assert!(ok, "{text}");
    let config = "sync_interval_seconds = 1\ncluster_secret = \"the same on every node\"\n";
    let start = |i: usize| {
        on_etcd(dir.path(), names[i], ports[i], &url, config)
            .unwrap_or_else(|e| panic!("node {} did not start: {e}", names[i]))
    };
    let mut nodes: Vec<Option<NodeProcess>> = (0..3).map(|i| Some(start(i))).collect();
    let node_url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);

    // 20 blobs through a, each read back through c; each registered once in etcd.
    let mut ids = Vec::new();
    for i in 0..20u64 {
        let blob = blob_bytes(1000 + 7919 * i as usize, i);
        let (status, answer) = store_deletable(&node_url(0), &blob, i % 2 == 0);
        assert_eq!(status, 200, "{answer}");
        let id = answer["newlyCreated"]["blobId"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, back) = get(&node_url(2), &format!("/v1/blobs/{id}"));
        assert!(
            status == 200 && back == blob,
            "blob {i} read back through c"
        );
        ids.push(id);
    }
    let keys = etcd
        .ctl(&["get", "--prefix", "/floe/blobs/", "--keys-only"])
        .unwrap();
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 20, "{keys}");

    // Peers authenticate with the cluster secret (every store above went through it): the
    // node API's writes and shard pages refuse anyone else.
    let (status, body) = run(
        ureq::http::Request::put(format!("{}/v1/blobs/{}/metadata", node_url(1), ids[1])),
        b"anything",
    );
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"]["code"], "peerUnauthorized");
    let forged = "a 0 0000000000000000000000000000000000000000000000000000000000000000";
    let (status, _) = get_with(
        &node_url(1),
        "/v1/shards/40/slivers",
        &[("x-floe-peer", forged)],
    );
    assert_eq!(status, 401);
    let (status, body) = run(
        ureq::http::Request::delete(format!("{}/v1/blobs/{}/metadata", node_url(2), ids[1])),
        &[],
    );
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

    // A blob stored for one epoch expires everywhere by the same epoch, and leaves etcd.
    let short = blob_bytes(4000, 77);
    let (status, body) = run(
        ureq::http::Request::put(format!("{}/v1/blobs?epochs=1", node_url(0))),
        &short,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let short_id = json(&body)["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();

    // Epochs advance, by one node: every node sees the same epoch, and one leads.
    let epoch = |i: usize| {
        json(&get(&node_url(i), "/v1/health").1)["epoch"]
            .as_u64()
            .unwrap()
    };
    let first = epoch(0);
    within(15, "the epoch advances", || epoch(0) >= first + 2);
    within(10, "every node sees the epoch", || {
        let e = epoch(0);
        (0..3).all(|i| epoch(i) == e)
    });
    within(10, "the short-lived blob expires on every node", || {
        (0..3).all(|i| get(&node_url(i), &format!("/v1/blobs/{short_id}")).0 == 404)
    });
    within(10, "its registry record is swept", || {
        etcd.ctl(&["get", &format!("/floe/blobs/{short_id}"), "--keys-only"])
            .is_some_and(|out| out.trim().is_empty())
    });
    let leaders: usize = (0..3)
        .map(|i| metric(&node_url(i), "floe_control_leader") as usize)
        .sum();
    assert_eq!(leaders, 1, "exactly one node advances the epochs");

    // c is down while 5 blobs are stored and one is deleted (a and b hold n - f shards).
    nodes[2].take().unwrap().stop();
    let mut while_down = Vec::new();
    for i in 0..5u64 {
        let blob = blob_bytes(5000 + i as usize, 100 + i);
        let (status, answer) = store_deletable(&node_url(0), &blob, false);
        assert_eq!(status, 200, "{answer}");
        while_down.push(
            answer["newlyCreated"]["blobId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let deleted = ids[0].clone(); // stored deletable
    let (status, body) = run(
        ureq::http::Request::delete(format!("{}/v1/blobs/{deleted}", node_url(1))),
        &[],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(holds_metadata(&node_url(2 - 1), &ids[1]));
    // Back: c catches up from its revision (no full read), learns the blobs and the deletion,
    // and rebuilds its slivers of them.
    nodes[2] = Some(start(2));
    let took = within(20, "c learns the blobs stored while it was down", || {
        while_down.iter().all(|id| holds_metadata(&node_url(2), id))
    });
    eprintln!("c caught up in {took:?}");
    within(20, "c applies the deletion", || {
        get(&node_url(2), &format!("/v1/blobs/{deleted}/metadata")).0 == 404
    });
    assert_eq!(metric(&node_url(2), "floe_registry_full_reads"), 0.0);
    within(30, "c rebuilds its slivers of them", || {
        metric(&node_url(2), "floe_heal_slivers_total{result=\"ok\"}") >= 5.0 * 33.0 * 2.0
    });

    // A node learns of a blob stored elsewhere through the registry alone: a blob stored while
    // c was away is on a and b; its registry event reaches a node started with an empty disk.
    nodes[1].take().unwrap().stop();
    std::fs::remove_dir_all(dir.path().join("b")).unwrap();
    nodes[1] = Some(start(1));
    within(
        20,
        "a wiped b reads the whole registry and learns every live blob",
        || {
            ids[1..]
                .iter()
                .chain(&while_down)
                .all(|id| holds_metadata(&node_url(1), id))
        },
    );
    // The read is counted once it ended, which may be just after its records were applied.
    within(10, "b counted one full read", || {
        metric(&node_url(1), "floe_registry_full_reads") == 1.0
    });

    // etcd compacts past c's revision while c is down: c reads the whole registry.
    nodes[2].take().unwrap().stop();
    let late = blob_bytes(3333, 999);
    let (status, answer) = store_deletable(&node_url(0), &late, false);
    assert_eq!(status, 200, "{answer}");
    let late_id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();
    let revision = etcd.revision().to_string();
    etcd.ctl(&["compact", &revision]).expect("etcdctl compact");
    nodes[2] = Some(start(2));
    within(20, "c learns the blob after the compaction", || {
        holds_metadata(&node_url(2), &late_id)
    });
    within(10, "c counted its full read", || {
        metric(&node_url(2), "floe_registry_full_reads") >= 1.0
    });

    // etcd down: reads go on, stores answer 503 with the reason; a node restarted meanwhile
    // starts with the committee it saw last.
    etcd.kill();
    within(15, "stores answer 503 while etcd is down", || {
        let (status, answer) = store_deletable(&node_url(0), &blob_bytes(777, 5), false);
        status == 503 && answer["error"]["code"] == "registryUnavailable"
    });
    for i in 0..3 {
        let (status, back) = get(&node_url(i), &format!("/v1/blobs/{late_id}"));
        assert!(
            status == 200 && back == late,
            "node {i} reads while etcd is down"
        );
    }
    nodes[1].take().unwrap().stop();
    nodes[1] = Some(start(1));
    let (status, back) = get(&node_url(1), &format!("/v1/blobs/{}", ids[3]));
    assert_eq!(status, 200);
    assert_eq!(back, blob_bytes(1000 + 7919 * 3, 3));
    etcd.restart();
    let again = blob_bytes(4444, 1234);
    within(20, "stores resume once etcd is back", || {
        store_deletable(&node_url(0), &again, false).0 == 200
    });
    let (_, answer) = store_deletable(&node_url(0), &again, false);
    let again_id = answer["alreadyCertified"]["blobId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!again_id.is_empty(), "{answer}");
    let (status, back) = get(&node_url(2), &format!("/v1/blobs/{again_id}"));
    assert!(status == 200 && back == again);
    drop(nodes);
}

/// Stores `blob` through `url` (deletable or not) for 1000 epochs.
fn store_deletable(url: &str, blob: &[u8], deletable: bool) -> (u16, serde_json::Value) {
    let query = if deletable { "&deletable=true" } else { "" };
    let (status, body) = run(
        ureq::http::Request::put(format!("{url}/v1/blobs?epochs=1000{query}")),
        blob,
    );
    let answer = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, answer)
}

/// A committee file for `nodes` (name, port, shard ranges) at n = 100, epochs of an hour.
fn committee_file(path: &std::path::Path, nodes: &[(&str, u16, &str)]) {
    let mut text = String::from("n_shards = 100\nepoch_seconds = 3600\n");
    for (name, port, shards) in nodes {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nshards = [{shards}]\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// Loads the first committee of three nodes a, b, c (`ports`) at n = 100 into etcd.
fn init_three(dir: &std::path::Path, ports: &[u16], etcd: &str) {
    let file = dir.join("first.toml");
    committee_file(
        &file,
        &[
            ("a", ports[0], "\"0-33\""),
            ("b", ports[1], "\"34-66\""),
            ("c", ports[2], "\"67-99\""),
        ],
    );
    let (ok, text) = committee(&["init", file.to_str().unwrap(), "--etcd", etcd]);
    assert!(ok, "{text}");
}

/// `floe committee status --json`.
fn move_status(url: &str) -> serde_json::Value {
    let (ok, text) = committee(&["status", "--json", "--etcd", url]);
    assert!(ok, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Waits until `floe committee status` says done; the status then.
fn moves_done(url: &str, seconds: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    within(seconds, "the moves finish", || {
        last = move_status(url);
        last["done"] == true
    });
    last
}

/// Committee changes on etcd with shard migration: a fourth node joins and pulls its shards
/// from two others while reads and stores go on, about one shard's bytes per shard; a giver
/// killed afterwards loses nothing; shards of a dead node are rebuilt from recovery symbols;
/// a node removed from the committee drops its data only after the new owner confirmed it.
#[test]
fn shards_move_between_nodes_at_epoch_changes() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = ports(4);
    let names = ["a", "b", "c", "d"];
    let url = etcd.url.clone();
    init_three(dir.path(), &ports, &url);
    let start = |i: usize| {
        on_etcd(dir.path(), names[i], ports[i], &url, "")
            .unwrap_or_else(|e| panic!("node {} did not start: {e}", names[i]))
    };
    let node_url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let mut nodes: Vec<Option<NodeProcess>> = (0..3).map(|i| Some(start(i))).collect();
    nodes.push(None);

    // 20 blobs on a, b and c.
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..20u64 {
        let blob = blob_bytes(20_000 + 9_973 * i as usize, 500 + i);
        let (status, answer) = store_deletable(&node_url(0), &blob, false);
        assert_eq!(status, 200, "{answer}");
        let id = answer["newlyCreated"]["blobId"]
            .as_str()
            .unwrap()
            .to_string();
        blobs.push((id, blob));
    }

    // d joins, taking 25-33 from a and 59-66 from b, while a client stores and reads.
    let second = dir.path().join("second.toml");
    committee_file(
        &second,
        &[
            ("a", ports[0], "\"0-24\""),
            ("b", ports[1], "\"34-58\""),
            ("c", ports[2], "\"67-99\""),
            ("d", ports[3], "\"25-33\", \"59-66\""),
        ],
    );
    let (ok, text) = committee(&["propose", second.to_str().unwrap(), "--now", "--etcd", &url]);
    assert!(ok, "{text}");
    assert!(text.contains("17 shards move"), "{text}");
    assert!(text.contains("a -> d: 9 shards (25-33)"), "{text}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, urls) = (stop.clone(), (node_url(0), node_url(2)));
        let old: Vec<(String, Vec<u8>)> = blobs.clone();
        std::thread::spawn(move || {
            let mut done = Vec::new();
            for i in 0..400u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let blob = blob_bytes(3_000 + i as usize, 10_000 + i);
                let (status, answer) = store_deletable(&urls.0, &blob, false);
                assert_eq!(status, 200, "a store during the move: {answer}");
                done.push((
                    answer["newlyCreated"]["blobId"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    blob,
                ));
                let (id, bytes) = &old[i as usize % old.len()];
                let (status, back) = get(&urls.1, &format!("/v1/blobs/{id}"));
                assert!(status == 200 && &back == bytes, "a read during the move");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            done
        })
    };
    nodes[3] = Some(start(3));
    let status = moves_done(&url, 60);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stored_during = load
        .join()
        .expect("reads and stores kept succeeding during the move");
    assert!(!stored_during.is_empty());
    let moves = status["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 17, "{status}");
    let pulled: u64 = moves.iter().map(|m| m["slivers"].as_u64().unwrap()).sum();
    let bytes: u64 = moves.iter().map(|m| m["bytes"].as_u64().unwrap()).sum();
    eprintln!("moved 17 shards: {pulled} slivers pulled, {bytes} bytes; {status}");
    assert!(
        pulled >= 20 * 17 * 2,
        "every old blob's slivers were pulled, not rebuilt: {status}"
    );
    blobs.extend(stored_during);

    // The givers drop what they gave away once d confirmed it; a giver killed then loses
    // nothing: every blob reads back through d, and d holds its pairs.
    within(10, "a and b drop the shards they gave away", || {
        metric(&node_url(0), "floe_migration_dropped_shards") == 9.0
            && metric(&node_url(1), "floe_migration_dropped_shards") == 8.0
    });
    assert_eq!(get(&node_url(0), "/v1/shards/30/slivers").0, 404);
    nodes[0].take().unwrap().child.kill().unwrap();
    for (id, blob) in &blobs {
        let (status, back) = get(&node_url(3), &format!("/v1/blobs/{id}"));
        assert!(
            status == 200 && &back == blob,
            "blob {id} through d with a gone"
        );
        let blob_id: floe_codec::BlobId = id.parse().unwrap();
        let pair = blob_id.pair_for_shard(25, 100);
        let (status, _) = get(
            &node_url(3),
            &format!("/v1/blobs/{id}/slivers/{pair}/primary"),
        );
        assert_eq!(status, 200, "d holds its pair of {id}");
    }

    // a is gone for good: its shards go to b, rebuilt from recovery symbols.
    let third = dir.path().join("third.toml");
    committee_file(
        &third,
        &[
            ("b", ports[1], "\"0-24\", \"34-58\""),
            ("c", ports[2], "\"67-99\""),
            ("d", ports[3], "\"25-33\", \"59-66\""),
        ],
    );
    let (ok, text) = committee(&["propose", third.to_str().unwrap(), "--now", "--etcd", &url]);
    assert!(ok, "{text}");
    let status = moves_done(&url, 90);
    let recovered: u64 = status["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["recovered"].as_u64().unwrap())
        .sum();
    assert!(recovered >= blobs.len() as u64 * 25 * 2, "{status}");

    // c leaves: while d is down its shards cannot move, and c keeps them; once d is back and
    // confirmed them, c drops them.
    nodes[3].take().unwrap().stop();
    let fourth = dir.path().join("fourth.toml");
    committee_file(
        &fourth,
        &[
            ("b", ports[1], "\"0-24\", \"34-58\""),
            ("d", ports[3], "\"25-33\", \"59-99\""),
        ],
    );
    let (ok, text) = committee(&["propose", fourth.to_str().unwrap(), "--now", "--etcd", &url]);
    assert!(ok, "{text}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(move_status(&url)["done"], false);
    assert_eq!(metric(&node_url(2), "floe_migration_dropped_shards"), 0.0);
    let (status, page) = get(&node_url(2), "/v1/shards/70/slivers");
    assert!(
        status == 200 && page.len() > 1000,
        "c still serves what it gives away"
    );
    nodes[3] = Some(start(3));
    moves_done(&url, 60);
    within(10, "c drops its shards once d confirmed them", || {
        metric(&node_url(2), "floe_migration_dropped_shards") == 33.0
    });
    assert_eq!(get(&node_url(2), "/v1/shards/70/slivers").0, 404);
    nodes[2].take().unwrap().stop();
    for (id, blob) in &blobs {
        let (status, back) = get(&node_url(1), &format!("/v1/blobs/{id}"));
        assert!(
            status == 200 && &back == blob,
            "blob {id} through b on b and d alone"
        );
    }
    drop(nodes);
}

/// With a three-member etcd cluster, killing one member (the one the nodes talk to) does not
/// stop the floe cluster: stores (which register blobs) and reads go on, and nodes learn of new blobs.
#[test]
fn the_floe_cluster_goes_on_when_an_etcd_member_dies() {
    let Some(mut etcd) = EtcdCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = ports(3);
    let names = ["a", "b", "c"];
    let urls = etcd.urls.join(",");
    init_three(dir.path(), &ports, &urls);
    let nodes: Vec<NodeProcess> = (0..3)
        .map(|i| on_etcd(dir.path(), names[i], ports[i], &urls, "").unwrap())
        .collect();
    let node_url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let before = blob_bytes(50_000, 1);
    let (status, answer) = store_deletable(&node_url(0), &before, false);
    assert_eq!(status, 200, "{answer}");
    let before_id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();

    // The member the nodes' control planes talk to: each connects to one member at a time,
    // the first call of a process (the committee read at start) to the first, the next (the
    // control plane's thread) to the second. So this kill makes every node fail over.
    etcd.kill(1);
    // Stores register through the surviving members (etcd elects a new leader within about
    // a second; a store in that window may answer 503, and is retried as a client would).
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let blob = blob_bytes(10_000 + i as usize, 100 + i);
        let mut answer = serde_json::Value::Null;
        within(20, "a store after an etcd member died", || {
            let (status, a) = store_deletable(&node_url(i as usize % 3), &blob, false);
            answer = a;
            status == 200
        });
        let id = answer["newlyCreated"]["blobId"]
            .as_str()
            .or(answer["alreadyCertified"]["blobId"].as_str())
            .unwrap()
            .to_string();
        let (status, back) = get(&node_url((i as usize + 1) % 3), &format!("/v1/blobs/{id}"));
        assert!(status == 200 && back == blob);
        ids.push(id);
    }
    let (status, back) = get(&node_url(2), &format!("/v1/blobs/{before_id}"));
    assert!(status == 200 && back == before);
    let keys = Command::new("etcdctl")
        .args([
            "--endpoints",
            &urls,
            "get",
            "--prefix",
            "/floe/blobs/",
            "--keys-only",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&keys.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(registered, 11);
    for i in 0..3 {
        assert_eq!(
            metric(&node_url(i), "floe_control_connected"),
            1.0,
            "node {i}"
        );
    }
    drop(nodes);
}

/// `floe cluster up --etcd` starts a local etcd beside the nodes, loads the committee into it
/// and runs the nodes from it; `down` stops both.
#[test]
fn cluster_up_with_etcd_runs_the_nodes_on_a_local_etcd() {
    // Skips (or, in CI, fails) like every etcd test when etcd is missing.
    let Some(probe) = Etcd::start() else {
        return;
    };
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("c");
    let floe = |args: &[&str]| {
        let (ok, text) = floe(args);
        assert!(ok, "{args:?}: {text}");
        text
    };
    let text = floe(&[
        "cluster",
        "up",
        "--etcd",
        "--nodes",
        "3",
        "--shards",
        "10",
        "--dir",
        cluster.to_str().unwrap(),
    ]);
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd: "))
        .and_then(|l| l.split(' ').next())
        .expect("the etcd URL is printed")
        .to_string();
    let nodes: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("address = \""))
        .map(|a| format!("http://{}", a.trim_end_matches('"')))
        .collect();
    assert_eq!(nodes.len(), 3, "{text}");
    let shown = floe(&["committee", "show", "--etcd", &url]);
    assert!(shown.contains("3 nodes"), "{shown}");
    let blob = blob_bytes(100_000, 3);
    let (status, answer) = store_deletable(&nodes[0], &blob, false);
    assert_eq!(status, 200, "{answer}");
    let id = answer["newlyCreated"]["blobId"].as_str().unwrap();
    let (status, back) = get(&nodes[2], &format!("/v1/blobs/{id}"));
    assert!(status == 200 && back == blob);
    let health = json(&get(&nodes[1], "/v1/health").1);
    assert_eq!(health["control"]["connected"], true, "{health}");
    let pid: i32 = std::fs::read_to_string(cluster.join("etcd/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    floe(&["cluster", "down", "--dir", cluster.to_str().unwrap()]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .is_empty(),
        "etcd stopped"
    );
}

/// Without `--now`, a proposal takes effect when the current epoch ends: the node that
/// advances epochs begins the next one with the proposed committee, and its moves run.
#[test]
fn a_proposal_takes_effect_at_the_end_of_the_epoch() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = ports(2);
    let url = etcd.url.clone();
    let write = |name: &str, a: &str, b: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "n_shards = 10\nepoch_seconds = 3\n\
                 [[nodes]]\nname = \"a\"\naddress = \"127.0.0.1:{}\"\nshards = [{a}]\n\
                 [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:{}\"\nshards = [{b}]\n",
                ports[0], ports[1]
            ),
        )
        .unwrap();
        path
    };
    let first = write("first.toml", "\"0-4\"", "\"5-9\"");
    let (ok, text) = committee(&["init", first.to_str().unwrap(), "--etcd", &url]);
    assert!(ok, "{text}");
    let nodes: Vec<NodeProcess> = ["a", "b"]
        .iter()
        .zip(&ports)
        .map(|(name, port)| on_etcd(dir.path(), name, *port, &url, "").unwrap())
        .collect();
    let blob = blob_bytes(300_000, 8);
    let (status, answer) = store_deletable(&nodes[0].url, &blob, false);
    assert_eq!(status, 200, "{answer}");
    let id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = |what: &str| -> serde_json::Value {
        let (ok, text) = committee(&[what, "--json", "--etcd", &url]);
        assert!(ok, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let before = shown("show")["epoch"]["epoch"].as_u64().unwrap();
    let second = write("second.toml", "\"0-3\"", "\"4-9\"");
    let (ok, text) = committee(&["propose", second.to_str().unwrap(), "--etcd", &url]);
    assert!(
        ok && text.contains("begins when the current one ends"),
        "{text}"
    );
    // Not yet: the current epoch keeps its committee until it ends.
    assert_eq!(
        shown("show")["committee"]["members"][0]["shards"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    within(
        15,
        "the next epoch begins with the proposed committee",
        || {
            let now = shown("show");
            now["epoch"]["epoch"].as_u64().unwrap() > before
                && now["committee"]["members"][0]["shards"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 4
        },
    );
    let status = moves_done(&url, 30);
    assert_eq!(status["moves"][0]["shard"], 4, "{status}");
    assert_eq!(status["moves"][0]["from"], "a");
    assert_eq!(status["moves"][0]["to"], "b");
    assert!(
        status["moves"][0]["slivers"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let (status, back) = get(&nodes[1].url, &format!("/v1/blobs/{id}"));
    assert!(status == 200 && back == blob);
}

/// A giver that is down while its move finishes, and across a later epoch change, drops the
/// shard's records when it returns: it keeps only what it holds or still gives away.
#[test]
fn a_giver_down_across_epoch_changes_drops_what_it_gave_away() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = ports(3);
    let url = etcd.url.clone();
    let names = ["a", "b", "c"];
    let write = |file: &str, shards: [&str; 3]| {
        let mut text = String::from("n_shards = 10\nepoch_seconds = 3600\n");
        for ((name, port), shards) in names.iter().zip(&ports).zip(shards) {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nshards = [{shards}]\n"
            ));
        }
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = write("1.toml", ["\"0-3\"", "\"4-6\"", "\"7-9\""]);
    let (ok, text) = committee(&["init", first.to_str().unwrap(), "--etcd", &url]);
    assert!(ok, "{text}");
    let start = |i: usize| on_etcd(dir.path(), names[i], ports[i], &url, "").unwrap();
    let mut nodes: Vec<Option<NodeProcess>> = (0..3).map(|i| Some(start(i))).collect();
    let node_url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let blob = blob_bytes(200_000, 21);
    let (status, answer) = store_deletable(&node_url(0), &blob, false);
    assert_eq!(status, 200, "{answer}");
    let id = answer["newlyCreated"]["blobId"]
        .as_str()
        .unwrap()
        .to_string();
    let pairs_held = |i: usize| -> Vec<u64> {
        let status = json(&get(&node_url(i), &format!("/v1/blobs/{id}/status")).1);
        status["primaryPairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect()
    };
    let blob_id: floe_codec::BlobId = id.parse().unwrap();
    let pair_of = |shard: usize| blob_id.pair_for_shard(shard, 10) as u64;
    assert!(pairs_held(1).contains(&pair_of(4)));

    // b is down: shard 4 moves to c (rebuilt from recovery symbols), then another epoch begins.
    nodes[1].take().unwrap().stop();
    let second = write("2.toml", ["\"0-3\"", "\"5-6\"", "4, \"7-9\""]);
    let (ok, text) = committee(&["propose", second.to_str().unwrap(), "--now", "--etcd", &url]);
    assert!(ok, "{text}");
    moves_done(&url, 60);
    let third = write("3.toml", ["\"1-3\"", "\"5-6\"", "0, 4, \"7-9\""]);
    let (ok, text) = committee(&["propose", third.to_str().unwrap(), "--now", "--etcd", &url]);
    assert!(ok, "{text}");
    moves_done(&url, 60);

    // b returns: shard 4 is neither its own nor moving from it any more, so its records go.
    nodes[1] = Some(start(1));
    let held = pairs_held(1);
    assert!(
        !held.contains(&pair_of(4)),
        "b still holds shard 4's pair: {held:?}"
    );
    assert!(held.contains(&pair_of(5)), "{held:?}");
    let (status, back) = get(&node_url(1), &format!("/v1/blobs/{id}"));
    assert!(status == 200 && back == blob);
}

/// The S3 namespace in etcd answers every operation as the node-local one (redb) does: the
/// same random sequence of bucket, object, listing (prefixes, delimiters, pages, continuation)
/// and multipart operations against both, every answer compared. Prints its seed; replay with
/// FLOE_SEED.
#[test]
fn the_etcd_namespace_answers_as_the_local_one_does() {
    use floe_control::namespace::EtcdNamespace;
    use floe_storage::namespace::{Namespace, Object, Part, Piece};
    use rand::{Rng, SeedableRng};

    let Some(etcd) = Etcd::start() else {
        return;
    };
    let seed: u64 = std::env::var("FLOE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (replay with FLOE_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let local = Namespace::open(&dir.path().join("ns.redb")).unwrap();
    let remote = EtcdNamespace::new(std::slice::from_ref(&etcd.url), "/floe/").unwrap();
    // Only whether each call succeeded and how it failed is compared for calls that return
    // released blobs: the local namespace releases, etcd's keeps every blob.
    let kind = |r: &Result<Vec<[u8; 32]>, floe_storage::namespace::NamespaceError>| match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("{e}"),
    };
    let segments = ["a", "b", "c-", "d.x", "é"];
    let key = |rng: &mut rand::rngs::StdRng| -> String {
        let depth = rng.gen_range(1..=3);
        let mut parts: Vec<&str> = (0..depth)
            .map(|_| segments[rng.gen_range(0..segments.len())])
            .collect();
        if rng.gen_bool(0.2) {
            parts.push("");
        }
        parts.join("/")
    };
    let object = |rng: &mut rand::rngs::StdRng| Object {
        pieces: vec![Piece {
            blob_id: [rng.gen(); 32],
            size: rng.gen_range(0..100),
        }],
        size: rng.gen_range(0..1000),
        etag: format!("\"{}\"", rng.gen::<u32>()),
        last_modified_unix_seconds: 1_700_000_000,
        ..Default::default()
    };
    for bucket in ["one", "two"] {
        assert_eq!(
            format!("{:?}", local.create_bucket(bucket)),
            format!("{:?}", remote.create_bucket(bucket))
        );
    }
    assert_eq!(
        format!("{:?}", local.create_bucket("one")),
        format!("{:?}", remote.create_bucket("one"))
    );
    let mut uploads: Vec<String> = Vec::new();
    let (mut pages_with_objects, mut pages_with_prefixes, mut completed) = (0, 0, 0);
    for step in 0..400 {
        let bucket = ["one", "two", "none"][rng.gen_range(0..3)];
        match rng.gen_range(0..10) {
            0..=3 => {
                let (k, o, inm) = (key(&mut rng), object(&mut rng), rng.gen_bool(0.2));
                assert_eq!(
                    kind(&local.put_object(bucket, &k, &o, inm)),
                    kind(&remote.put_object(bucket, &k, &o, inm)),
                    "step {step}: put {bucket}/{k}"
                );
            }
            4 => {
                let k = key(&mut rng);
                assert_eq!(
                    kind(&local.delete_object(bucket, &k)),
                    kind(&remote.delete_object(bucket, &k)),
                    "step {step}: delete {bucket}/{k}"
                );
                assert_eq!(
                    local.object(bucket, &k).unwrap(),
                    remote.object(bucket, &k).unwrap()
                );
            }
            5..=7 => {
                let prefix = ["", "a", "a/", "b/c-", "é/"][rng.gen_range(0..5)];
                let delimiter = [None, Some("/"), Some("-")][rng.gen_range(0..3)];
                let max_keys = rng.gen_range(1..6);
                let mut after: Option<String> = None;
                // Page through the whole listing, comparing each page.
                for page in 0..100 {
                    let l = local.list(bucket, prefix, delimiter, after.as_deref(), max_keys);
                    let r = remote.list(bucket, prefix, delimiter, after.as_deref(), max_keys);
                    assert_eq!(
                        format!("{l:?}"),
                        format!("{r:?}"),
                        "step {step} page {page}: list {bucket} {prefix:?} {delimiter:?} after {after:?}"
                    );
                    if let Ok(l) = &l {
                        pages_with_objects += usize::from(!l.objects.is_empty());
                        pages_with_prefixes += usize::from(!l.common_prefixes.is_empty());
                    }
                    match l.ok().and_then(|l| l.next_after) {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
            }
            8 => {
                let (id, k, o) = (format!("up{step}"), key(&mut rng), object(&mut rng));
                assert_eq!(
                    format!("{:?}", local.create_upload(&id, bucket, &k, &o)),
                    format!("{:?}", remote.create_upload(&id, bucket, &k, &o))
                );
                uploads.push(id);
                let part = Part {
                    pieces: o.pieces.clone(),
                    size: 7,
                    md5_hex: "00".into(),
                    last_modified_unix_seconds: 1_700_000_000,
                };
                let id = &uploads[rng.gen_range(0..uploads.len())];
                let number = rng.gen_range(1..4);
                assert_eq!(
                    kind(&local.put_part(id, number, &part)),
                    kind(&remote.put_part(id, number, &part))
                );
                assert_eq!(
                    format!("{:?}", local.parts(id, 0, 10)),
                    format!("{:?}", remote.parts(id, 0, 10))
                );
            }
            _ => {
                let listed_l = local.uploads(bucket, "", None, 100);
                let listed_r = remote.uploads(bucket, "", None, 100);
                assert_eq!(
                    format!("{listed_l:?}"),
                    format!("{listed_r:?}"),
                    "step {step}"
                );
                if let Some(id) = uploads.pop() {
                    let build = |u: &floe_storage::namespace::Upload, parts: &[(u32, Part)]| {
                        let mut object = u.template.clone();
                        object.part_sizes = parts.iter().map(|(_, p)| p.size).collect();
                        Ok::<_, String>(object)
                    };
                    let (l, r) = if rng.gen_bool(0.5) {
                        (
                            local
                                .complete_upload(&id, build)
                                .map(|c| c.map(|(u, o, _)| (u, o))),
                            remote
                                .complete_upload(&id, build)
                                .map(|c| c.map(|(u, o, _)| (u, o))),
                        )
                    } else {
                        (
                            local.abort_upload(&id).map(|_| Ok(Default::default())),
                            remote.abort_upload(&id).map(|_| Ok(Default::default())),
                        )
                    };
                    assert_eq!(
                        format!("{l:?}"),
                        format!("{r:?}"),
                        "step {step}: finish {id}"
                    );
                    completed += usize::from(matches!(l, Ok(Ok(_))));
                }
            }
        }
    }
    // The sequence exercised what it compares.
    eprintln!("{pages_with_objects} pages with objects, {pages_with_prefixes} with common prefixes, {completed} uploads finished");
    assert!(pages_with_objects > 20 && pages_with_prefixes > 5 && completed > 0);
    // Buckets: a non-empty one stays, an emptied one goes, the same on both.
    for bucket in ["one", "two"] {
        assert_eq!(
            format!("{:?}", local.delete_bucket(bucket)),
            format!("{:?}", remote.delete_bucket(bucket))
        );
    }
    assert_eq!(
        format!("{:?}", local.buckets()),
        format!("{:?}", remote.buckets())
    );
}
