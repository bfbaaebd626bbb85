//! The `floe` binary driven like a user drives it.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn floe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(args)
        .output()
        .expect("run the floe binary")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "floe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn blob_id_prints_walruss_vector() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vector");
    fs::write(&file, "walrus blob id v1 regression test").unwrap();
    let out = stdout(&floe(&["blob-id", path(&file), "--shards", "10"]));
    assert_eq!(out.trim(), "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY");
    // The default is n = 1000, which gives another ID for the same bytes.
    let out = stdout(&floe(&["blob-id", path(&file), "--threads", "1"]));
    assert_eq!(out.trim().len(), 43);
    assert_ne!(out.trim(), "RcU82Mwf-CFkv1LaI_2qcpANwpGUuG3TMwnVzZxD2kY");
}

#[test]
fn encode_then_decode_survives_lost_and_corrupt_slivers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&file, &blob).unwrap();
    let out_dir = dir.path().join("encoded");
    let id = stdout(&floe(&[
        "encode",
        path(&file),
        "--shards",
        "7",
        "--out",
        path(&out_dir),
    ]));
    let by_blob_id = stdout(&floe(&["blob-id", path(&file), "--shards", "7"]));
    assert_eq!(id, by_blob_id);
    assert_eq!(fs::read_dir(out_dir.join("primary")).unwrap().count(), 7);
    assert_eq!(fs::read_dir(out_dir.join("secondary")).unwrap().count(), 7);

    // n = 7: f = 2, k_p = 3. Lose two primary slivers, corrupt one more: 4 remain, 3 good.
    fs::remove_file(out_dir.join("primary/0.bcs")).unwrap();
    fs::remove_file(out_dir.join("primary/1.bcs")).unwrap();
    let victim = out_dir.join("primary/2.bcs");
    let mut bytes = fs::read(&victim).unwrap();
    bytes[10] ^= 0x01;
    fs::write(&victim, bytes).unwrap();
    let decoded = dir.path().join("decoded");
    let output = floe(&["decode", path(&out_dir), "-o", path(&decoded)]);
    stdout(&output);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("2.bcs"),
        "corrupt file named"
    );
    assert_eq!(fs::read(&decoded).unwrap(), blob);

    // Two more losses leave two good slivers, fewer than k_p: a clear error, non-zero exit.
    fs::remove_file(out_dir.join("primary/3.bcs")).unwrap();
    fs::remove_file(out_dir.join("primary/4.bcs")).unwrap();
    let output = floe(&["decode", path(&out_dir), "-o", path(&decoded)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("need 3 distinct primary slivers"),
        "{stderr}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    fs::write(&file, vec![1u8; 400_000]).unwrap();
    let output = floe(&["blob-id", path(&file), "--shards", "4"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("largest blob is 393204 bytes"), "{stderr}");

    let output = floe(&["blob-id", path(&file), "--shards", "3"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("4 <= n <= 4096"));

    let output = floe(&["blob-id", path(&dir.path().join("missing"))]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing"));
}

/// `floe blob-id --in-strips` (how files over 1 GiB are encoded: bounded memory, a temporary
/// file) gives the same blob ID as the in-memory encoder.
#[test]
fn blob_id_in_strips_matches_the_whole_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    let bytes: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    for shards in ["10", "100", "1000"] {
        let run = |extra: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_floe"))
                .args(["blob-id", file.to_str().unwrap(), "--shards", shards])
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(run(&["--in-strips"]), run(&[]), "n = {shards}");
    }
}
