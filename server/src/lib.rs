//! The floe storage node: one glommio executor per core, shared-nothing, serving the node
//! (peer) API, and the operator endpoints over HTTP/1.1 (hyper).
//!
//! - [`config`]: `node.toml` and the committee file.
//! - [`route`]: request line to [`route::Route`] (pure; fuzzed).
//! - [`api`]: the handlers.
//! - [`owner`]: which core owns which shard, and the owner task that serves its storage.
//! - [`node`]: startup checks, executors, graceful shutdown.
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hyper_io;
pub mod io_plan;
pub mod metrics;
pub mod node;
pub mod owner;
pub mod route;

pub use config::NodeConfig;
pub use node::{run, NodeError, Ready};
