//! A connection's life on a core: the connection limit, the idle timeout, the in-flight
//! limit, routing each request to its handler, and request metrics.
//!
//! The idle timeout closes a connection only when nothing moved on it for
//! `idle_timeout_seconds` *and* no request of it is being served: a client waiting for a slow
//! answer (a write waiting on its peers) is never cut off. A body that stalls while its handler
//! reads it ends that request instead ([`crate::http::body::collect_body`]).
//!
//! Boundary: the only module that maps routes to handlers; the handlers never see a
//! connection.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use futures::FutureExt;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use tracing::debug;

use crate::budget::{check_peer, check_token, Connection, InFlight};
use crate::http::body::{error_response, Body};
use crate::http::error::ApiError;
use crate::http::io::{Activity, HyperStream};
use crate::http::route::Route;
use crate::metrics::Metrics;
use crate::node_api;
use crate::state::CoreState;

/// Which API a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// The user, node and operator APIs (`api.md`).
    Floe,
    /// The S3 API ([`crate::s3`]).
    S3,
}

/// Tells connections to finish up.
#[derive(Default)]
pub(crate) struct Stopping {
    pub(crate) flag: std::cell::Cell<bool>,
    pub(crate) event: event_listener::Event,
}

/// Answers 503 on a connection over the limit and closes it.
async fn refuse_connection(mut stream: TcpStream, limit: usize) {
    let err = ApiError::unavailable(
        "tooManyConnections",
        format!("this core serves {limit} connections already; retry later"),
    );
    let body = err.body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.close().await;
}

/// Largest request head hyper buffers. Why: bounds per-connection memory; real heads are
/// well under 16 KiB.
const HEAD_BYTES_MAX: usize = 64 << 10;

