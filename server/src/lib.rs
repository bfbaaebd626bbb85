//! The floe storage node: one glommio executor per core, shared-nothing, serving the user,
//! node (peer) and operator APIs over HTTP/1.1 (hyper).
//!
//! The modules, lowest layer first (a module uses only those above it in this list;
//! `ARCHITECTURE.md` has the invariant and boundary of each):
//!
//! - [`config`], [`metrics`], [`io_plan`]: `node.toml` and the committee file, Prometheus
//!   metrics, how hard each disk is pushed; [`control`]: the committee read from etcd at start.
//! - [`scrub`]: the scrubber's pace (one pass per `scrub_interval_seconds`).
//! - [`owner`]: which core owns which shard, and the owner task that serves its storage.
//! - [`http`]: HTTP plumbing: errors, bodies and responses, routing (pure; fuzzed), the hyper
//!   adapter with the `sendfile` path.
//! - [`state`] and [`budget`]: what every core shares and each core keeps (caches, storage
//!   calls); the counts and reservations a request takes, each given back by a guard on drop.
//! - [`peer_client`]: the HTTP client each core uses to talk to other nodes: deadlines,
//!   retries, hedged requests, answer bounds.
//! - [`node_api`]: the node (peer) API handlers; [`operator`]: health and metrics.
//! - [`recover`]: slivers recovered from recovery symbols (this node's, then peers').
//! - [`blob_cache`], [`aggregator`]: the user API's reads, with the hot-blob cache.
//! - [`spool`]: big uploads spooled to disk and encoded in strips.
//! - [`publisher`]: the user API's writes (`PUT`, `DELETE`).
//! - [`sync`] and [`heal`]: learning blobs from peers, rebuilding missing slivers.
//! - [`s3`]: the S3 API (being built: SigV4 verification so far).
//! - [`serve`]: a connection's life: limits, idle timeout, routing a request to its handler.
//! - [`node`]: startup checks, executors, graceful shutdown.

pub mod aggregator;
pub mod blob_cache;
pub mod budget;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod heal;
pub mod http;
pub mod io_plan;
pub mod metrics;
pub mod migrate;
pub mod node;
pub mod node_api;
pub mod operator;
pub mod owner;
pub mod peer_client;
pub mod protocol;
pub mod publisher;
pub mod recover;
pub mod s3;
pub mod scrub;
pub mod serve;
pub mod spool;
pub mod state;
pub mod sync;
pub mod task;

pub use config::NodeConfig;
pub use node::{run, NodeError, Ready};
