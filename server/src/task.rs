//! Detached tasks on a core, guarded: a panic in one is caught, logged and counted
//! (`floe_task_panics_total`) instead of unwinding through the core's executor, which would
//! take the whole core (every connection and shard it serves) down with it. A request
//! handler's panic is caught the same way in `serve` (answered 500).
//!
//! Also the node's failpoints: `FLOE_FAILPOINTS=name[,name]` makes [`failpoint`] true for
//! those names, so that tests can make a real process fail where it matters (a stream
//! producer that panics). Unset, each check is one load of a cached empty list.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use futures::FutureExt;

/// Panics of detached tasks caught since the process started.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics caught in detached tasks (for `/metrics`).
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Spawns `future` on this core, detached, with its panic caught: logged with `what`,
/// counted, and the core goes on (what the task held is dropped as it unwinds, so its guards
/// give their budgets back).
pub(crate) fn spawn_detached(what: &'static str, future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(async move {
        if let Err(panic) = AssertUnwindSafe(future).catch_unwind().await {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(task = what, panic = %message, "a background task panicked; the core goes on");
            PANICS.fetch_add(1, Ordering::Relaxed);
        }
    })
    .detach();
}

/// Whether failpoint `name` is on (`FLOE_FAILPOINTS`, read once).
pub(crate) fn failpoint(name: &str) -> bool {
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    ON.get_or_init(|| {
        std::env::var("FLOE_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .iter()
    .any(|on| on == name)
}
