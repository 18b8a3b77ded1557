//! The operator dashboard: one page served by the admin API (`GET /dashboard`), behind the same
//! tokens. The page is static HTML and a small script of our own, no framework: the script
//! signs in (`POST /dashboard/session` turns a token into an HttpOnly, SameSite=Strict cookie),
//! reads [`Overview`] from `GET /dashboard/data` every two seconds, and acts through the admin
//! API's own routes (phase changes, rollout pause, resume and abort), each with a reason and a
//! confirmation. A request signed in by the cookie that changes something must carry
//! `X-Strangler-Csrf: 1`, which a cross-site form cannot send.

use serde::Serialize;

use super::mismatches::MismatchReport;
use super::status::Status;
use super::store::AuditEntry;
use super::ControlPlane;
use crate::analysis::{p99_ms, rate};

/// The page.
pub(crate) const PAGE: &str = include_str!("dashboard.html");
/// Its script.
pub(crate) const SCRIPT: &str = include_str!("dashboard.js");

/// Everything the page shows, in one read.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The replica that answered (its counts are its own).
    pub replica: String,
    /// Every carve-out.
    pub carveouts: Vec<Panel>,
    /// The latest audit entries, newest first.
    pub audit: Vec<AuditEntry>,
}

/// One carve-out on the page.
#[derive(Debug, Clone, Serialize)]
pub struct Panel {
    /// Phase, fence, traffic, data sync, contracts, replicas and rollout.
    pub status: Status,
    /// The canary share (0 to 100), in `canary`.
    pub percent: Option<f64>,
    /// What the monolith answered, as this replica counted it.
    pub monolith: Side,
    /// What the service answered.
    pub service: Side,
    /// Shadow mismatches across the cluster, with the latest samples and their diffs.
    pub mismatches: MismatchReport,
}

/// One side's figures since this replica started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Side {
    /// Requests answered.
    pub requests: u64,
    /// Share of them that were 5xx.
    pub error_rate: Option<f64>,
    /// The 99th percentile of the time to the response head (ms).
    pub p99_ms: Option<f64>,
}

/// Latest samples of mismatches shown per carve-out.
const SAMPLES: i64 = 5;
/// Audit entries shown.
const AUDIT: i64 = 20;

impl ControlPlane {
    /// What the dashboard shows now.
    pub async fn overview(&self) -> Result<Overview, sqlx::Error> {
        let routing = self.proxy().routing();
        let mut carveouts = Vec::new();
        for live in routing.carveouts() {
            let name = &live.spec.name;
            let Some(status) = self.status(name).await? else {
                continue;
            };
            let counts = live.counts();
            let percent = match live.phase {
                crate::phase::Phase::Canary { basis_points } => {
                    Some(f64::from(basis_points) / 100.0)
                }
                _ => None,
            };
            carveouts.push(Panel {
                status,
                percent,
                monolith: Side {
                    requests: counts.monolith_requests,
                    error_rate: rate(counts.monolith_errors, counts.monolith_requests),
                    p99_ms: p99_ms(&counts.monolith_latency),
                },
                service: Side {
                    requests: counts.service_requests,
                    error_rate: rate(counts.service_errors, counts.service_requests),
                    p99_ms: p99_ms(&counts.service_latency),
                },
                mismatches: self.mismatch_report(name, SAMPLES).await?,
            });
        }
        Ok(Overview {
            replica: self.replica_id().to_owned(),
            carveouts,
            audit: self.store().audit(None, AUDIT).await?,
        })
    }
}
