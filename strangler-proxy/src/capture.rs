//! Traffic capture for contracts: for a carve-out that opts in, a sample of the exchanges the
//! monolith answers is kept (bounded, per carve-out) so `strangler contract capture` can turn
//! real traffic into a recording script or a contract. Secrets are redacted before anything is
//! kept: the configured headers and JSON fields, plus the defaults of
//! [`contracts::redact`] (authorization, cookies, tokens, emails, card data).
//!
//! Capturing never slows or alters the exchange: bodies are copied as they stream (up to a
//! bound; a larger body is not captured), and the capture is assembled in its own task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use contracts::redact::Redactor;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

/// A carve-out's capture settings.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// The sampled share of monolith-served exchanges, in basis points (0 to 10,000).
    pub sample_basis_points: u32,
    /// Largest request or response body captured; exchanges with larger bodies are skipped.
    pub max_body_bytes: usize,
    /// How many captures are kept (the oldest go first).
    pub keep: usize,
    /// Header names whose values are redacted (besides the defaults).
    pub redact_headers: Vec<String>,
    /// JSON fields redacted: pointers (`/card/number`, `*` for any) or key names at any depth.
    pub redact_fields: Vec<String>,
}

/// One captured exchange, redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The request headers the client sent (hop-by-hop and forwarding headers left out).
    pub request_headers: Vec<(String, String)>,
    /// The request body: JSON, or text.
    pub request_body: Option<Value>,
    /// The monolith's status.
    pub status: u16,
    /// The monolith's response headers.
    pub response_headers: Vec<(String, String)>,
    /// The monolith's response body: JSON, or text.
    pub response_body: Option<Value>,
}

/// Request headers never captured: the proxy's own and per-connection ones.
const SKIPPED: &[&str] = &[
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-strangler-target",
];

/// A carve-out's capturer.
#[derive(Debug, Clone)]
pub struct Capturer {
    spec: CaptureSpec,
    redactor: Redactor,
}

impl Capturer {
    /// A capturer for `spec`.
    pub fn new(spec: CaptureSpec) -> Self {
        Capturer {
            redactor: Redactor::new(&spec.redact_headers, &spec.redact_fields),
            spec,
        }
    }

    /// The largest body captured.
    pub fn max_body_bytes(&self) -> usize {
        self.spec.max_body_bytes
    }

    /// Whether this exchange is in the sample.
    pub fn sample(&self) -> bool {
        self.spec.sample_basis_points >= crate::phase::BUCKETS
            || rand::random::<u32>() % crate::phase::BUCKETS < self.spec.sample_basis_points
    }

    /// The headers worth keeping, redacted.
    pub fn headers(&self, headers: &HeaderMap, request: bool) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| !request || !SKIPPED.contains(&name.as_str()))
            .filter(|(name, _)| request || name.as_str() != "date")
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.redactor.headers(&mut out);
        out
    }

    fn body(&self, bytes: Option<Bytes>) -> Option<Value> {
        let bytes = bytes?;
        if bytes.is_empty() {
            return None;
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut json) => {
                self.redactor.json(&mut json);
                Some(json)
            }
            Err(_) => Some(Value::from(String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
}

/// What a capture task needs from the exchange.
pub struct CaptureJob {
    /// The carve-out.
    pub carveout: String,
    /// Its capturer.
    pub capturer: Arc<Capturer>,
    /// Method, path, query and redacted request headers.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query.
    pub query: Option<String>,
    /// The request headers, redacted.
    pub request_headers: Vec<(String, String)>,
    /// The request body's copy (none for a bodiless request).
    pub request_body: Option<oneshot::Receiver<Option<Bytes>>>,
    /// The status.
    pub status: u16,
    /// The response headers, redacted.
    pub response_headers: Vec<(String, String)>,
    /// The response body's copy.
    pub response_body: oneshot::Receiver<Option<Bytes>>,
}

/// The latest captures of each carve-out.
#[derive(Debug, Clone, Default)]
pub struct CaptureStore {
    inner: Arc<Mutex<HashMap<String, VecDeque<Capture>>>>,
}

impl CaptureStore {
    /// Assembles the capture once both bodies have streamed, off the request path. An
    /// exchange whose body was too large (or broke off) is not kept.
    pub fn spawn(&self, job: CaptureJob) {
        let store = self.clone();
        tokio::spawn(async move {
            let request_body = match job.request_body {
                None => None,
                Some(rx) => match rx.await {
                    Ok(Some(bytes)) => Some(bytes),
                    _ => return,
                },
            };
            let Ok(Some(response_body)) = job.response_body.await else {
                return;
            };
            let capture = Capture {
                at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                method: job.method,
                path: job.path,
                query: job.query,
                request_headers: job.request_headers,
                request_body: job.capturer.body(request_body),
                status: job.status,
                response_headers: job.response_headers,
                response_body: job.capturer.body(Some(response_body)),
            };
            store.push(&job.carveout, capture, job.capturer.spec.keep);
        });
    }

    fn push(&self, carveout: &str, capture: Capture, keep: usize) {
        // A std mutex: held for a push, never across an await.
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let list = all.entry(carveout.to_owned()).or_default();
        while list.len() >= keep.max(1) {
            list.pop_front();
        }
        list.push_back(capture);
    }

    /// The kept captures of a carve-out, oldest first.
    pub fn list(&self, carveout: &str) -> Vec<Capture> {
        let all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        all.get(carveout)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}
