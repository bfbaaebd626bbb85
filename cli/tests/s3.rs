//! End-to-end tests of the S3 API: a real node (n = 10, so that a blob holds at most ~1.8 MB
//! and objects span many blobs) driven by the S3 clients users run: boto3 at its defaults,
//! the AWS CLI, s3fs and rclone (scripts in `server/tests/s3/`), and kill -9 during writes.
//!
//! A client that is missing is skipped with a note, unless FLOE_REQUIRE_PYTHON_CLIENTS is set
//! (CI sets it and installs them all).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const KEY: &str = "AKIDFLOETEST";
const SECRET: &str = "floe-test-secret-key";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/tests/s3")
}

/// A node of n = 10 serving S3 with the test key, its data in `data`.
fn start_s3(data: &Path) -> NodeProcess {
    start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--shards",
            "10",
            "--cores",
            "2",
            "--s3-listen",
            "127.0.0.1:0",
        ],
        &[
            ("FLOE_S3_ACCESS_KEY_ID", KEY),
            ("FLOE_S3_SECRET_ACCESS_KEY", SECRET),
        ],
    )
}

fn run_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("python3")
        .arg(scripts().join(script))
        .args(args)
        .env("FLOE_S3_KEY", KEY)
        .env("FLOE_S3_SECRET", SECRET)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

