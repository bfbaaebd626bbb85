//! The counts and reservations a request takes from its core, each held by a guard that gives
//! it back on drop: on every path, including a handler future dropped because its client
//! hung up (hyper drops the service future when the connection goes away), a panic, or an
//! early `?`.
//!
//! - [`InFlight`]: one of the core's `in_flight_per_core` requests (and the gauge).
//! - [`Connection`]: one of the core's `connections_per_core` connections (and the gauge).
//! - [`BufferReservation`]: bytes of the core's `buffer_bytes_per_core` for bodies, encodings
//!   and answers built in memory.
//!
//! Boundary: these are the only places the per-core counters change.

use std::rc::Rc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use crate::http::body::{check_declared, collect_body};
use crate::http::error::ApiError;
use crate::metrics::{CoreLabel, ReasonLabel};
use crate::state::CoreState;

/// One request being served on a core; given back on drop.
pub struct InFlight {
    state: Rc<CoreState>,
}

impl InFlight {
    /// Takes one of the core's request slots, or 503 `overloaded` when all are taken.
    pub fn take(state: &Rc<CoreState>) -> Result<Self, ApiError> {
        let limit = state.shared.config.limits.in_flight_per_core;
        if state.in_flight.get() >= limit {
            reject(state, "in_flight");
            return Err(ApiError::unavailable(
                "overloaded",
                format!("this core is serving {limit} requests already; retry later"),
            ));
        }
        state.in_flight.set(state.in_flight.get() + 1);
        let label = CoreLabel {
            core: state.core as u16,
        };
        state.shared.metrics.in_flight.get_or_create(&label).inc();
        Ok(Self {
            state: state.clone(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.state;
        state.in_flight.set(state.in_flight.get() - 1);
        let label = CoreLabel {
            core: state.core as u16,
        };
        state.shared.metrics.in_flight.get_or_create(&label).dec();
    }
}

/// One open connection on a core; given back on drop.
pub struct Connection {
    state: Rc<CoreState>,
}

impl Connection {
    /// Counts a connection, or `None` when the core serves `connections_per_core` already.
    pub fn take(state: &Rc<CoreState>) -> Option<Self> {
        if state.connections.get() >= state.shared.config.limits.connections_per_core {
            reject(state, "connections");
            return None;
        }
        state.connections.set(state.connections.get() + 1);
        let label = CoreLabel {
            core: state.core as u16,
        };
        state.shared.metrics.connections.get_or_create(&label).inc();
        Some(Self {
            state: state.clone(),
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let state = &self.state;
        state.connections.set(state.connections.get() - 1);
        let label = CoreLabel {
            core: state.core as u16,
        };
        state.shared.metrics.connections.get_or_create(&label).dec();
    }
}

fn reject(state: &CoreState, reason: &'static str) {
    state
        .shared
        .metrics
        .rejected
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// Bytes of memory a request holds on this core; given back on drop.
pub struct BufferReservation {
    state: Rc<CoreState>,
    bytes: u64,
}

impl Drop for BufferReservation {
    fn drop(&mut self) {
        let b = &self.state.buffer_bytes;
        b.set(b.get() - self.bytes);
    }
}

/// Reserves `bytes` of the core's buffer budget: 413 when it could never fit (more than the
/// whole budget), 503 `overloaded` when other requests hold too much of it now.
pub fn reserve(state: &Rc<CoreState>, bytes: u64) -> Result<BufferReservation, ApiError> {
    let limit = state.shared.config.limits.buffer_bytes_per_core;
    if bytes > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "tooLarge",
            format!(
                "this request needs {bytes} bytes of memory, more than this node's \
                 buffer_bytes_per_core ({limit}): it can never be served here"
            ),
        ));
    }
    let used = state.buffer_bytes.get();
    if used + bytes > limit {
        reject(state, "buffer_bytes");
        return Err(ApiError::unavailable(
            "overloaded",
            format!("memory for request bodies on this core is in use ({used} of {limit} bytes); retry later"),
        ));
    }
    state.buffer_bytes.set(used + bytes);
    Ok(BufferReservation {
        state: state.clone(),
        bytes,
    })
}

/// Reads a whole body of at most `limit` bytes, its memory reserved for as long as the
/// reservation lives. A body that ends early or stalls is an error, and nothing of it is kept.
pub async fn read_body(
    state: &Rc<CoreState>,
    request: Request<Incoming>,
    limit: u64,
) -> Result<(Bytes, BufferReservation), ApiError> {
    let declared = check_declared(request.headers(), limit)?;
    let reservation = reserve(state, declared.unwrap_or(limit))?;
    let stall = std::time::Duration::from_secs(state.shared.config.limits.idle_timeout_seconds);
    let bytes = collect_body(request.into_body(), limit, stall).await?;
    state
        .shared
        .metrics
        .received_bytes
        .inc_by(bytes.len() as u64);
    Ok((bytes, reservation))
}

/// 401 unless the request carries the node's write token (when it has one).
/// A node-API call only peers make (storing metadata and slivers, deleting here, pulling a
/// shard): with a cluster secret, it must carry a valid peer signature (401 `peerUnauthorized`
/// otherwise, whatever the write token); without one, writes need the write token as before.
pub fn check_peer(state: &CoreState, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(secret) = &state.shared.config.cluster_secret else {
        let write =
            request.method() == hyper::Method::PUT || request.method() == hyper::Method::DELETE;
        return if write {
            check_token(state, request)
        } else {
            Ok(())
        };
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let value = request
        .headers()
        .get(crate::http::peer_auth::HEADER)
        .and_then(|v| v.to_str().ok());
    crate::http::peer_auth::verify(secret, value, request.method().as_str(), path, now)
        .map(|_| ())
        .map_err(|why| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "peerUnauthorized",
                format!("this node API call is for peers of the cluster only: {why}"),
            )
        })
}

pub fn check_token(state: &CoreState, request: &Request<Incoming>) -> Result<(), ApiError> {
    crate::http::body::check_token(
        state.shared.config.write_token.as_deref(),
        request.headers(),
    )
}
