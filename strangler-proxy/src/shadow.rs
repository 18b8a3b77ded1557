//! Shadow reads: a copy of a monolith-served read goes to the service off the critical path, and
//! the two responses are compared.
//!
//! The primary response streams to the client untouched while a bounded copy of it is taken
//! ([`crate::body::ProxyBody::tee`]). The shadow call runs in its own task, only if one of a fixed
//! number of slots is free (otherwise it is dropped and counted), so shadowing never slows the
//! primary. Mismatches are counted and a sample of each (with its differences) is kept in a
//! bounded store per carve-out that the admin API reads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};

use crate::compare::{Comparator, Difference, Observed};
use crate::metrics::RouteMetrics;
use crate::upstream::{Replay, Upstream};

/// One recorded mismatch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mismatch {
    /// When it was seen (RFC 3339, UTC, as every time the toolkit shows).
    pub at: String,
    /// The request method.
    pub method: String,
    /// The request path and query.
    pub path: String,
    /// What differed (the monolith's value is `expected`, the service's `actual`).
    pub differences: Vec<Difference>,
}

/// The latest mismatches of each carve-out, at most `capacity` each.
#[derive(Debug, Clone)]
pub struct MismatchStore {
    inner: Arc<Mutex<HashMap<String, VecDeque<Mismatch>>>>,
    capacity: usize,
    /// Mismatches not yet written to the control database (at most [`PENDING_KEPT`]).
    pending: Arc<Mutex<Vec<(String, Mismatch)>>>,
}

/// Mismatches waiting for the control database at most; past it, the newest are dropped
/// (they are counted all the same).
pub const PENDING_KEPT: usize = 1_000;

/// The largest value of a difference kept, serialised; a larger one is replaced by its size.
pub const MAX_KEPT_VALUE: usize = 1_024;

impl MismatchStore {
    /// A store keeping `capacity` samples per carve-out.
    pub fn new(capacity: usize) -> Self {
        MismatchStore {
            inner: Arc::default(),
            capacity: capacity.max(1),
            pending: Arc::default(),
        }
    }

    fn push(&self, carveout: &str, mismatch: Mismatch) {
        // A std mutex: held for a push, never across an await.
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let samples = all.entry(carveout.to_owned()).or_default();
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(mismatch.clone());
        drop(all);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < PENDING_KEPT {
            pending.push((carveout.to_owned(), mismatch));
        }
    }

