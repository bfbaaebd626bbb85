//! floe's control plane in etcd (issue 17), as far as it is built: the committee of each epoch
//! and the current epoch, stored under a prefix (default `/floe/`), read and initialised
//! through a well-kept client (`etcd-client`, tokio and tonic).
//!
//! Keys (values are JSON):
//!
//! ```text
//! {prefix}epoch                   {"epoch": E, "startedUnixSeconds": T}
//! {prefix}committee/{E:010}       the committee of epoch E (n, nodes, addresses, shards)
//! ```
//!
//! Invariants: the first epoch is written once, with its committee, in one transaction that
//! holds only if no epoch exists (`create_revision == 0`); a committee record is never
//! rewritten. Boundary: every etcd call runs on the caller's tokio runtime (glommio cores reach
//! it through a runtime thread of their own, not built yet); errors are typed
//! ([`ControlError`]), each with what to do.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The prefix every key lives under unless configured otherwise.
pub const PREFIX_DEFAULT: &str = "/floe/";

/// Why a control-plane call failed.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("etcd at {endpoints} cannot be reached ({message}). Fix: start etcd, or name its client URLs with --etcd")]
    Unreachable { endpoints: String, message: String },
    #[error("the control plane under {prefix} already holds epoch {epoch}: a committee is initialised once (propose a change instead)")]
    AlreadyInitialized { prefix: String, epoch: u64 },
    #[error("no committee under {prefix} yet. Fix: floe committee init FILE --etcd URL")]
    NotInitialized { prefix: String },
    #[error("{key} in etcd is not what floe writes: {message}")]
    Corrupt { key: String, message: String },
    #[error("etcd failed: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// One member of a committee.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub name: String,
    pub address: String,
    /// Sorted.
    pub shards: Vec<u16>,
}

/// The committee of an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitteeRecord {
    pub n_shards: u16,
    pub epoch_seconds: u64,
    pub genesis_unix_seconds: u64,
    pub members: Vec<MemberRecord>,
}

/// The current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    pub epoch: u64,
    pub started_unix_seconds: u64,
}

/// A connection to the control plane.
pub struct Control {
    client: Client,
    prefix: String,
}

impl Control {
    /// Connects to etcd at `endpoints` (client URLs), keys under `prefix`; fails within
    /// `timeout` if no endpoint answers.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, ControlError> {
        let unreachable = |message: String| ControlError::Unreachable {
            endpoints: endpoints.join(","),
            message,
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let mut client = tokio::time::timeout(timeout, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| unreachable(format!("no answer in {} s", timeout.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        // A round trip: a client connects lazily.
        client
            .status()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(Self { client, prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    fn committee_key(&self, epoch: u64) -> String {
        format!("{}committee/{epoch:010}", self.prefix)
    }

    /// Writes `committee` as epoch 0's, and epoch 0 as the current one, in one transaction
    /// that holds only if no epoch exists yet.
    pub async fn init(
        &mut self,
        committee: &CommitteeRecord,
        now_unix_seconds: u64,
    ) -> Result<(), ControlError> {
        let epoch = EpochRecord {
            epoch: 0,
            started_unix_seconds: now_unix_seconds,
        };
        let json = |value: serde_json::Result<Vec<u8>>| value.expect("records serialize");
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.epoch_key(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    self.committee_key(0),
                    json(serde_json::to_vec(committee)),
                    None,
                ),
                TxnOp::put(self.epoch_key(), json(serde_json::to_vec(&epoch)), None),
            ]);
        let answer = self.client.txn(txn).await?;
        if answer.succeeded() {
            return Ok(());
        }
        let current = self.current_epoch().await?;
        Err(ControlError::AlreadyInitialized {
            prefix: self.prefix.clone(),
            epoch: current.map_or(0, |e| e.epoch),
        })
    }

    /// The current epoch, if the control plane was initialised.
    pub async fn current_epoch(&mut self) -> Result<Option<EpochRecord>, ControlError> {
        let key = self.epoch_key();
        self.get_json(&key).await
    }

    /// The committee of `epoch`.
    pub async fn committee(&mut self, epoch: u64) -> Result<Option<CommitteeRecord>, ControlError> {
        let key = self.committee_key(epoch);
        self.get_json(&key).await
    }

    /// The current epoch and its committee: [`ControlError::NotInitialized`] before `init`.
    pub async fn current(&mut self) -> Result<(EpochRecord, CommitteeRecord), ControlError> {
        let not_initialized = ControlError::NotInitialized {
            prefix: self.prefix.clone(),
        };
        let epoch = self.current_epoch().await?.ok_or(not_initialized)?;
        let key = self.committee_key(epoch.epoch);
        let committee = self
            .committee(epoch.epoch)
            .await?
            .ok_or(ControlError::Corrupt {
                key,
                message: format!("epoch {} has no committee", epoch.epoch),
            })?;
        Ok((epoch, committee))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, ControlError> {
        let answer = self.client.get(key, None).await?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(None);
        };
        serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| ControlError::Corrupt {
                key: key.to_string(),
                message: e.to_string(),
            })
    }
}