/// Serves one accepted connection until it closes, is idle, or the node stops; over the
/// core's connection limit it is answered 503 and closed.
pub(crate) async fn connection(
    state: Rc<CoreState>,
    stream: TcpStream,
    stopping: Rc<Stopping>,
    api: Api,
) {
    let Some(_counted) = Connection::take(&state) else {
        let limit = state.shared.config.limits.connections_per_core;
        return refuse_connection(stream, limit).await;
    };
    let idle = Duration::from_secs(state.shared.config.limits.idle_timeout_seconds);
    let head = Duration::from_secs(state.shared.config.limits.head_timeout_seconds);
    let _ = stream.set_nodelay(true);
    let activity = Rc::new(Activity::default());
    let service_state = state.clone();
    let service_activity = activity.clone();
    let service = service_fn(move |request| {
        let state = service_state.clone();
        // Held while the handler runs (dropped with it if the client goes away).
        let busy = service_activity.busy();
        async move {
            // An `Rc` (no atomic) for the rare panic's metrics.
            let core = state.clone();
            let answered = std::panic::AssertUnwindSafe(async move {
                match api {
                    Api::Floe => handle(state, request).await,
                    Api::S3 => handle_s3(state, request).await,
                }
            })
            .catch_unwind()
            .await;
            let response =
                answered.unwrap_or_else(|panic| answer_panic(&core.shared.metrics, api, &*panic));
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_buf_size(HEAD_BYTES_MAX.max(8192))
        .keep_alive(true);
    let io = match HyperStream::with_activity(stream, activity.clone()) {
        Ok(io) => io,
        Err(err) => {
            debug!(%err, "could not set up a connection");
            return;
        }
    };
    let connection = builder.serve_connection(io, service);
    futures::pin_mut!(connection);
    let stop = stopping.event.listen();
    let watch = Box::pin(idle_watch(&activity, idle, head));
    let result = if stopping.flag.get() {
        connection.as_mut().graceful_shutdown();
        connection.await
    } else {
        match select(connection.as_mut(), select(stop, watch)).await {
            Either::Left((result, _)) => result,
            Either::Right((Either::Left(((), _)), _)) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            // Idle, or a head too slow: nothing to finish; dropping the connection closes it.
            Either::Right((Either::Right((ended, _)), _)) => {
                if ended == Quiet::SlowHead {
                    state
                        .shared
                        .metrics
                        .rejected
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "slow_head",
                        })
                        .inc();
                }
                Ok(())
            }
        }
    };
    if let Err(err) = result {
        debug!(%err, "connection ended with an error");
    }
}

/// Why [`idle_watch`] ended a connection.
#[derive(PartialEq, Eq)]
enum Quiet {
    /// No bytes moved for the idle timeout and no request being served.
    Idle,
    /// A request head still incomplete `head` after its first byte (slowloris).
    SlowHead,
}

/// Returns once the connection has been idle for `idle` (no bytes moved and no request being
/// served), or a request head has been arriving for longer than `head`. Why both: a client
/// that trickles a head a byte at a time is never idle, and would hold its connection (and
/// its share of the connection limit) for ever.
async fn idle_watch(activity: &Activity, idle: Duration, head: Duration) -> Quiet {
    loop {
        let quiet = activity.quiet_for();
        if quiet >= idle && !activity.is_busy() {
            return Quiet::Idle;
        }
        let head_for = activity.head_for();
        if head_for.is_some_and(|taken| taken >= head) {
            return Quiet::SlowHead;
        }
        let mut wait = if activity.is_busy() {
            idle
        } else {
            idle.saturating_sub(quiet)
        };
        if let Some(taken) = head_for {
            wait = wait.min(head - taken);
        }
        // A head may begin at any moment: look again within the head timeout.
        wait = wait.min(head);
        glommio::timer::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

/// Serves one request: the in-flight limit, routing, the handler, metrics.
async fn handle(state: Rc<CoreState>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let metrics = state.shared.metrics.clone();
    let _in_flight = match InFlight::take(&state) {
        Ok(guard) => guard,
        Err(err) => return finish(&metrics, "overloaded", started, error_response(&err)),
    };
    let route = crate::http::route::parse(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let (name, response) = match route {
        Ok(route) => {
            let name = route.name();
            let response = dispatch(&state, route, request)
                .await
                .unwrap_or_else(|err| error_response(&err));
            (name, response)
        }
        Err(err) => ("unknown", error_response(&err)),
    };
    finish(&metrics, name, started, response)
}

/// The answer to a request whose handler panicked: 500, logged and counted. Why caught: a bug
/// reached by one request (a parser's, say) must cost that request, not the core and every
/// connection on it; unwinding dropped the request's guards, so its counts are given back.
fn answer_panic(metrics: &Metrics, api: Api, panic: &(dyn std::any::Any + Send)) -> Response<Body> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked; answered 500");
    metrics.handler_panics.inc();
    let message = "the node failed to serve this request (a bug: see its log)";
    match api {
        Api::Floe => error_response(&ApiError::new(
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            "internalError",
            message,
        )),
        Api::S3 => crate::s3::xml::S3Error::internal(message).response(false),
    }
}

/// Serves one S3 request: the in-flight limit, the operation, metrics.
async fn handle_s3(state: Rc<CoreState>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let metrics = state.shared.metrics.clone();
    let _in_flight = match InFlight::take(&state) {
        Ok(guard) => guard,
        Err(err) => {
            let err = crate::s3::xml::S3Error::from(err);
            return finish(&metrics, "overloaded", started, err.response(false));
        }
    };
    let (name, response) = crate::s3::api::serve(&state, request).await;
    finish(&metrics, name, started, response)
}

fn finish(
    metrics: &Metrics,
    route: &'static str,
    started: Instant,
    response: Response<Body>,
) -> Response<Body> {
    metrics
        .requests
        .get_or_create(&crate::metrics::RouteStatus {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .request_seconds
        .get_or_create(&crate::metrics::RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Serves one routed request.
pub async fn dispatch(
    state: &Rc<CoreState>,
    route: Route,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    match route {
        Route::Health => Ok(crate::operator::health(state)),
        Route::Metrics => crate::operator::metrics(state),
        Route::Metadata {
            blob_id,
            method,
            epochs,
            deletable,
        } => {
            if method == Method::PUT {
                check_peer(state, &request)?;
                node_api::put_metadata(state, blob_id, epochs, deletable, request).await
            } else {
                node_api::get_metadata(state, blob_id).await
            }
        }
        Route::DeleteHere { blob_id, end_epoch } => {
            check_peer(state, &request)?;
            node_api::delete_metadata(state, blob_id, end_epoch).await
        }
        Route::Sliver {
            blob_id,
            method,
            pair,
            kind,
        } => {
            let serving = method != Method::PUT;
            let shard = node_api::shard_of(state, &blob_id, pair, serving)?;
            if method == Method::PUT {
                check_peer(state, &request)?;
                node_api::put_sliver(state, blob_id, pair, shard, kind, request).await
            } else {
                node_api::get_sliver(state, blob_id, shard, kind).await
            }
        }
        Route::RecoverySymbols {
            blob_id,
            target_pairs,
            target_kind,
            limit,
        } => node_api::recovery_symbols(state, blob_id, &target_pairs, target_kind, limit).await,
        Route::Status { blob_id } => node_api::status(state, blob_id).await,
        Route::Slivers {
            blob_id,
            method,
            kind,
            pairs,
        } => match kind {
            Some(kind) if method != Method::PUT => {
                node_api::get_slivers(state, blob_id, kind, &pairs).await
            }
            _ => {
                check_peer(state, &request)?;
                node_api::put_slivers(state, blob_id, request).await
            }
        },
        Route::List { after, limit } => node_api::list_blobs(state, after, limit).await,
        Route::Publish { epochs, deletable } => {
            check_token(state, &request)?;
            crate::publisher::publish(state, epochs, deletable, request).await
        }
        Route::Blob { blob_id, method } => {
            crate::aggregator::read(state, blob_id, method == Method::HEAD, &request).await
        }
        Route::Delete { blob_id } => {
            check_token(state, &request)?;
            crate::publisher::delete(state, blob_id).await
        }
        Route::ShardSlivers {
            shard,
            after,
            limit,
        } => {
            check_peer(state, &request)?;
            node_api::shard_slivers(state, shard, after, limit).await
        }
    }
}
