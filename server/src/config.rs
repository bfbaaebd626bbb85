//! Node configuration (`node.toml`) and the committee file, with defaults that make
//! `floe node` with no arguments a working single-node deployment.
//!
//! Every value has a default; a file only names what it changes. Unknown keys are errors (a
//! typo must not silently fall back to a default). Secrets come from the environment:
//! `FLOE_WRITE_TOKEN` overrides `write_token`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use floe_codec::N_SHARDS_DEFAULT;
use serde::Deserialize;
use thiserror::Error;

/// Default listen address (`api.md`).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:31415";
/// Default data directory, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "./floe-data";
/// Default epoch length: one day.
pub const EPOCH_SECONDS_DEFAULT: u64 = 24 * 3600;
/// One scrub pass a week. Why: Ceph deep-scrubs every placement group weekly
/// (`osd_deep_scrub_interval`), HDFS's block scanner re-reads every block every three weeks,
/// ZFS pools are commonly scrubbed weekly to monthly; a week finds silent corruption while a
/// second copy is still likely intact, at a cost of about one read of the data per week.
pub const SCRUB_INTERVAL_SECONDS_DEFAULT: u64 = 7 * 24 * 3600;

/// Environment variable that overrides `write_token`.
pub const WRITE_TOKEN_ENV: &str = "FLOE_WRITE_TOKEN";
/// Environment variable that overrides `cluster_secret`.
pub const CLUSTER_SECRET_ENV: &str = "FLOE_CLUSTER_SECRET";
/// Environment variables that add one S3 key (beside `[[s3.keys]]`).
pub const S3_ACCESS_KEY_ID_ENV: &str = "FLOE_S3_ACCESS_KEY_ID";
pub const S3_SECRET_ACCESS_KEY_ENV: &str = "FLOE_S3_SECRET_ACCESS_KEY";
/// The region S3 clients sign for unless `[s3] region` says otherwise.
pub const S3_REGION_DEFAULT: &str = "us-east-1";

/// One S3 access key.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Key {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The S3 API (`[s3]` in node.toml; served only with `s3_listen` and at least one key).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Keys that may sign requests (`[[s3.keys]]`).
    pub keys: Vec<S3Key>,
    /// The region clients sign for (any region a client names is accepted, as long as the
    /// signature holds; this one is what GetBucketLocation answers).
    pub region: String,
    /// Virtual-host style: a Host of `BUCKET.DOMAIN` names the bucket.
    pub domain: Option<String>,
    /// Buckets anyone may read and list without signing (public datasets).
    pub public_buckets: Vec<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            region: S3_REGION_DEFAULT.into(),
            domain: None,
            public_buckets: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Limits that keep a node responsive under overload or abuse.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted (413 above it; the format's own limit also applies).
    pub body_bytes_max: u64,
    /// Open connections per core; further connections get a 503 and are closed.
    pub connections_per_core: usize,
    /// Requests being served at once per core; further requests get a 503 at once.
    pub in_flight_per_core: usize,
    /// Bytes of request bodies held in memory at once per core; a request that would go over
    /// gets a 503 (before its body is read, when it declares its length).
    pub buffer_bytes_per_core: u64,
    /// A connection with no progress for this long is closed (a stuck or slow client).
    pub idle_timeout_seconds: u64,
    /// A request head (request line and headers) must arrive whole within this long of its
    /// first byte, else the connection is closed (a slowloris client trickles one).
    pub head_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 256 << 20,
            connections_per_core: 4096,
            in_flight_per_core: 512,
            buffer_bytes_per_core: 1 << 30,
            idle_timeout_seconds: 30,
            head_timeout_seconds: 10,
        }
    }
}

/// The deadlines of the peer client (`peer_*` keys of `node.toml`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerDeadlines {
    pub connect: std::time::Duration,
    pub lookup: std::time::Duration,
    pub transfer: std::time::Duration,
}