    /// The mismatches recorded since the last call, for the control database.
    pub fn take_pending(&self) -> Vec<(String, Mismatch)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The kept mismatches of a carve-out, oldest first.
    pub fn list(&self, carveout: &str) -> Vec<Mismatch> {
        let all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        all.get(carveout)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a shadow comparison needs from the primary exchange.
pub struct ShadowJob {
    /// The carve-out's name.
    pub carveout: String,
    /// The read, as sent to the monolith.
    pub request: Replay,
    /// The monolith's status and compared headers.
    pub primary: Observed,
    /// The monolith's body, when it has been streamed to the client.
    pub primary_body: oneshot::Receiver<Option<Bytes>>,
    /// The service.
    pub service: Arc<Upstream>,
    /// How to compare.
    pub comparator: Comparator,
    /// Where to count.
    pub metrics: RouteMetrics,
    /// What to redact of the differences kept.
    pub redactor: Arc<contracts::redact::Redactor>,
}

/// Runs shadow jobs within a bounded number of slots.
#[derive(Debug, Clone)]
pub struct Shadower {
    slots: Arc<Semaphore>,
    max_body: usize,
    store: MismatchStore,
}

impl Shadower {
    /// At most `concurrency` comparisons in flight, bodies up to `max_body` bytes.
    pub fn new(concurrency: usize, max_body: usize, store: MismatchStore) -> Self {
        Shadower {
            slots: Arc::new(Semaphore::new(concurrency)),
            max_body,
            store,
        }
    }

    /// The largest body a comparison buffers.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// The mismatch store.
    pub fn store(&self) -> &MismatchStore {
        &self.store
    }

    /// Whether a slot is free now; if not, the shadow copy is dropped (and counted).
    pub fn try_start(&self, metrics: &RouteMetrics) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics.shadow_dropped.inc();
                None
            }
        }
    }

    /// Sends the copy to the service and compares, in the background.
    pub fn spawn(&self, mut job: ShadowJob, permit: tokio::sync::OwnedSemaphorePermit) {
        let max_body = self.max_body;
        let store = self.store.clone();
        // Traced, the copy is a trace of its own, linked to the request it copies (it must not
        // count in that request's latency), and the service sees it as its parent.
        let span = if telemetry::traces_on() {
            let span = tracing::info_span!(
                parent: None,
                "shadow",
                otel.kind = "client",
                strangler.carveout = job.carveout.as_str(),
            );
            telemetry::link(&span, &tracing::Span::current());
            telemetry::http::inject(&span, &mut job.request.headers);
            span
        } else {
            tracing::Span::none()
        };
        let copy = async move {
            let _permit = permit;
            // No retries for a copy: it must not add load beyond one request.
            let actual = match job.service.send(job.request.request(), None).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let headers = pick_headers(response.headers(), job.comparator.headers());
                    let body = Limited::new(response.into_body(), max_body)
                        .collect()
                        .await
                        .ok()
                        .map(|b| b.to_bytes().to_vec());
                    Observed {
                        status,
                        headers,
                        body,
                    }
                }
                // The service failing is a mismatch like any other: the monolith answered.
                Err(err) => Observed {
                    status: 502,
                    headers: Vec::new(),
                    body: Some(err.to_string().into_bytes()),
                },
            };
            let Ok(Some(primary_body)) = job.primary_body.await else {
                // The client went away or the body was too large to compare: nothing to judge.
                return;
            };
            let expected = Observed {
                body: Some(primary_body.to_vec()),
                ..job.primary
            };
            job.metrics.shadow_compared.inc();
            let differences = job.comparator.compare(&expected, &actual);
            if !differences.is_empty() {
                job.metrics.shadow_mismatched.inc();
                store.push(
                    &job.carveout,
                    Mismatch {
                        at: sqlkit::now(),
                        method: job.request.method.to_string(),
                        path: job.request.uri.to_string(),
                        differences: redacted(differences, &job.redactor),
                    },
                );
            }
        };
        tokio::spawn(tracing::Instrument::instrument(copy, span));
    }
}

/// `differences` as they may be kept: values under fields that carry secrets or personal data
/// (the capture's redaction rules) and compared headers that do (authorization, cookies)
/// redacted, values larger than [`MAX_KEPT_VALUE`] replaced by their size.
pub fn redacted(
    differences: Vec<Difference>,
    redactor: &contracts::redact::Redactor,
) -> Vec<Difference> {
    differences
        .into_iter()
        .map(|mut d| {
            if let Some(name) = d.path.strip_prefix("header:") {
                if redactor.redacts_header(name) {
                    for value in [&mut d.expected, &mut d.actual] {
                        if !value.is_null() {
                            *value = serde_json::Value::from(contracts::redact::REDACTED);
                        }
                    }
                }
            } else if d.path.starts_with('/') {
                // Put the value back where it was in a body, so field rules (by key or
                // pointer) see it as they see a captured body.
                let keys: Vec<String> = d.path[1..]
                    .split('/')
                    .map(|k| k.replace("~1", "/").replace("~0", "~"))
                    .collect();
                for value in [&mut d.expected, &mut d.actual] {
                    let mut body = std::mem::take(value);
                    for key in keys.iter().rev() {
                        body = serde_json::json!({ key.as_str(): body });
                    }
                    redactor.json(&mut body);
                    let mut inner = &mut body;
                    for key in &keys {
                        inner = &mut inner[key.as_str()];
                    }
                    *value = std::mem::take(inner);
                }
            }
            for value in [&mut d.expected, &mut d.actual] {
                let size = value.to_string().len();
                if size > MAX_KEPT_VALUE {
                    *value = serde_json::Value::from(format!("[{size} bytes, not kept]"));
                }
            }
            d
        })
        .collect()
}

/// The compared headers present in `headers`, as (name, value).
pub fn pick_headers(headers: &HeaderMap, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| {
            headers.get(name.as_str()).map(|v| {
                (
                    name.clone(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
        })
        .collect()
}
