//! `floe committee`: the committee in the control plane (etcd, issue 17): `init FILE` loads a
//! committee file as the first epoch (the one its own clock is at), `show` prints the current
//! epoch and its committee, `propose FILE [--now]` sets the next one's, `status` follows the
//! shards moving into the current epoch.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use floe_control::Control;

/// How long connecting and each call may take. Why: a control plane that does not answer in
/// this long is down for a person at a terminal.
const TIMEOUT: Duration = Duration::from_secs(5);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for the etcd client")
}

/// `floe committee init FILE --etcd URLS`.
pub fn init(file: &Path, endpoints: &[String], prefix: &str) -> Result<String> {
    // Checked as `floe node` checks a committee file.
    let committee = floe_server::config::Committee::load(file)?;
    let record = floe_server::control::record_of(&committee);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The epoch the file's own clock is at: a cluster that moves from a committee file to etcd
    // keeps its epoch numbers, and with them every blob's end epoch.
    let first = committee.epoch_at(now);
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

/// `floe committee propose FILE [--now] --etcd URLS`.
pub fn propose(file: &Path, now: bool, endpoints: &[String], prefix: &str) -> Result<String> {
    let record = floe_server::control::record_of(&floe_server::config::Committee::load(file)?);
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    runtime()?.block_on(async {
        let mut control = Control::connect(endpoints, prefix, TIMEOUT).await?;
        let (next, plan) = control.propose(&record, now, unix).await?;
        let mut by_pair: BTreeMap<(&str, &str), Vec<u16>> = BTreeMap::new();
        for m in &plan.moves {
            by_pair.entry((&m.from, &m.to)).or_default().push(m.shard);
        }
        let mut text = format!(
            "epoch {next} {}: {} nodes, {} shards move",
            if now {
                "began now"
            } else {
                "begins when the current one ends"
            },
            record.members.len(),
            plan.moves.len()
        );
        for ((from, to), shards) in by_pair {
            text.push_str(&format!(
                "\n  {from} -> {to}: {} shards ({})",
                shards.len(),
                ranges(&shards)
            ));
        }
        text.push_str("\nfollow the moves with: floe committee status --etcd URL");
        Ok(text)
    })
}

/// `floe committee status [--json] --etcd URLS`.
pub fn status(endpoints: &[String], prefix: &str, json: bool) -> Result<String> {
    runtime()?.block_on(async {
        let mut control = Control::connect(endpoints, prefix, TIMEOUT).await?;
        let Some(epoch) = control.current_epoch().await? else {
            anyhow::bail!(
                "no committee under {prefix} yet. Fix: floe committee init FILE --etcd URL"
            );
        };
        let status = control.move_status(epoch.epoch).await?;
        let moves: Vec<serde_json::Value> = status
            .plan
            .moves
            .iter()
            .map(|m| {
                let p = status.progress.get(&m.shard).cloned().unwrap_or_default();
                serde_json::json!({
                    "shard": m.shard,
                    "from": m.from,
                    "to": m.to,
                    "slivers": p.slivers,
                    "bytes": p.bytes,
                    "recovered": p.recovered,
                    "done": p.done,
                })
            })
            .collect();
        let done = status.done();
        if json {
            return Ok(serde_json::to_string_pretty(&serde_json::json!({
                "epoch": epoch.epoch,
                "moves": moves,
                "done": done,
            }))?);
        }
        let finished = moves.iter().filter(|m| m["done"] == true).count();
        let (slivers, bytes): (u64, u64) = status.progress.values().fold((0, 0), |(s, b), p| {
            (s + p.slivers + p.recovered, b + p.bytes)
        });
        let mut text = format!(
            "epoch {}: {} of {} moving shards done ({slivers} slivers, {bytes} bytes moved){}\n",
            epoch.epoch,
            finished,
            moves.len(),
            if done { "; done" } else { "" }
        );
        for m in &moves {
            text.push_str(&format!(
                "  shard {:>5} {} -> {}: {} slivers, {} bytes{}{}\n",
                m["shard"],
                m["from"].as_str().unwrap_or_default(),
                m["to"].as_str().unwrap_or_default(),
                m["slivers"],
                m["bytes"],
                if m["recovered"].as_u64().unwrap_or(0) > 0 {
                    format!(", {} recovered", m["recovered"])
                } else {
                    String::new()
                },
                if m["done"] == true { ", done" } else { "" }
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