/// `node.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's name in the committee.
    pub name: String,
    pub listen: String,
    /// Where the S3 API listens (IP:port; port 0 picks a free one); off unless set.
    pub s3_listen: Option<String>,
    pub s3: S3Config,
    /// One directory per disk.
    pub data_dirs: Vec<PathBuf>,
    /// Executor threads (one per core); 0 = every available core.
    pub cores: usize,
    /// Pin each executor to its own CPU.
    pub pin_cores: bool,
    /// The committee file; without one the node is a committee of one owning all `n_shards`.
    pub committee: Option<PathBuf>,
    /// etcd client URLs of the control plane: the committee is read from there at start
    /// (instead of a committee file).
    pub etcd_endpoints: Vec<String>,
    /// The prefix of floe's keys in etcd.
    pub etcd_prefix: String,
    /// Shards of the single-node committee (ignored with a committee file).
    pub n_shards: u16,
    /// Token required on writes (`Authorization: Bearer <token>`); none = writes are open.
    pub write_token: Option<String>,
    /// The secret peers prove membership with (`http::peer_auth`); with it, the node API's
    /// writes and shard pages answer only peers, whatever the write token.
    pub cluster_secret: Option<String>,
    /// Locked memory glommio registers per core for its DMA buffers. `ulimit -l` must allow
    /// `cores * io_memory_bytes`.
    pub io_memory_bytes: usize,
    /// After SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_grace_seconds: u64,
    /// Length of an epoch (blob lifetimes are counted in epochs) for the single-node committee.
    pub epoch_seconds: u64,
    /// Bytes the background scrubber re-reads (direct I/O, checksums) per second per core and
    /// data directory; 0 turns it off.
    pub scrub_bytes_per_second: u64,
    /// Every live record is re-read from the disk and checked once per this period, at the
    /// rate that needs (at most `scrub_bytes_per_second`). Default 7 days, like Ceph's deep
    /// scrub (see docs/node.md).
    pub scrub_interval_seconds: u64,
    /// How often expired blobs are dropped and their space reclaimed.
    pub reclaim_interval_seconds: u64,
    /// What `floe tune` measured (`io-properties.toml`); default: that file in the working
    /// directory if it exists, else safe defaults (see docs/node.md).
    pub io_properties: Option<PathBuf>,
    /// Verified blobs kept in memory per core for the aggregator (0 = no cache). A blob larger
    /// than a quarter of it is not cached.
    pub cache_bytes_per_core: u64,
    /// Where cached blobs of 64 KiB and more live, as unnamed files (`O_TMPFILE`, gone with the
    /// process) that responses leave from with `sendfile`: default the first data directory
    /// (the page cache holds them; the kernel may write them out). A tmpfs path keeps them in
    /// memory only.
    pub cache_dir: Option<PathBuf>,
    /// Where big uploads are spooled while they are encoded (default `spool` in the first data
    /// directory): it needs about 4.5x the largest blob being uploaded at n = 1000.
    pub spool_dir: Option<PathBuf>,
    /// How often the node asks its peers which blobs they know and rebuilds the slivers it
    /// should hold but lacks (0 = never).
    pub sync_interval_seconds: u64,
    /// Slivers rebuilt at once by the healer.
    pub heal_concurrency: usize,
    /// Longest wait for a peer to take a batch of slivers or recovery symbols, or send one
    /// (connection included).
    pub peer_timeout_seconds: u64,
    /// Longest wait for a peer's answer to a small question (metadata, status, a listing page,
    /// a delete), connection included. Why short: a hung peer must not hold up a client.
    pub peer_lookup_timeout_ms: u64,
    /// Longest wait for a connection to a peer to open.
    pub peer_connect_timeout_ms: u64,
    pub limits: Limits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "floe-0".into(),
            listen: LISTEN_DEFAULT.into(),
            s3_listen: None,
            s3: S3Config::default(),
            data_dirs: vec![PathBuf::from(DATA_DIR_DEFAULT)],
            cores: 0,
            pin_cores: true,
            committee: None,
            etcd_endpoints: Vec::new(),
            etcd_prefix: floe_control::PREFIX_DEFAULT.into(),
            n_shards: N_SHARDS_DEFAULT,
            write_token: None,
            cluster_secret: None,
            io_memory_bytes: 1 << 20,
            shutdown_grace_seconds: 10,
            epoch_seconds: EPOCH_SECONDS_DEFAULT,
            scrub_bytes_per_second: 32 << 20,
            scrub_interval_seconds: SCRUB_INTERVAL_SECONDS_DEFAULT,
            reclaim_interval_seconds: 60,
            io_properties: None,
            cache_bytes_per_core: 256 << 20,
            cache_dir: None,
            spool_dir: None,
            sync_interval_seconds: 30,
            heal_concurrency: 4,
            peer_timeout_seconds: 10,
            peer_lookup_timeout_ms: 2000,
            peer_connect_timeout_ms: 1000,
            limits: Limits::default(),
        }
    }
}

