//! Upstreams: a pooled HTTP/1.1 keep-alive client per upstream, instances chosen round robin,
//! and timeouts that turn into 502/504 instead of hangs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{is_body_too_large, ProxyBody};
use crate::config::UpstreamSpec;

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
            UpstreamError::Protocol { .. } => "protocol",
        }
    }
}

/// One upstream with its connection pool.
pub struct Upstream {
    spec: UpstreamSpec,
    client: Client<HttpConnector, ProxyBody>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A pool for `spec`.
    pub fn new(spec: UpstreamSpec) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Upstream {
            spec,
            client,
            next: AtomicUsize::new(0),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn pick(&self) -> &Uri {
        let n = self.spec.instances.len();
        let i = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        &self.spec.instances[i]
    }

    /// Sends `request` (whose URI carries the path and query) to an instance.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let instance = self.pick();
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
