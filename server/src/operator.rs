//! The operator endpoints: `/v1/health` (JSON) and `/metrics` (Prometheus text).

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::http::body::{json_response, Body};
use crate::http::error::ApiError;
use crate::metrics::fs_space;
use crate::state::CoreState;

pub(crate) fn health(state: &CoreState) -> Response<Body> {
    let shared = &state.shared;
    let dirs = &shared.config.data_dirs;
    let mut disks = Vec::new();
    let mut healthy_dirs = Vec::new();
    for dir in dirs {
        let space = fs_space(dir);
        let health = shared.metrics.disk_health(dir);
        healthy_dirs.push(health.is_ok());
        disks.push(json!({
            "dir": dir.display().to_string(),
            "freeBytes": space.map(|s| s.0),
            "totalBytes": space.map(|s| s.1),
            "healthy": health.is_ok(),
            "problem": health.err(),
        }));
    }
    let view = shared.view();
    // Where each shard lives now: a retired directory's shards moved to the live ones.
    let live = shared.retired.live();
    let healthy = view
        .me
        .shards
        .iter()
        .filter(|s| floe_storage::disks::place(**s, &live).is_some_and(|d| healthy_dirs[d]))
        .count();
    let owned = view.me.shards.len();
    json_response(
        StatusCode::OK,
        json!({
            "status": if healthy == owned && healthy_dirs.iter().all(|h| *h) { "ok" } else { "degraded" },
            "name": view.me.name,
            "epoch": shared.epoch(),
            "nShards": shared.n_shards,
            "shardsOwned": owned,
            "shardsHealthy": healthy,
            "cores": shared.owners.cores(),
            "disks": disks,
            "io": shared.io,
            "sync": shared.sync.to_json(),
            "control": shared.control.as_ref().map(|c| c.to_json()),
            "blobBytesMax": shared.blob_bytes_max(),
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

pub(crate) fn metrics(state: &CoreState) -> Result<Response<Body>, ApiError> {
    state
        .shared
        .metrics
        .refresh_disks(&state.shared.config.data_dirs);
    let faults = &state.shared.metrics.mapped_read_faults;
    faults.inc_by(floe_storage::fault::faults().saturating_sub(faults.get()));
    let panics = &state.shared.metrics.task_panics;
    panics.inc_by(crate::task::panics().saturating_sub(panics.get()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.shared.registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metricsError",
            e.to_string(),
        )
    })?;
    let mut response = Response::new(Body::from(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
