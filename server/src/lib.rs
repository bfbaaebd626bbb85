//! The floe storage node: one glommio executor per core, shared-nothing, serving the user,
//! node (peer) and operator APIs over HTTP/1.1 (hyper).
//!
//! - [`config`]: `node.toml` and the committee file.
//! - [`route`]: request line to [`route::Route`] (pure; fuzzed).
//! - [`api`]: the handlers of the node (peer) and operator APIs.
//! - [`blobs`]: the user API: publisher and aggregator, with the hot-blob cache.
//! - [`sync`]: learning blobs from peers and rebuilding missing slivers (healing).
//! - [`peer`]: the HTTP client each core uses to talk to other nodes.
//! - [`owner`]: which core owns which shard, and the owner task that serves its storage.
//! - [`node`]: startup checks, executors, graceful shutdown.
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod blobs;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hyper_io;
pub mod io_plan;
pub mod metrics;
pub mod node;
pub mod owner;
pub mod peer;
pub mod route;
pub mod sync;

pub use config::NodeConfig;
pub use node::{run, NodeError, Ready};
