//! `floe committee`: the committee in the control plane (etcd, issue 17): `init FILE` loads a
//! committee file as epoch 0, `show` prints the current epoch and its committee.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use floe_control::{CommitteeRecord, Control, MemberRecord};

/// How long connecting and each call may take. Why: a control plane that does not answer in
/// this long is down for a person at a terminal.
const TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for the etcd client")
}

/// The record of a committee file (checked as `floe node` checks it).
pub fn record_of(file: &Path) -> Result<CommitteeRecord> {
    let committee = floe_server::config::Committee::load(file)?;
    Ok(CommitteeRecord {
        n_shards: committee.n_shards,
        epoch_seconds: committee.epoch_seconds,
        genesis_unix_seconds: committee.genesis_unix_seconds,
        members: committee
            .members
            .into_iter()
            .map(|m| MemberRecord {
                name: m.name,
                address: m.address,
                shards: m.shards,
            })
            .collect(),
    })
}

/// `floe committee init FILE --etcd URLS`.
pub fn init(file: &Path, endpoints: &[String], prefix: &str) -> Result<String> {
    let record = record_of(file)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The epoch the file's own clock is at: a cluster that moves from a committee file to etcd
    // keeps its epoch numbers, and with them every blob's end epoch.
    let first = floe_server::config::Committee::load(file)?.epoch_at(now);
    runtime()?.block_on(async {
        let mut control = Control::connect(endpoints, prefix, TIMEOUT).await?;
        control.init(&record, first.into(), now).await?;
        Ok(format!(
            "epoch {first} of {} nodes (n = {}) is the committee under {} in etcd",
            record.members.len(),
            record.n_shards,
            control.prefix()
        ))
    })
}

/// `floe committee show [--json] --etcd URLS`.
pub fn show(endpoints: &[String], prefix: &str, json: bool) -> Result<String> {
    runtime()?.block_on(async {
        let mut control = Control::connect(endpoints, prefix, TIMEOUT).await?;
        let (epoch, committee) = control.current().await?;
        if json {
            return Ok(serde_json::to_string_pretty(&serde_json::json!({
                "epoch": epoch,
                "committee": committee,
            }))?);
        }
        let mut text = format!(
            "epoch {} (since unix {}), n = {} shards, {} nodes, epochs of {} s\n",
            epoch.epoch,
            epoch.started_unix_seconds,
            committee.n_shards,
            committee.members.len(),
            committee.epoch_seconds
        );
        for member in &committee.members {
            text.push_str(&format!(
                "  {:<12} {:<24} {} shards: {}\n",
                member.name,
                member.address,
                member.shards.len(),
                ranges(&member.shards)
            ));
        }
        Ok(text)
    })
}

/// `0-4, 9` for shards 0, 1, 2, 3, 4 and 9 (sorted).
fn ranges(shards: &[u16]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        let mut j = i;
        while j + 1 < shards.len() && shards[j + 1] == shards[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            shards[i].to_string()
        } else {
            format!("{}-{}", shards[i], shards[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn shard_lists_print_as_ranges() {
        assert_eq!(super::ranges(&[0, 1, 2, 3, 4, 9]), "0-4, 9");
        assert_eq!(super::ranges(&[7]), "7");
        assert_eq!(super::ranges(&[]), "");
    }
}
