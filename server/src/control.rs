//! The committee from the control plane (issue 17, as far as it is built): with
//! `etcd_endpoints` (`--etcd`), a node reads the current epoch's committee from etcd at start
//! instead of a committee file, checked exactly as a file is (it is rendered as one). The node
//! does not follow later epochs yet.
//!
//! Boundary: the etcd client runs on a tokio runtime of its own, on the starting thread,
//! before any executor starts; nothing here runs on a glommio core.

use std::path::Path;
use std::time::Duration;

use crate::config::{Committee, ConfigError, NodeConfig};

/// How long the start waits for etcd. Why: a control plane that does not answer this long is
/// down; the node says so rather than hang.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The current committee in etcd, checked as a committee file would be.
pub fn committee_from_etcd(config: &NodeConfig) -> Result<Committee, ConfigError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConfigError::Invalid(format!("starting the etcd client's runtime: {e}")))?;
    let (epoch, record) = runtime
        .block_on(async {
            let mut control = floe_control::Control::connect(
                &config.etcd_endpoints,
                &config.etcd_prefix,
                TIMEOUT,
            )
            .await?;
            control.current().await
        })
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let source = format!(
        "etcd {} {}committee/{:010}",
        config.etcd_endpoints.join(","),
        config.etcd_prefix,
        epoch.epoch
    );
    Committee::parse(&committee_toml(&record), Path::new(&source))
}

/// A committee record as the committee file that says the same.
fn committee_toml(record: &floe_control::CommitteeRecord) -> String {
    let quoted = |text: &str| toml::Value::String(text.to_string()).to_string();
    let mut text = format!(
        "n_shards = {}\nepoch_seconds = {}\ngenesis_unix_seconds = {}\n",
        record.n_shards, record.epoch_seconds, record.genesis_unix_seconds
    );
    for member in &record.members {
        let shards: Vec<String> = member.shards.iter().map(u16::to_string).collect();
        text.push_str(&format!(
            "[[nodes]]\nname = {}\naddress = {}\nshards = [{}]\n",
            quoted(&member.name),
            quoted(&member.address),
            shards.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_renders_as_the_committee_file_it_came_from() {
        let file = "n_shards = 10\nepoch_seconds = 60\n\
                    [[nodes]]\nname = \"a \\\"quoted\\\"\"\naddress = \"127.0.0.1:1\"\nshards = [\"0-6\"]\n\
                    [[nodes]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\nshards = [7, \"8-9\"]\n";
        let committee = Committee::parse(file, Path::new("c.toml")).unwrap();
        let record = floe_control::CommitteeRecord {
            n_shards: committee.n_shards,
            epoch_seconds: committee.epoch_seconds,
            genesis_unix_seconds: committee.genesis_unix_seconds,
            members: committee
                .members
                .iter()
                .map(|m| floe_control::MemberRecord {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    shards: m.shards.clone(),
                })
                .collect(),
        };
        let again = Committee::parse(&committee_toml(&record), Path::new("etcd")).unwrap();
        assert_eq!(again, committee);
    }
}
