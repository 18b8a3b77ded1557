//! Fault injection, for demonstrations and tests only (`--fault-injection`, off by default):
//! `PUT /_faults` with `{"fail_percent": N, "delay_ms": M}` makes that share of the catalog's
//! requests answer 500 (problem+json), spread evenly (never a run of failures for a lower
//! share), and every catalog request wait `delay_ms` first; `GET` shows the setting, `DELETE`
//! ends it. The stack turns it on, so an operator can watch a rollout roll itself back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// The hook's path.
pub const PATH: &str = "/_faults";

/// The faults in force.
#[derive(Debug, Default)]
pub struct Faults {
    fail_percent: AtomicU32,
    delay_ms: AtomicU64,
    seen: AtomicU64,
}

/// A fault setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// Share of the catalog's requests answered 500, 0 to 100.
    #[serde(default)]
    pub fail_percent: u32,
    /// Wait before each catalog request, in ms (at most 60,000).
    #[serde(default)]
    pub delay_ms: u64,
}

impl Faults {
    fn setting(&self) -> Setting {
        Setting {
            fail_percent: self.fail_percent.load(Ordering::Relaxed),
            delay_ms: self.delay_ms.load(Ordering::Relaxed),
        }
    }

    /// Whether the next request fails: the n-th of every hundred fails when the share's
    /// running total crosses an integer there, which spreads failures evenly.
    fn next_fails(&self) -> bool {
        let share = u64::from(self.fail_percent.load(Ordering::Relaxed));
        if share == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        (n + 1) * share / 100 > n * share / 100
    }
}

/// The hook's routes.
pub fn router(faults: Arc<Faults>) -> Router {
    Router::new()
        .route(PATH, get(show).put(set).delete(clear))
        .with_state(faults)
}

async fn show(State(faults): State<Arc<Faults>>) -> Json<Setting> {
    Json(faults.setting())
}

async fn set(
    State(faults): State<Arc<Faults>>,
    body: Result<Json<Setting>, JsonRejection>,
) -> Response {
    let setting = match body {
        Ok(Json(setting)) => setting,
        Err(rejection) => return Problem::bad_request(rejection.body_text()).into_response(),
    };
    if setting.fail_percent > 100 || setting.delay_ms > 60_000 {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-faults",
            "fail_percent is 0 to 100, delay_ms at most 60000",
        )
        .into_response();
    }
    faults
        .fail_percent
        .store(setting.fail_percent, Ordering::Relaxed);
    faults.delay_ms.store(setting.delay_ms, Ordering::Relaxed);
    tracing::warn!(
        fail_percent = setting.fail_percent,
        delay_ms = setting.delay_ms,
        "injected faults"
    );
    Json(setting).into_response()
}

async fn clear(State(faults): State<Arc<Faults>>) -> Json<Setting> {
    faults.fail_percent.store(0, Ordering::Relaxed);
    faults.delay_ms.store(0, Ordering::Relaxed);
    tracing::info!("faults cleared");
    Json(Setting::default())
}

/// The middleware: applies the faults to the catalog's routes (not to the hooks, `/livez`,
/// `/readyz`).
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/catalog/") && request.uri().path() != "/catalog" {
        return next.run(request).await;
    }
    let delay = faults.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if faults.next_fails() {
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected-fault",
            "a fault injected through /_faults",
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_the_share_and_spread_evenly() {
        for share in [0, 1, 20, 50, 99, 100] {
            let faults = Faults::default();
            faults.fail_percent.store(share, Ordering::Relaxed);
            let pattern: Vec<bool> = (0..1000).map(|_| faults.next_fails()).collect();
            let failed = pattern.iter().filter(|f| **f).count();
            assert_eq!(failed, share as usize * 10, "{share} %");
            // Never two failures in a row below half, never two successes in a row above it.
            let longest_run = pattern.split(|f| !f).map(<[bool]>::len).max().unwrap_or(0);
            if share <= 50 {
                assert!(longest_run <= 1, "{share} %: a run of {longest_run}");
            }
        }
    }
}
