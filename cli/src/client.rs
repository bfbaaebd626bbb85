//! `floe store`, `floe read` and `floe delete`: a client of the user API (`api.md`, "Users") that any node of
//! a committee serves: the node encodes and spreads the blob, or gathers, verifies and decodes
//! it. Files stream from and to disk; a progress bar shows on a terminal, none when piped.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use floe_codec::BlobId;
use indicatif::{ProgressBar, ProgressStyle};

/// Longest a whole store or read may take. Why: a blob of several GiB over a slow link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// A byte counter on standard error, shown only when it is a terminal.
fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    if !io::IsTerminal::is_terminal(&io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::no_length(),
    };
    let template =
        format!("{what} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// The `message` of a floe error body, or the body as text.
fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// What the publisher answered.
pub struct Stored {
    pub blob_id: String,
    /// `newlyCreated` or `alreadyCertified`.
    pub outcome: String,
    pub answer: serde_json::Value,
}

/// Stores `file` through the node at `url` for `epochs` epochs.
pub fn store(
    url: &str,
    file: &Path,
    epochs: u32,
    deletable: bool,
    token: Option<&str>,
) -> Result<Stored> {
    let opened = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = opened.metadata()?.len();
    // Ask first: a node refuses a body over its limit without reading it, which a client
    // mid-upload sees only as a broken connection.
    if let Some(max) = blob_bytes_max(url)? {
        if size > max {
            bail!(
                "{} is {size} bytes; the node takes blobs of at most {max} bytes (the code's \
                 limit at this committee's n)",
                file.display()
            );
        }
    }
    let bar = progress(Some(size), "storing");
    let url = format!(
        "{}/v1/blobs?epochs={epochs}{}",
        url.trim_end_matches('/'),
        if deletable { "&deletable=true" } else { "" }
    );
    let mut request = agent()
        .put(&url)
        .header("content-type", "application/octet-stream")
        .header("content-length", &size.to_string());
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .send(ureq::SendBody::from_owned_reader(bar.wrap_read(opened)))
        .with_context(|| format!("PUT {url}"))?;
    bar.finish_and_clear();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec()?;
    if status != 200 {
        bail!("the node answered {status}: {}", error_text(&body));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).context("the node's answer is not JSON")?;
    let (outcome, inner) = answer
        .as_object()
        .and_then(|o| o.iter().next())
        .context("the node's answer is empty")?;
    let blob_id = inner["blobId"]
        .as_str()
        .context("the node's answer has no blobId")?
        .to_string();
    Ok(Stored {
        blob_id,
        outcome: outcome.clone(),
        answer,
    })
}

/// Deletes blob `id` through the node at `url`; returns the node's answer.
pub fn delete(url: &str, id: &BlobId, token: Option<&str>) -> Result<serde_json::Value> {
    let url = format!("{}/v1/blobs/{id}", url.trim_end_matches('/'));
    let mut request = agent().delete(&url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().with_context(|| format!("DELETE {url}"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec()?;
    if status != 200 {
        bail!("the node answered {status}: {}", error_text(&body));
    }
    serde_json::from_slice(&body).context("the node's answer is not JSON")
}

/// The committee's n, from the node at `url` (`/v1/health`).
pub fn n_shards(url: &str) -> Result<u16> {
    let url = format!("{}/v1/health", url.trim_end_matches('/'));
    let mut response = agent()
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let health: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec()?)?;
    health["nShards"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .context("the node's /v1/health has no nShards")
}

/// The largest blob the node at `url` takes (`/v1/health`), if it says.
fn blob_bytes_max(url: &str) -> Result<Option<u64>> {
    let url = format!("{}/v1/health", url.trim_end_matches('/'));
    let mut response = agent()
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    if response.status().as_u16() != 200 {
        return Ok(None);
    }
    let health: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec()?)?;
    Ok(health["blobBytesMax"].as_u64())
}

/// Attempts a read makes when its connection breaks: each later one asks for the rest with a
/// range request. Why: a multi-GB download over a flaky link should not start over.
const READ_ATTEMPTS: u32 = 5;

/// Reads blob `id` through the node at `url` into `output` (standard output if `None`),
/// resuming with a range request where a connection broke (the node's ETag, the blob ID,
/// must stay the same). Returns the bytes written.
pub fn read(url: &str, id: &BlobId, output: Option<&Path>) -> Result<u64> {
    let url = format!("{}/v1/blobs/{id}", url.trim_end_matches('/'));
    // Written next to the target and renamed, so a failed read leaves no partial file.
    let partial = output.map(|path| path.with_extension("floe-partial"));
    let mut file = match &partial {
        Some(partial) => {
            Some(File::create(partial).with_context(|| format!("creating {}", partial.display()))?)
        }
        None => None,
    };
    let mut stdout = io::stdout().lock();
    let mut copied = 0u64;
    let mut total: Option<u64> = None;
    let mut bar: Option<ProgressBar> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = agent().get(&url);
        if copied > 0 {
            request = request.header("range", &format!("bytes={copied}-"));
        }
        let mut response = request.call().with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        if status != 200 && status != 206 {
            let body = response.body_mut().read_to_vec()?;
            bail!("the node answered {status}: {}", error_text(&body));
        }
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_string());
        if etag.as_deref().is_some_and(|etag| etag != id.to_string()) {
            bail!("the node answered for another blob (ETag {etag:?})");
        }
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if total.is_none() {
            total = length.map(|l| l + copied);
        }
        if copied > 0 && status != 206 {
            bail!("the node did not resume at byte {copied} (answered {status})");
        }
        let bar = bar.get_or_insert_with(|| progress(total, "reading"));
        let mut reader = bar.wrap_read(response.into_body().into_reader());
        let out: &mut dyn Write = match &mut file {
            Some(file) => file,
            None => &mut stdout,
        };
        let result = io::copy(&mut reader, out);
        let got = match &result {
            Ok(got) => *got,
            // io::copy does not say how much it wrote before failing: the bar does.
            Err(_) => bar.position() - copied,
        };
        copied += got;
        let complete = total.is_some_and(|t| copied >= t);
        if complete || (result.is_ok() && total.is_none()) {
            break;
        }
        if attempt >= READ_ATTEMPTS {
            let why = result
                .err()
                .map_or("the answer ended early".into(), |e| e.to_string());
            bail!("reading the blob: {why}, after {copied} bytes and {attempt} attempts");
        }
        match &result {
            Err(err) => {
                eprintln!("floe: the connection broke after {copied} bytes ({err}); resuming")
            }
            Ok(_) => eprintln!("floe: the answer ended after {copied} bytes; resuming"),
        }
        std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    check_length(copied, total)?;
    match (file, partial, output) {
        (Some(file), Some(partial), Some(path)) => {
            file.sync_all()?;
            std::fs::rename(&partial, path)
                .with_context(|| format!("renaming to {}", path.display()))?;
        }
        _ => stdout.flush()?,
    }
    Ok(copied)
}

fn check_length(copied: u64, length: Option<u64>) -> Result<()> {
    match length {
        Some(expected) if expected != copied => {
            bail!("the connection ended after {copied} of {expected} bytes")
        }
        _ => Ok(()),
    }
}
