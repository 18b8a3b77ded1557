//! Upstreams: a pooled HTTP/1.1 keep-alive client per upstream, instances chosen round robin
//! past open circuit breakers (outlier ejection), retries of replayable requests within the
//! retry budget, and timeouts that turn into 502/504 instead of hangs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;

use crate::body::{is_body_too_large, ProxyBody};
use crate::config::UpstreamSpec;
use crate::metrics::Metrics;
use crate::resilience::{Admission, Breaker, RetryBudget};

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("cannot connect to {upstream}")]
    Connect {
        /// The upstream's name.
        upstream: String,
    },
    /// No response head within the request timeout.
    #[error("{upstream} did not answer within {timeout:?}")]
    Timeout {
        /// The upstream's name.
        upstream: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The request body passed the size limit while streaming.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// Every instance's circuit breaker is open.
    #[error("every instance of {upstream} is failing (circuit open)")]
    Open {
        /// The upstream's name.
        upstream: String,
    },
    /// The exchange failed (connection reset, protocol error).
    #[error("{upstream} failed: {source}")]
    Protocol {
        /// The upstream's name.
        upstream: String,
        /// The cause.
        source: hyper_util::client::legacy::Error,
    },
}

impl UpstreamError {
    /// The metric label of this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::BodyTooLarge => "body_too_large",
            UpstreamError::Open { .. } => "circuit_open",
            UpstreamError::Protocol { .. } => "protocol",
        }
    }
}

/// What is needed to send a bodiless request again (retry, fallback, shadow).
#[derive(Debug, Clone)]
pub struct Replay {
    /// The method.
    pub method: Method,
    /// The URI (path and query).
    pub uri: Uri,
    /// The headers as sent upstream.
    pub headers: HeaderMap,
}

impl Replay {
    /// A fresh request with an empty body.
    pub fn request(&self) -> Request<ProxyBody> {
        let mut request = Request::new(ProxyBody::empty());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

struct Instance {
    uri: Uri,
    breaker: Breaker,
}

/// One upstream with its connection pool.
pub struct Upstream {
    spec: UpstreamSpec,
    client: Client<HttpConnector, ProxyBody>,
    next: AtomicUsize,
    instances: Vec<Instance>,
    budget: RetryBudget,
    retries: Counter,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A pool for `spec`, reporting to `metrics`.
    pub fn new(spec: UpstreamSpec, metrics: &Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let instances = spec
            .instances
            .iter()
            .map(|uri| Instance {
                uri: uri.clone(),
                breaker: Breaker::new(
                    spec.breaker,
                    metrics.breaker_gauge(&spec.name, &uri.to_string()),
                ),
            })
            .collect();
        Upstream {
            budget: RetryBudget::new(spec.retry),
            retries: metrics.retries(&spec.name),
            spec,
            client,
            next: AtomicUsize::new(0),
            instances,
        }
    }

    /// Whether a bodiless request with this method may be retried here.
    pub fn retries(&self, method: &Method) -> bool {
        self.budget.attempts() > 0 && is_idempotent(method)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The next instance in round-robin order whose breaker admits a call.
    fn pick(&self) -> Option<(&Instance, Admission)> {
        let n = self.instances.len();
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        (0..n).find_map(|k| {
            let instance = &self.instances[(start + k) % n];
            instance
                .breaker
                .admit()
                .map(|admission| (instance, admission))
        })
    }

    /// Sends `request` (whose URI carries the path and query). When `replay` is given (a bodiless
    /// idempotent request), a failed attempt is retried on the next instance within the budget.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        replay: Option<&Replay>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.budget.deposit();
        let mut request = Some(request);
        let mut attempt = 0;
        loop {
            let open = || UpstreamError::Open {
                upstream: self.spec.name.clone(),
            };
            let (instance, admission) = self.pick().ok_or_else(open)?;
            let next = request
                .take()
                .or_else(|| replay.map(Replay::request))
                .ok_or_else(open)?;
            let result = self.attempt(&instance.uri, next).await;
            let failed = match &result {
                Ok(response) => response.status().is_server_error(),
                Err(UpstreamError::BodyTooLarge) => false,
                Err(_) => true,
            };
            if failed {
                instance.breaker.failure(admission);
            } else {
                instance.breaker.success(admission);
            }
            let retry = replay.is_some()
                && attempt < self.budget.attempts()
                && retryable(&result)
                && self.budget.withdraw();
            if !retry {
                return result;
            }
            attempt += 1;
            self.retries.inc();
        }
    }

    async fn attempt(
        &self,
        instance: &Uri,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(instance.scheme().cloned().unwrap_or(Scheme::HTTP));
        parts.authority = instance.authority().cloned();
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        // Upstream connections are HTTP/1.1 whatever the client spoke.
        *request.version_mut() = http::Version::HTTP_11;
        let timeout = self.spec.request_timeout;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is_connect() => Err(UpstreamError::Connect {
                upstream: self.spec.name.clone(),
            }),
            Ok(Err(err)) if is_body_too_large(&err) => Err(UpstreamError::BodyTooLarge),
            Ok(Err(source)) => Err(UpstreamError::Protocol {
                upstream: self.spec.name.clone(),
                source,
            }),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.spec.name.clone(),
                timeout,
            }),
        }
    }
}

/// Methods a retry cannot turn into a second, different effect (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn retryable(result: &Result<Response<Incoming>, UpstreamError>) -> bool {
    match result {
        Ok(response) => matches!(response.status().as_u16(), 502..=504),
        Err(
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Protocol { .. },
        ) => true,
        Err(UpstreamError::BodyTooLarge | UpstreamError::Open { .. }) => false,
    }
}