/// A shard list entry: one shard, or an inclusive range written `"a-b"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ShardSpec {
    One(u16),
    Range(String),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct CommitteeFile {
    n_shards: u16,
    #[serde(default = "epoch_seconds_default")]
    epoch_seconds: u64,
    /// Unix time at which epoch 0 began.
    #[serde(default)]
    genesis_unix_seconds: u64,
    nodes: Vec<NodeFile>,
}

fn epoch_seconds_default() -> u64 {
    EPOCH_SECONDS_DEFAULT
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    name: String,
    address: String,
    shards: Vec<ShardSpec>,
}

/// One member of the committee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub address: String,
    /// Sorted.
    pub shards: Vec<u16>,
}

/// The committee: who holds which shard. The same on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committee {
    pub n_shards: u16,
    pub epoch_seconds: u64,
    pub genesis_unix_seconds: u64,
    pub members: Vec<Member>,
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

impl Committee {
    /// A committee of one node owning every shard.
    pub fn single(name: &str, address: &str, n_shards: u16, epoch_seconds: u64) -> Self {
        Self {
            n_shards,
            epoch_seconds,
            genesis_unix_seconds: 0,
            members: vec![Member {
                name: name.into(),
                address: address.into(),
                shards: (0..n_shards).collect(),
            }],
        }
    }

    /// Parses and checks a committee file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: CommitteeFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let invalid =
            |message: String| ConfigError::Invalid(format!("{}: {message}", path.display()));
        floe_codec::EncodingConfig::new(file.n_shards).map_err(|e| invalid(e.to_string()))?;
        if file.epoch_seconds == 0 {
            return Err(invalid("epoch_seconds must be at least 1".into()));
        }
        let n = file.n_shards;
        let mut owner: Vec<Option<usize>> = vec![None; n.into()];
        let mut members = Vec::new();
        for (i, node) in file.nodes.iter().enumerate() {
            if file.nodes[..i].iter().any(|other| other.name == node.name) {
                return Err(invalid(format!("node name {:?} appears twice", node.name)));
            }
            let mut shards = Vec::new();
            for spec in &node.shards {
                let (a, b) = match spec {
                    ShardSpec::One(s) => (*s, *s),
                    ShardSpec::Range(text) => parse_range(text).ok_or_else(|| {
                        invalid(format!(
                            "node {:?}: shard range {text:?} is not \"first-last\"",
                            node.name
                        ))
                    })?,
                };
                for shard in a..=b {
                    if shard >= n {
                        return Err(invalid(format!(
                            "node {:?}: shard {shard} is out of range for n_shards = {n}",
                            node.name
                        )));
                    }
                    if let Some(other) = owner[usize::from(shard)] {
                        return Err(invalid(format!(
                            "shard {shard} is listed for both {:?} and {:?}",
                            file.nodes[other].name, node.name
                        )));
                    }
                    owner[usize::from(shard)] = Some(i);
                    shards.push(shard);
                }
            }
            shards.sort_unstable();
            members.push(Member {
                name: node.name.clone(),
                address: node.address.clone(),
                shards,
            });
        }
        if let Some(shard) = owner.iter().position(Option::is_none) {
            return Err(invalid(format!(
                "shard {shard} belongs to no node: every shard 0..{n} needs exactly one"
            )));
        }
        Ok(Self {
            n_shards: n,
            epoch_seconds: file.epoch_seconds,
            genesis_unix_seconds: file.genesis_unix_seconds,
            members,
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The epoch at `unix_seconds`.
    pub fn epoch_at(&self, unix_seconds: u64) -> u32 {
        let since = unix_seconds.saturating_sub(self.genesis_unix_seconds);
        u32::try_from(since / self.epoch_seconds).unwrap_or(u32::MAX)
    }

    /// The current epoch.
    pub fn current_epoch(&self) -> u32 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.epoch_at(now)
    }

    /// `f`: shards that may be lost or lie.
    pub fn n_faults(&self) -> usize {
        (usize::from(self.n_shards) - 1) / 3
    }
}

impl NodeConfig {
    /// Reads `node.toml`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Applies environment overrides (secrets).
    pub fn apply_env(&mut self) {
        if let Ok(token) = std::env::var(WRITE_TOKEN_ENV) {
            self.write_token = (!token.is_empty()).then_some(token);
        }
        if let Ok(secret) = std::env::var(CLUSTER_SECRET_ENV) {
            self.cluster_secret = (!secret.is_empty()).then_some(secret);
        }
        if let (Ok(id), Ok(secret)) = (
            std::env::var(S3_ACCESS_KEY_ID_ENV),
            std::env::var(S3_SECRET_ACCESS_KEY_ENV),
        ) {
            if !id.is_empty() && !secret.is_empty() {
                self.s3.keys.retain(|k| k.access_key_id != id);
                self.s3.keys.push(S3Key {
                    access_key_id: id,
                    secret_access_key: secret,
                });
            }
        }
    }

