//! Upstreams: a pooled HTTP/1.1 keep-alive client per upstream, instances chosen round robin
//! past open circuit breakers (outlier ejection), retries of replayable requests within the
//! retry budget, and timeouts that turn into 502/504 instead of hangs.
//!
//! Only the upstream's own failures count against its breakers: refused, reset, timed out, a
//! malformed response or a 5xx. A request whose client body failed (malformed, abandoned, too
//! large, stalled) ends in [`UpstreamError::Client`] and counts for nothing. A breaker's probe
//! runs in a task of its own, so it settles on the upstream's answer (or its timeout) even when
//! the client that carried it hangs up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;

use crate::body::{client_fault, ClientFault, ProxyBody};
use crate::config::UpstreamSpec;
use crate::metrics::Metrics;
use crate::resilience::{Admission, Breaker, Permit, RetryBudget};

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
    /// The client's request body failed: the client's fault, not the upstream's.
    #[error(transparent)]
    Client(ClientFault),
    /// The upstream's response is malformed.
    #[error("{upstream} sent a malformed response: {reason}")]
    BadResponse {
        /// The upstream's name.
        upstream: String,
        /// What is wrong with it.
        reason: &'static str,
    },
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
            UpstreamError::Client(_) => "client",
            UpstreamError::BadResponse { .. } => "bad_response",
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
    breaker: Arc<Breaker>,
}

/// One upstream with its connection pool.
pub struct Upstream {
    spec: UpstreamSpec,
    /// Its name, shared with the calls in flight (a reference count, no copy per request).
    shared_name: Arc<str>,
    /// Its name as a header value (the side that served a response).
    name_value: http::HeaderValue,
    /// One pool per data-plane worker thread ([`crate::server::worker`]): a request is sent
    /// over connections whose tasks run on its own thread.
    clients: Box<[Client<HttpConnector, ProxyBody>]>,
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
    /// Pools for `spec`, one per data-plane worker (`workers`), reporting to `metrics`.
    pub fn new(spec: UpstreamSpec, workers: usize, metrics: &Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.connect_timeout));
        let clients = (0..workers.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(1024)
                    .build(connector.clone())
            })
            .collect();
        let instances = spec
            .instances
            .iter()
            .map(|uri| Instance {
                uri: uri.clone(),
                breaker: Arc::new(Breaker::new(
                    spec.breaker,
                    metrics.breaker_gauge(&spec.name, &uri.to_string()),
                )),
            })
            .collect();
        Upstream {
            shared_name: Arc::from(spec.name.as_str()),
            name_value: http::HeaderValue::from_str(&spec.name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("upstream")),
            budget: RetryBudget::new(spec.retry),
            retries: metrics.retries(&spec.name),
            spec,
            clients,
            next: AtomicUsize::new(0),
            instances,
        }
    }

    /// Whether every instance answers `GET /readyz` with a success within 3 s.
    pub async fn ready(&self) -> Result<(), String> {
        for instance in &self.instances {
            let uri = format!("{}/readyz", instance.uri.to_string().trim_end_matches('/'));
            let request = Request::get(uri.as_str())
                .body(ProxyBody::empty())
                .map_err(|e| format!("{uri}: {e}"))?;
            match tokio::time::timeout(Duration::from_secs(3), self.client().request(request)).await
            {
                Ok(Ok(response)) if response.status().is_success() => {}
                Ok(Ok(response)) => return Err(format!("{uri} answered {}", response.status())),
                Ok(Err(err)) => return Err(format!("{uri} does not answer ({err})")),
                Err(_) => return Err(format!("{uri} did not answer within 3 s")),
            }
        }
        Ok(())
    }

    /// The pool of the worker thread this runs on.
    fn client(&self) -> &Client<HttpConnector, ProxyBody> {
        &self.clients[crate::server::worker() % self.clients.len()]
    }

    /// Whether a bodiless request with this method may be retried here.
    pub fn retries(&self, method: &Method) -> bool {
        self.budget.attempts() > 0 && is_idempotent(method)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its name, as a header value.
    pub fn name_value(&self) -> &http::HeaderValue {
        &self.name_value
    }

    /// The next instance in round-robin order whose breaker admits a call.
    fn pick(&self) -> Option<(&Instance, Permit)> {
        let n = self.instances.len();
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        (0..n).find_map(|k| {
            let instance = &self.instances[(start + k) % n];
            instance.breaker.admit().map(|permit| (instance, permit))
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
            let (instance, permit) = self.pick().ok_or_else(open)?;
            let next = request
                .take()
                .or_else(|| replay.map(Replay::request))
                .ok_or_else(open)?;
            let call = self.attempt(&instance.uri, next);
            let result = if permit.admission() == Admission::Probe {
                // Detached: the probe settles whatever the client does meanwhile.
                match tokio::spawn(settled(call, permit)).await {
                    Ok(result) => result,
                    Err(_) => return Err(open()),
                }
            } else {
                settled(call, permit).await
            };
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

    fn attempt(
        &self,
        instance: &Uri,
        mut request: Request<ProxyBody>,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, UpstreamError>> + Send + 'static
    {
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
        let name = Arc::clone(&self.shared_name);
        let call = self.client().request(request);
        async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => {
                    let headers = response.headers();
                    if headers.contains_key(http::header::TRANSFER_ENCODING)
                        && headers.contains_key(http::header::CONTENT_LENGTH)
                    {
                        return Err(UpstreamError::BadResponse {
                            upstream: name.to_string(),
                            reason: "both Content-Length and Transfer-Encoding",
                        });
                    }
                    Ok(response)
                }
                Ok(Err(err)) => {
                    if let Some(fault) = client_fault(&err) {
                        return Err(UpstreamError::Client(fault.clone()));
                    }
                    if err.is_connect() {
                        return Err(UpstreamError::Connect {
                            upstream: name.to_string(),
                        });
                    }
                    Err(UpstreamError::Protocol {
                        upstream: name.to_string(),
                        source: err,
                    })
                }
                Err(_) => Err(UpstreamError::Timeout {
                    upstream: name.to_string(),
                    timeout,
                }),
            }
        }
    }
}

/// Runs one call and settles its breaker permit with what the upstream did.
async fn settled(
    call: impl std::future::Future<Output = Result<Response<Incoming>, UpstreamError>>,
    permit: Permit,
) -> Result<Response<Incoming>, UpstreamError> {
    let result = call.await;
    match &result {
        Ok(response) if response.status().is_server_error() => permit.failure(),
        Ok(_) => permit.success(),
        Err(UpstreamError::Client(_)) => permit.release(),
        Err(_) => permit.failure(),
    }
    result
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
            | UpstreamError::Protocol { .. }
            | UpstreamError::BadResponse { .. },
        ) => true,
        Err(UpstreamError::Client(_) | UpstreamError::Open { .. }) => false,
    }
}
