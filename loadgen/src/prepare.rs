//! `prepare`: stores a data set through a node's publisher and writes the manifest that runs
//! read and verify against. Each blob is generated as it is sent and hashed on the way, so a
//! store of any size takes one upload buffer per connection.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::content;
use crate::http::{store_head, stored_blob_id, Client, Upload, Watchdog};
use crate::manifest::{Manifest, ManifestBlob, FORMAT};
use crate::run::{block_on_fetch, on_this_thread, watch_period};
use crate::spec::SizeDist;
use crate::target::Target;

#[derive(Clone, Debug)]
pub struct PrepareConfig {
    pub target: Target,
    pub count: u64,
    pub size: SizeDist,
    pub epochs: u32,
    pub seed: u64,
    /// Stores in flight at once.
    pub connections: usize,
    pub timeout: Duration,
    pub token: Option<String>,
    pub progress: bool,
    /// Also name each blob in this S3 endpoint's bucket.
    pub s3: Option<(Target, String)>,
}

/// Stores `count` blobs and returns their manifest.
pub fn prepare(config: PrepareConfig) -> Result<Manifest> {
    if config.count == 0 {
        bail!("--count must be at least 1");
    }
    let (status, body) = block_on_fetch(&config.target, "GET", "/v1/health", config.timeout)
        .with_context(|| format!("the target {} does not answer", config.target))?;
    let health: serde_json::Value = serde_json::from_slice(&body)
        .ok()
        .filter(|_| status == 200)
        .ok_or_else(|| {
            anyhow!(
                "{} answered {status} to GET /v1/health; is it a floe node?",
                config.target
            )
        })?;
    let n_shards = health["nShards"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| anyhow!("{}: /v1/health has no nShards", config.target))?;
    if let Some(max) = health["blobBytesMax"].as_u64() {
        if config.size.max() > max {
            bail!(
                "blobs of up to {} bytes were asked for, but {} takes at most {max} bytes per blob (n = {n_shards})",
                config.size.max(),
                config.target
            );
        }
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let sizes: Vec<u64> = (0..config.count)
        .map(|_| config.size.sample(&mut rng))
        .collect();
    let total_bytes: u64 = sizes.iter().sum();
    let blobs = on_this_thread(store_all(&config, &sizes, total_bytes))??;
    if let Some((target, bucket)) = &config.s3 {
        on_this_thread(name_in_s3(&config, target, bucket, &blobs))??;
    }
    Ok(Manifest {
        format: FORMAT,
        created_unix_seconds: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        target: config.target.url.clone(),
        n_shards,
        seed: config.seed,
        epochs: config.epochs,
        blobs,
        s3_bucket: config.s3.as_ref().map(|(_, bucket)| bucket.clone()),
    })
}

async fn store_all(
    config: &PrepareConfig,
    sizes: &[u64],
    total_bytes: u64,
) -> Result<Vec<ManifestBlob>> {
    let next = Rc::new(Cell::new(0usize));
    // Blobs stored so far, and bytes sent (of blobs under way too), for the progress line.
    let stored = Rc::new(Cell::new(0usize));
    let sent = Rc::new(Cell::new(0u64));
    let sizes: Rc<[u64]> = sizes.into();
    let results: Rc<RefCell<Vec<Option<ManifestBlob>>>> =
        Rc::new(RefCell::new(vec![None; sizes.len()]));
    let failure: Rc<RefCell<Option<anyhow::Error>>> = Rc::new(RefCell::new(None));
    let started = Instant::now();
    let show = config.progress && std::io::stderr().is_terminal();
    let watchdog = Watchdog::spawn(watch_period(config.timeout));
    if show {
        // Twice a second, not per blob: a big blob takes seconds to send.
        let (stored, sent, count) = (stored.clone(), sent.clone(), sizes.len());
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let elapsed = started.elapsed().as_secs_f64();
                eprint!(
                    "\r\x1b[2Kstored {}/{count} blobs, {:.1}/{:.1} MB sent, {:.1} MB/s",
                    stored.get(),
                    sent.get() as f64 / 1e6,
                    total_bytes as f64 / 1e6,
                    sent.get() as f64 / 1e6 / elapsed
                );
            }
        });
    }
    let mut tasks = Vec::new();
    for _ in 0..config.connections.clamp(1, sizes.len()) {
        let (next, stored, sent, results, failure, sizes) = (
            next.clone(),
            stored.clone(),
            sent.clone(),
            results.clone(),
            failure.clone(),
            sizes.clone(),
        );
        let config = config.clone();
        let watchdog = watchdog.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut client = Client::new(config.target.addr, config.timeout, &watchdog);
            while failure.borrow().is_none() {
                let index = next.get();
                if index >= sizes.len() {
                    break;
                }
                next.set(index + 1);
                match store_one(&mut client, &config, index as u64, sizes[index], &sent).await {
                    Ok(blob) => {
                        stored.set(stored.get() + 1);
                        results.borrow_mut()[index] = Some(blob);
                    }
                    Err(error) => {
                        failure.borrow_mut().get_or_insert(error);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a store task panicked");
    }
    if show {
        eprintln!(
            "\r\x1b[2Kstored {}/{} blobs, {:.1} MB, {:.1} MB/s",
            stored.get(),
            sizes.len(),
            sent.get() as f64 / 1e6,
            sent.get() as f64 / 1e6 / started.elapsed().as_secs_f64()
        );
    }
    if let Some(error) = failure.borrow_mut().take() {
        return Err(error);
    }
    let blobs = results.borrow_mut().drain(..).flatten().collect();
    Ok(blobs)
}

/// Stores blob `index`, retrying a busy node (503) or a broken connection twice. The body is
/// generated chunk by chunk as it is sent and hashed on the way (the manifest's checksum), so
/// memory does not grow with `size`. `sent` counts the bytes sent, for the progress line.
async fn store_one(
    client: &mut Client,
    config: &PrepareConfig,
    index: u64,
    size: u64,
    sent: &Cell<u64>,
) -> Result<ManifestBlob> {
    let key = content::key(config.seed, "blob", index);
    let mut head = Vec::new();
    store_head(
        &mut head,
        &config.target.host,
        config.epochs,
        config.token.as_deref(),
        size,
    );
    let mut attempt = 0;
    let (status, answer, hasher, hashed) = loop {
        attempt += 1;
        let mut content = content::Stream::new(&key, 0);
        let mut hasher = blake3::Hasher::new();
        let mut hashed = 0u64;
        let mut fill = |chunk: &mut [u8]| {
            content.fill(chunk);
            hasher.update(chunk);
            hashed += chunk.len() as u64;
            sent.set(sent.get() + chunk.len() as u64);
        };
        let upload = Upload {
            len: size,
            fill: &mut fill,
        };
        match client.fetch(&head, Some(upload)).await {
            Ok((503, _)) | Err(_) if attempt < 3 => {
                sent.set(sent.get() - hashed);
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Ok((status, answer)) => break (status, answer, hasher, hashed),
            Err(error) => bail!("storing blob {index} ({size} bytes): {error}"),
        }
    };
    if status != 200 {
        bail!(
            "storing blob {index} ({size} bytes): {status} {}",
            String::from_utf8_lossy(&answer).trim()
        );
    }
    let blob_id = stored_blob_id(&answer, size)
        .map_err(|what| anyhow!("storing blob {index} ({size} bytes): {what}"))?;
    if hashed != size {
        bail!(
            "storing blob {index} ({size} bytes): the node answered {status} after {hashed} bytes"
        );
    }
    Ok(ManifestBlob {
        index,
        blob_id,
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// Names each stored blob in `bucket` of the S3 endpoint `target`: the bucket is created (or
/// was), then each blob's content is sent again as a PutObject (the same bytes: the node finds
/// the blob stored and only names it), `connections` at a time.
async fn name_in_s3(
    config: &PrepareConfig,
    target: &Target,
    bucket: &str,
    blobs: &[ManifestBlob],
) -> Result<()> {
    let signer = Rc::new(crate::s3::Signer::from_env(target, bucket)?);
    let expires = Duration::from_secs(24 * 3600);
    let watchdog = Watchdog::spawn(watch_period(config.timeout));
    let mut client = Client::new(target.addr, config.timeout, &watchdog);
    let mut head = Vec::new();
    crate::http::request_head(
        &mut head,
        "PUT",
        &signer.create_bucket(expires),
        &target.host,
        &[],
        Some(0),
    );
    let (status, answer) = client.fetch(&head, None).await?;
    // 409 BucketAlreadyOwnedByYou: prepared before.
    if status != 200 && status != 409 {
        bail!(
            "creating the S3 bucket {bucket}: {status} {}",
            String::from_utf8_lossy(&answer).trim()
        );
    }
    let next = Rc::new(Cell::new(0usize));
    let blobs: Rc<[ManifestBlob]> = blobs.into();
    let mut tasks = Vec::new();
    for _ in 0..config.connections.clamp(1, blobs.len().max(1)) {
        let (next, blobs, signer, watchdog) = (
            next.clone(),
            blobs.clone(),
            signer.clone(),
            watchdog.clone(),
        );
        let (target, seed, timeout) = (target.clone(), config.seed, config.timeout);
        tasks.push(tokio::task::spawn_local(async move {
            let mut client = Client::new(target.addr, timeout, &watchdog);
            loop {
                let at = next.get();
                let Some(blob) = blobs.get(at) else {
                    return Ok(());
                };
                next.set(at + 1);
                let key = content::key(seed, "blob", blob.index);
                let mut content = content::Stream::new(&key, 0);
                let mut fill = |chunk: &mut [u8]| content.fill(chunk);
                let upload = Upload {
                    len: blob.size,
                    fill: &mut fill,
                };
                let mut head = Vec::new();
                let path = signer.put(blob.index, expires);
                crate::http::request_head(
                    &mut head,
                    "PUT",
                    &path,
                    &target.host,
                    &[],
                    Some(blob.size),
                );
                let (status, answer) = client.fetch(&head, Some(upload)).await?;
                if status != 200 {
                    bail!(
                        "naming blob {} in S3: {status} {}",
                        blob.index,
                        String::from_utf8_lossy(&answer).trim()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("an S3 naming task panicked")?;
    }
    Ok(())
}