    /// The S3 listen address, parsed, if S3 is on.
    pub fn s3_listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(listen) = &self.s3_listen else {
            return Ok(None);
        };
        listen.parse().map(Some).map_err(|e| {
            ConfigError::Invalid(format!(
                "s3_listen address {listen:?} is not IP:port ({e}); for example 127.0.0.1:9000"
            ))
        })
    }

    /// Executor threads to run.
    /// Where big uploads are spooled.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone().unwrap_or_else(|| {
            self.data_dirs
                .first()
                .map_or_else(|| PathBuf::from(DATA_DIR_DEFAULT), Clone::clone)
                .join("spool")
        })
    }

    /// The peer client's deadlines.
    pub fn peer_deadlines(&self) -> PeerDeadlines {
        use std::time::Duration;
        PeerDeadlines {
            connect: Duration::from_millis(self.peer_connect_timeout_ms),
            lookup: Duration::from_millis(self.peer_lookup_timeout_ms),
            transfer: Duration::from_secs(self.peer_timeout_seconds),
        }
    }

    pub fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError::Invalid(format!(
                "listen address {:?} is not IP:port ({e}); for example {LISTEN_DEFAULT}",
                self.listen
            ))
        })
    }

    /// The committee this node belongs to (loaded, or the single-node default), checked
    /// against this node's name.
    pub fn committee(&self) -> Result<Committee, ConfigError> {
        let committee = match &self.committee {
            Some(path) => Committee::load(path)?,
            None => {
                floe_codec::EncodingConfig::new(self.n_shards)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                if self.epoch_seconds == 0 {
                    return Err(ConfigError::Invalid(
                        "epoch_seconds must be at least 1".into(),
                    ));
                }
                Committee::single(&self.name, &self.listen, self.n_shards, self.epoch_seconds)
            }
        };
        if committee.member(&self.name).is_none() {
            let names: Vec<&str> = committee.members.iter().map(|m| m.name.as_str()).collect();
            return Err(ConfigError::Invalid(format!(
                "this node's name {:?} is not in the committee (members: {}); set `name` in \
                 node.toml",
                self.name,
                names.join(", ")
            )));
        }
        Ok(committee)
    }

    /// Checks values that have no sensible meaning (before anything starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.committee.is_some() && !self.etcd_endpoints.is_empty() {
            return Err(ConfigError::Invalid(
                "both a committee file and etcd_endpoints are set: the committee comes from one \
                 of them. Fix: drop `committee` (or --committee) to take it from etcd"
                    .into(),
            ));
        }
        if self.s3_listen_addr()?.is_some() && self.s3.keys.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "s3_listen is set but no S3 key is: the S3 API never runs open. Fix: add \
                 [[s3.keys]] with access_key_id and secret_access_key to node.toml, or set \
                 {S3_ACCESS_KEY_ID_ENV} and {S3_SECRET_ACCESS_KEY_ENV}"
            )));
        }
        for key in &self.s3.keys {
            if key.access_key_id.is_empty() || key.secret_access_key.len() < 8 {
                return Err(ConfigError::Invalid(format!(
                    "S3 key {:?}: the access key ID must not be empty and the secret must have \
                     at least 8 characters",
                    key.access_key_id
                )));
            }
        }
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.data_dirs.is_empty() {
            return invalid("data_dirs needs at least one directory");
        }
        if self.core_count() > 256 {
            return invalid("cores must be at most 256");
        }
        let l = &self.limits;
        if l.connections_per_core == 0 || l.in_flight_per_core == 0 {
            return invalid(
                "limits.connections_per_core and limits.in_flight_per_core must be at least 1",
            );
        }
        if self.reclaim_interval_seconds == 0 {
            return invalid("reclaim_interval_seconds must be at least 1");
        }
        if self.peer_timeout_seconds == 0
            || self.peer_lookup_timeout_ms == 0
            || self.peer_connect_timeout_ms == 0
            || self.heal_concurrency == 0
        {
            return invalid(
                "peer_timeout_seconds, peer_lookup_timeout_ms, peer_connect_timeout_ms and \
                 heal_concurrency must be at least 1",
            );
        }
        if l.idle_timeout_seconds == 0 {
            return invalid("limits.idle_timeout_seconds must be at least 1");
        }
        if l.head_timeout_seconds == 0 {
            return invalid("limits.head_timeout_seconds must be at least 1");
        }
        if l.buffer_bytes_per_core < l.body_bytes_max {
            return invalid("limits.buffer_bytes_per_core must be at least limits.body_bytes_max");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committee_parses_ranges_and_checks_coverage() {
        let text = r#"
            n_shards = 10
            [[nodes]]
            name = "a"
            address = "127.0.0.1:1"
            shards = ["0-4", 9]
            [[nodes]]
            name = "b"
            address = "127.0.0.1:2"
            shards = ["5-8"]
        "#;
        let c = Committee::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.member("a").unwrap().shards, vec![0, 1, 2, 3, 4, 9]);
        assert_eq!(c.n_faults(), 3);
        let missing = text.replace("\"5-8\"", "\"5-7\"");
        let err = Committee::parse(&missing, Path::new("c.toml")).unwrap_err();
        assert!(
            err.to_string().contains("shard 8 belongs to no node"),
            "{err}"
        );
        let twice = text.replace("\"5-8\"", "\"4-8\"");
        let err = Committee::parse(&twice, Path::new("c.toml")).unwrap_err();
        assert!(
            err.to_string().contains("shard 4 is listed for both"),
            "{err}"
        );
        let typo = text.replace("address", "adress");
        assert!(Committee::parse(&typo, Path::new("c.toml")).is_err());
    }

    #[test]
    fn node_defaults_are_a_single_node() {
        let config: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(config, NodeConfig::default());
        let committee = config.committee().unwrap();
        assert_eq!(committee.n_shards, 1000);
        assert_eq!(committee.members[0].shards.len(), 1000);
        assert!(toml::from_str::<NodeConfig>("listn = \"x\"").is_err());
        let partial: NodeConfig = toml::from_str("[limits]\nbody_bytes_max = 10").unwrap();
        assert_eq!(partial.limits.body_bytes_max, 10);
        assert_eq!(
            partial.limits.in_flight_per_core,
            Limits::default().in_flight_per_core
        );
    }

    #[test]
    fn epochs_count_from_genesis() {
        let mut c = Committee::single("a", "x", 10, 100);
        c.genesis_unix_seconds = 1000;
        assert_eq!(c.epoch_at(999), 0);
        assert_eq!(c.epoch_at(1099), 0);
        assert_eq!(c.epoch_at(1100), 1);
    }
}
