//! Writes a simulated blob registry straight to etcd, for the catch-up figures of
//! `benches/control.py`: COUNT records of random blob IDs (permanent, one epoch of life left
//! far ahead) under the prefix, 128 puts per transaction (etcd's limit), 8 transactions at a
//! time. Prints the records written, the seconds taken and etcd's revision after.
//!
//!     registry-fill --etcd http://127.0.0.1:2379 --count 1000000 [--prefix /floe/]

use std::time::{Duration, Instant};

use floe_control::etcd_client::{Txn, TxnOp};
use floe_control::{BlobRecord, BlobState, Control};
use rand::RngCore;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let etcd = arg("--etcd").ok_or("--etcd URL is required")?;
    let count: usize = arg("--count").map_or(Ok(1_000_000), |c| c.parse())?;
    let prefix = arg("--prefix").unwrap_or_else(|| floe_control::PREFIX_DEFAULT.to_string());
    let control = Control::connect(&[etcd], &prefix, Duration::from_secs(5)).await?;
    let record = serde_json::to_vec(&BlobRecord {
        size: 1 << 20,
        end_epoch: u32::MAX - 1,
        state: BlobState::Permanent,
    })?;
    let started = Instant::now();
    let mut written = 0;
    let mut rng = rand::thread_rng();
    let mut in_flight = tokio::task::JoinSet::new();
    while written < count {
        let batch = (count - written).min(128);
        let ops: Vec<TxnOp> = (0..batch)
            .map(|_| {
                let mut id = [0u8; 32];
                rng.fill_bytes(&mut id);
                let key = format!("{}{}", control.blobs_prefix(), floe_codec::BlobId(id));
                TxnOp::put(key, record.clone(), None)
            })
            .collect();
        let mut control = control.clone();
        in_flight.spawn(async move { control.client().txn(Txn::new().and_then(ops)).await });
        written += batch;
        if in_flight.len() >= 8 {
            in_flight.join_next().await.expect("one in flight")??;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut control = control;
    let revision = control
        .client()
        .get("x", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    println!(
        "{}",
        serde_json::json!({"records": written, "seconds": seconds, "revision": revision})
    );
    Ok(())
}
