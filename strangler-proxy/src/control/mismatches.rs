//! Shadow mismatches kept for the whole cluster: each replica writes what its comparisons
//! found into the control database at every flush (the differences redacted and bounded as
//! [`crate::shadow::redacted`] makes them), counted by field and by route with the
//! comparisons made, so the report of a carve-out covers every replica and survives restarts.

use serde::{Deserialize, Serialize};

use super::store::StoredMismatch;
use super::ControlPlane;
use crate::analysis::rate;
use crate::compare::Difference;

/// Samples kept per carve-out (the oldest go).
pub const KEPT: i64 = 500;

/// One kept mismatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptMismatch {
    /// When (RFC 3339).
    pub at: String,
    /// The replica that found it.
    pub replica: String,
    /// The request's method.
    pub method: String,
    /// The request's path and query.
    pub path: String,
    /// What differed (the monolith's value is `expected`), redacted.
    pub differences: Vec<Difference>,
}

/// A carve-out's shadow mismatches across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MismatchReport {
    /// The carve-out.
    pub carveout: String,
    /// Comparisons made, by every replica, since the carve-out was first compared.
    pub compared: i64,
    /// Of those, mismatches.
    pub mismatched: i64,
    /// `mismatched / compared`, when something was compared.
    pub rate: Option<f64>,
    /// Mismatches by where they differ (a JSON pointer, `status`, `header:<name>`), most first.
    pub by_field: Vec<(String, i64)>,
    /// Mismatches by route (method and path, numbers as `{n}`), most first.
    pub by_route: Vec<(String, i64)>,
    /// The newest samples, newest first.
    pub samples: Vec<KeptMismatch>,
}

/// The route a request is counted under: its method and path, without the query, numeric
/// segments as `{n}` (so `/catalog/products/7` and `/8` count together).
pub fn route_of(method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{n}"
            } else {
                s
            }
        })
        .collect();
    format!("{method} {}", segments.join("/"))
}

impl ControlPlane {
    /// Writes the mismatches this replica found since the last flush, and the comparisons it
    /// made (`totals`: carve-out, compared, mismatched).
    pub(super) async fn flush_mismatches(
        &self,
        totals: &[(String, u64, u64)],
    ) -> Result<(), sqlx::Error> {
        let pending = self.proxy.mismatches().take_pending();
        let found: Vec<StoredMismatch> = pending
            .into_iter()
            .map(|(carveout, m)| StoredMismatch {
                route: route_of(&m.method, &m.path),
                fields: m.differences.iter().map(|d| d.path.clone()).collect(),
                differences: serde_json::to_string(&m.differences)
                    .unwrap_or_else(|_| "[]".to_owned()),
                carveout,
                replica: self.replica_id.to_string(),
                at: m.at,
                method: m.method,
                path: m.path,
            })
            .collect();
        self.store
            .record_mismatches(&self.replica_id, &found, totals, KEPT)
            .await
    }

    /// The mismatches of `carveout` across the cluster, with the newest `limit` samples.
    pub async fn mismatch_report(
        &self,
        carveout: &str,
        limit: i64,
    ) -> Result<MismatchReport, sqlx::Error> {
        let mut report = MismatchReport {
            carveout: carveout.to_owned(),
            compared: 0,
            mismatched: 0,
            rate: None,
            by_field: Vec::new(),
            by_route: Vec::new(),
            samples: Vec::new(),
        };
        for (kind, key, count) in self.store.mismatch_counts(carveout).await? {
            match (kind.as_str(), key.as_str()) {
                ("total", "compared") => report.compared = count,
                ("total", "mismatched") => report.mismatched = count,
                ("field", _) => report.by_field.push((key, count)),
                ("route", _) => report.by_route.push((key, count)),
                _ => {}
            }
        }
        report.rate = rate(
            u64::try_from(report.mismatched).unwrap_or(0),
            u64::try_from(report.compared).unwrap_or(0),
        );
        for m in self.store.mismatches(carveout, limit).await? {
            report.samples.push(KeptMismatch {
                differences: serde_json::from_str(&m.differences).unwrap_or_default(),
                at: m.at,
                replica: m.replica,
                method: m.method,
                path: m.path,
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn routes_count_numbers_together_and_drop_the_query() {
        assert_eq!(
            route_of("GET", "/catalog/products/42?x=1"),
            "GET /catalog/products/{n}"
        );
        assert_eq!(
            route_of("GET", "/catalog/products"),
            "GET /catalog/products"
        );
        assert_eq!(route_of("HEAD", "/a/b2/3/"), "HEAD /a/b2/{n}/");
    }
}
