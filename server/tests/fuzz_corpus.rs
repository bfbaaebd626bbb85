//! Replays every input saved under `fuzz/corpus/` (seeds, and what `cargo fuzz` kept while
//! running) through the same entry points as the fuzz targets, so that CI, which runs on
//! stable Rust without libFuzzer, still catches a regression on any of them.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} panics", path.display());
        count += 1;
    }
    assert!(count > 0, "no corpus in {}", dir.display());
    println!("{target}: {count} inputs replayed");
}

#[test]
fn request_corpus_replays() {
    replay("request", floe_server::fuzzing::request);
}

#[test]
fn bcs_corpus_replays() {
    replay("bcs", floe_server::fuzzing::bcs);
}

#[test]
fn sigv4_corpus_replays() {
    replay("sigv4", floe_server::fuzzing::sigv4);
}

#[test]
fn aws_chunked_corpus_replays() {
    replay("aws_chunked", floe_server::fuzzing::aws_chunked);
}

#[test]
fn s3_xml_corpus_replays() {
    replay("s3_xml", floe_server::fuzzing::s3_xml);
}

#[test]
fn control_corpus_replays() {
    replay("control", floe_server::fuzzing::control);
}

#[test]
fn headers_corpus_replays() {
    replay("headers", floe_server::fuzzing::headers);
}

#[test]
fn config_corpus_replays() {
    replay("config", floe_server::fuzzing::config);
}

#[test]
fn records_corpus_replays() {
    replay("records", floe_server::fuzzing::records);
}