fn blob_bytes_max(node: &NodeProcess) -> u64 {
    let text = ureq::get(&format!("{}/v1/health", node.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(&text).unwrap();
    health["blobBytesMax"].as_u64().unwrap()
}

#[test]
fn boto3_aws_cli_s3fs_and_rclone_use_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_s3(&dir.path().join("data"));
    let endpoint = node
        .s3_url
        .clone()
        .expect("the node prints its S3 endpoint");
    let blob_max = blob_bytes_max(&node).to_string();
    if have("boto3", &["python3", "-c", "import boto3"]) {
        let out = run_script(
            "boto3_suite.py",
            &[],
            &[
                ("FLOE_S3_ENDPOINT", &endpoint),
                ("FLOE_S3_BLOB_MAX", &blob_max),
            ],
        );
        eprintln!("{out}");
    }
    let mut clients = Vec::new();
    if have("the AWS CLI", &["aws", "--version"]) {
        clients.push("aws");
    }
    if have("s3fs", &["python3", "-c", "import s3fs"]) {
        clients.push("s3fs");
    }
    if have("rclone", &["rclone", "version"]) {
        clients.push("rclone");
    }
    if !clients.is_empty() {
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let out = run_script(
            "clients_suite.py",
            &[],
            &[
                ("FLOE_S3_ENDPOINT", &endpoint),
                ("FLOE_S3_WORK", work.to_str().unwrap()),
                ("FLOE_S3_CLIENTS", &clients.join(",")),
            ],
        );
        eprintln!("{out}");
    }
}

#[test]
fn s3_never_runs_open_and_says_how_to_add_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = try_start(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--s3-listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .err()
    .expect("a node with S3 and no key must not start");
    assert!(err.contains("no S3 key"), "{err}");
    assert!(err.contains("FLOE_S3_ACCESS_KEY_ID"), "{err}");
}

#[test]
fn kill_9_during_put_objects_and_multipart_uploads_loses_nothing_acknowledged() {
    if !have("boto3", &["python3", "-c", "import boto3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let journal = dir.path().join("acked.txt");
    for round in 0..2 {
        let mut node = start_s3(&data);
        let endpoint = node.s3_url.clone().unwrap();
        let mut writer = Command::new("python3")
            .arg(scripts().join("crash_suite.py"))
            .args(["write", &endpoint, journal.to_str().unwrap()])
            .env("FLOE_S3_KEY", KEY)
            .env("FLOE_S3_SECRET", SECRET)
            .spawn()
            .unwrap();
        // Writes under way (a part takes ~0.1 s at n = 10 here), then the node dies.
        std::thread::sleep(Duration::from_millis(2500 + 700 * round));
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        let status = writer.wait().unwrap();
        assert!(status.success(), "the writer failed");
        drop(node);
        let node = start_s3(&data);
        let out = run_script(
            "crash_suite.py",
            &[
                "verify",
                node.s3_url.as_deref().unwrap(),
                journal.to_str().unwrap(),
            ],
            &[],
        );
        eprintln!("round {round}: {out}");
        let acked = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert!(acked > 0, "nothing was acknowledged before the kill");
    }
}

#[test]
fn loadgen_reads_a_data_set_through_s3_verified() {
    use clap::Parser;
    use floe_loadgen::cli::{execute, Cli};
    let dir = tempfile::tempdir().unwrap();
    let node = start_s3(&dir.path().join("data"));
    let endpoint = node.s3_url.clone().unwrap();
    let manifest = dir.path().join("m.json");
    // The key the loadgen signs with comes from the environment, as for the AWS tools.
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let cli = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("floe-loadgen").chain(args.iter().copied())).unwrap()
    };
    let mut out = Vec::new();
    let code = execute(
        cli(&[
            "prepare",
            "--target",
            &node.url,
            "--manifest",
            manifest.to_str().unwrap(),
            "--count",
            "6",
            "--size",
            "1KiB..1MiB",
            "--s3",
            &endpoint,
        ]),
        &mut out,
    )
    .unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    let mut out = Vec::new();
    let code = execute(
        cli(&[
            "run",
            "--target",
            &endpoint,
            "--manifest",
            manifest.to_str().unwrap(),
            "--workload",
            "s3:1,s3range:1",
            "--requests",
            "60",
            "-c",
            "3",
            "-t",
            "1",
            "--warmup",
            "0s",
            "--json",
        ]),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["ok"], 60, "{text}");
    assert_eq!(report["verified"], 60, "{text}");
    // A mix of S3 and floe workloads is refused: they go to different endpoints.
    let mut out = Vec::new();
    let refused = execute(
        cli(&[
            "run",
            "--target",
            &endpoint,
            "--manifest",
            manifest.to_str().unwrap(),
            "--workload",
            "s3:1,blob:1",
            "--requests",
            "1",
        ]),
        &mut out,
    );
    assert!(refused.is_err());
}

#[test]
fn node_toml_keys_public_buckets_and_virtual_hosts() {
    if !have("boto3", &["python3", "-c", "import boto3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = "n_shards = 10\ncores = 2\ns3_listen = \"127.0.0.1:0\"\n\
                [s3]\ndomain = \"s3.floe.test\"\npublic_buckets = [\"public\"]\n\
                [[s3.keys]]\naccess_key_id = \"AKIDTOML\"\nsecret_access_key = \"toml-secret-key\"\n";
    std::fs::write(dir.path().join("node.toml"), toml).unwrap();
    let config = dir.path().join("node.toml");
    let data = dir.path().join("data");
    let node = start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            ("FLOE_S3_ACCESS_KEY_ID", KEY),
            ("FLOE_S3_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    let endpoint = node.s3_url.clone().expect("S3 endpoint");
    let out = run_script(
        "config_suite.py",
        &[],
        &[
            ("FLOE_S3_ENDPOINT", &endpoint),
            ("FLOE_S3_KEY2", "AKIDTOML"),
            ("FLOE_S3_SECRET2", "toml-secret-key"),
            ("FLOE_S3_DOMAIN", "s3.floe.test"),
        ],
    );
    eprintln!("{out}");
}

/// `GET path` on `address`, and the answer's status and body.
fn raw_request(
    address: &str,
    head: &str,
    body: &[u8],
    cut_after: Option<usize>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    match cut_after {
        Some(at) => {
            stream.write_all(&body[..at]).unwrap();
            // The client hangs up mid-body.
            drop(stream);
            None
        }
        None => {
            stream.write_all(body).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer).to_string();
                if n == 0
                    || text.contains("\r\n\r\n")
                        && text.to_ascii_lowercase().contains("content-length: 0")
                {
                    break;
                }
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    });
                    if length.is_some_and(|len| rest.len() >= len) {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&answer).to_string();
            let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
            Some((status, text))
        }
    }
}

fn metric(node: &NodeProcess, name: &str) -> f64 {
    let text = ureq::get(&format!("{}/metrics", node.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn s3_uploads_cut_off_midway_name_nothing_and_leave_no_blob() {
    use floe_loadgen::s3::Signer;
    use floe_loadgen::target::Target;
    let dir = tempfile::tempdir().unwrap();
    let node = start_s3(&dir.path().join("data"));
    let endpoint = node.s3_url.clone().unwrap();
    let target = Target::parse(&endpoint).unwrap();
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let signer = Signer::from_env(&target, "cut").unwrap();
    let expires = Duration::from_secs(600);
    let host = &target.host;
    let create = format!(
        "PUT {} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n",
        signer.create_bucket(expires)
    );
    let (status, answer) = raw_request(&target.host, &create, b"", None).unwrap();
    assert_eq!(status, 200, "{answer}");
    // 5 MB at n = 10: three blobs; cut after the first two were stored.
    let body: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        signer.put(0, expires),
        body.len()
    );
    raw_request(&target.host, &head, &body, Some(4_000_000));
    // The node saw the hang-up: nothing in flight (but the metrics request itself), the blobs
    // it stored released and deleted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(&node, "floe_http_in_flight_requests") > 1.0
        || metric(&node, "floe_s3_blobs_deleted_total") < 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "in flight {}, S3 blobs deleted {}",
            metric(&node, "floe_http_in_flight_requests"),
            metric(&node, "floe_s3_blobs_deleted_total")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let get = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        signer.get(0, expires)
    );
    let (status, answer) = raw_request(&target.host, &get, b"", None).unwrap();
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("NoSuchKey"), "{answer}");
    let blobs = ureq::get(&format!("{}/v1/blobs?limit=100", node.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&blobs).unwrap();
    let live = listed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["deleted"] != true)
        .count();
    assert_eq!(live, 0, "{blobs}");
    // The same upload sent whole is stored (the blobs deleted above are stored again).
    let (status, answer) = raw_request(&target.host, &head, &body, None).unwrap();
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = raw_request(&target.host, &get, b"", None).unwrap();
    assert_eq!(status, 200, "{}", &answer[..200.min(answer.len())]);
}
