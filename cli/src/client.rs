//! `floe put` and `floe get`: a client of one node's API (`api.md`, "Peers"), for a node that
//! holds every shard (the single-node deployment). The cluster-wide publisher and aggregator
//! (`PUT /v1/blobs`, `GET /v1/blobs/{id}`) replace these for committees of several nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use floe_codec::{
    decode_metadata, decode_primary_verified, decode_sliver, encode_metadata, encode_sliver,
    verify_sliver, BlobId, BlobLayout, BlobMetadata, EncodedBlob, Sliver, SliverKind,
    VerifyScratch,
};
use rayon::prelude::*;

/// Requests in flight at once. Why: enough to hide per-request latency on loopback, few
/// enough not to trip a node's per-core in-flight limit.
const PARALLEL_REQUESTS: usize = 16;

pub struct Node {
    url: String,
    agent: ureq::Agent,
}

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Node {
    pub fn new(url: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .max_idle_connections_per_host(PARALLEL_REQUESTS)
            .build()
            .into();
        Self {
            url: url.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn answer(&self, mut response: ureq::http::Response<ureq::Body>) -> Result<Answer> {
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 31)
            .read_to_vec()?;
        Ok(Answer { status, body })
    }

    fn get(&self, path: &str) -> Result<Answer> {
        let url = format!("{}{path}", self.url);
        let response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        self.answer(response)
    }

    fn put(&self, path: &str, body: &[u8], token: Option<&str>) -> Result<Answer> {
        let url = format!("{}{path}", self.url);
        let mut request = self
            .agent
            .put(&url)
            .header("content-type", "application/octet-stream");
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let response = request.send(body).with_context(|| format!("PUT {url}"))?;
        self.answer(response)
    }

    /// The node's shard count, from `/v1/health`.
    pub fn n_shards(&self) -> Result<u16> {
        let answer = self.get("/v1/health")?;
        if answer.status != 200 {
            bail!("{}/v1/health answered {}", self.url, answer.status);
        }
        let health: serde_json::Value = serde_json::from_slice(&answer.body)?;
        health["nShards"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .context("/v1/health has no nShards")
    }
}

fn error_text(answer: &Answer) -> String {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned())
}

/// Stores an encoded blob on `node`: metadata, then every sliver pair. Prints progress to
/// standard error when `progress`.
pub fn put_blob(
    node: &Node,
    encoded: &EncodedBlob,
    epochs: u32,
    token: Option<&str>,
    progress: bool,
) -> Result<()> {
    let id = encoded.blob_id();
    let answer = node.put(
        &format!("/v1/blobs/{id}/metadata?epochs={epochs}"),
        &encode_metadata(encoded.metadata()),
        token,
    )?;
    if answer.status != 200 {
        bail!(
            "storing the metadata: {} {}",
            answer.status,
            error_text(&answer)
        );
    }
    let n = encoded.layout().config.n_shards();
    let done = AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PARALLEL_REQUESTS)
        .build()?;
    pool.install(|| {
        (0..n).into_par_iter().try_for_each(|pair| -> Result<()> {
            for (kind, index) in [
                (SliverKind::Primary, pair),
                (SliverKind::Secondary, n - 1 - pair),
            ] {
                let body = encode_sliver(&encoded.to_sliver(kind, index));
                let path = format!("/v1/blobs/{id}/slivers/{pair}/{kind}");
                let answer = node.put(&path, &body, token)?;
                if answer.status != 200 {
                    bail!(
                        "storing {kind} sliver of pair {pair}: {} {}",
                        answer.status,
                        error_text(&answer)
                    );
                }
            }
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            if progress && (finished.is_multiple_of(50) || finished == n) {
                eprint!("\rstored {finished}/{n} sliver pairs");
                if finished == n {
                    eprintln!();
                }
            }
            Ok(())
        })
    })
}

/// Decodes a primary sliver body and verifies it against the metadata, as sliver `index`
/// (default: the index the body names).
pub fn verified_primary(
    metadata: &BlobMetadata,
    layout: &BlobLayout,
    body: &[u8],
    index: Option<usize>,
    scratch: &mut VerifyScratch,
) -> Result<Sliver> {
    let sliver = decode_sliver(SliverKind::Primary, body)?;
    verify_sliver(
        metadata,
        layout,
        SliverKind::Primary,
        index.unwrap_or(sliver.index.into()),
        sliver.symbol_bytes.into(),
        &sliver.data,
        scratch,
    )?;
    Ok(sliver)
}

/// Reads a blob from `node`: metadata (verified against the blob ID), then primary slivers,
/// each verified, until `k_p` are in hand; decodes.
pub fn get_blob(node: &Node, id: &BlobId) -> Result<Vec<u8>> {
    let answer = node.get(&format!("/v1/blobs/{id}/metadata"))?;
    if answer.status != 200 {
        bail!(
            "reading the metadata: {} {}",
            answer.status,
            error_text(&answer)
        );
    }
    let metadata = decode_metadata(&answer.body).context("the node's metadata")?;
    metadata
        .verify(id, metadata.n_shards())
        .context("the node's metadata does not match the blob ID")?;
    let layout = metadata.layout()?;
    let n = metadata.n_shards();
    let k_p = layout.config.n_primary_source();
    let mut slivers = Vec::with_capacity(k_p);
    let mut scratch = VerifyScratch::default();
    // The systematic slivers first: they hold the blob's bytes as they are.
    for pair in 0..n {
        if slivers.len() == k_p {
            break;
        }
        let answer = node.get(&format!("/v1/blobs/{id}/slivers/{pair}/primary"))?;
        if answer.status != 200 {
            eprintln!(
                "skipping primary sliver {pair}: {} {}",
                answer.status,
                error_text(&answer)
            );
            continue;
        }
        let checked = verified_primary(&metadata, &layout, &answer.body, Some(pair), &mut scratch);
        match checked {
            Ok(sliver) => slivers.push((pair, sliver.data)),
            Err(err) => eprintln!("skipping primary sliver {pair}: {err}"),
        }
    }
    let rows: Vec<(usize, &[u8])> = slivers.iter().map(|(i, d)| (*i, d.as_slice())).collect();
    Ok(decode_primary_verified(&metadata, &rows)?)
}
