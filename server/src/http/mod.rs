//! HTTP plumbing shared by every API: errors ([`error`]), bodies and responses ([`body`]),
//! peer authentication ([`peer_auth`]),
//! routing ([`route`], pure and fuzzed), and the adapter between glommio sockets and hyper
//! with the zero-copy send path ([`io`]).
//!
//! Boundary: nothing here knows the node's state or handlers; handlers use this module, never
//! the other way round.

pub mod body;
pub mod error;
pub(crate) mod io;
pub mod peer_auth;
pub mod route;

pub use error::ApiError;
