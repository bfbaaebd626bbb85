//! The crash loop's short version (issue 18): `benches/crash_loop.py` (the long version runs
//! 100 rounds on the default node) for a few rounds here. A single node killed with SIGKILL
//! under stores (one a streamed big blob), S3 PutObjects, multipart uploads and reads, then
//! restarted; a committee of four whose peer is killed mid-PUT. After each restart every
//! acknowledged blob and object reads back identical and nothing unacknowledged is visible
//! half-written. Skipped (with a note) without Python's requests and boto3, unless
//! FLOE_REQUIRE_PYTHON_CLIENTS is set (CI sets it).

use std::path::Path;
use std::process::Command;

fn have_clients() -> bool {
    let have = Command::new("python3")
        .args(["-c", "import requests, boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("FLOE_REQUIRE_PYTHON_CLIENTS").is_none(),
            "python3 with requests and boto3 is required (pip install requests boto3)"
        );
        eprintln!("note: python3 requests/boto3 missing; the crash loop is skipped");
    }
    have
}

fn crash_loop(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/crash_loop.py");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(script)
        .args(["--floe", env!("CARGO_BIN_EXE_floe")])
        .args(["--dir", dir.path().join("run").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crash loop failed:\n{text}");
    eprintln!("{text}");
    text
}

/// Regression (issue 18, found by the crash loop): a single node killed between storing a
/// blob's metadata and its slivers came back listing the blob and answering 503 for it. The
/// publisher now stores this node's slivers first and the metadata last.
#[test]
fn a_node_killed_mid_store_shows_no_half_written_blob() {
    if !have_clients() {
        return;
    }
    let text = crash_loop(&[
        "--rounds",
        "4",
        "--shards",
        "100",
        "--big-mb",
        "24",
        "--big-every",
        "2",
        "--kill-after",
        "1",
        "2.5",
        "--big-kill-after",
        "2",
        "8",
    ]);
    assert!(text.contains("\"lost\": 0"), "{text}");
}

#[test]
fn a_peer_killed_mid_put_loses_nothing_acknowledged() {
    if !have_clients() {
        return;
    }
    let text = crash_loop(&[
        "--cluster",
        "--rounds",
        "3",
        "--big-mb",
        "8",
        "--big-every",
        "1",
        "--kill-after",
        "1",
        "2",
        "--big-kill-after",
        "1",
        "3",
    ]);
    assert!(text.contains("\"lost\": 0"), "{text}");
}
