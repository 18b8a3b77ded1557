//! The request path: refuse what is malformed, find the carve-out, decide the target from its
//! phase, forward with hygiene, fall back or shadow as the phase says, and stream the answer back.
//!
//! The routing state ([`Routing`]: routes, carve-outs with their phases, upstream pools) is an
//! immutable snapshot behind an `ArcSwap`. A request takes the snapshot current when it arrives
//! and keeps it to the end; a phase change or a reload swaps in a new snapshot, so no in-flight
//! request is dropped or sees half a change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};

use crate::body::ClientFault;
use crate::body::ProxyBody;
use crate::capture::{CaptureJob, CaptureStore, Capturer};
use crate::compare::{Comparator, Observed};
use crate::config::{CarveOutSpec, Config, Sticky};
use crate::hygiene::{
    add_forwarding, check_framing, check_host, has_dot_segment, normalize_path, strip_hop_by_hop,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::phase::{self, Decision, Phase, Target};
use crate::problem::problem;
use crate::routes::RouteTable;
use crate::shadow::{pick_headers, MismatchStore, ShadowJob, Shadower};
use crate::upstream::{Replay, Upstream, UpstreamError};

static OVERRIDE_HEADER: HeaderName = HeaderName::from_static("x-strangler-target");

impl CarveOut {
    /// What this replica counted of the carve-out's traffic.
    pub fn traffic(&self) -> crate::metrics::Traffic {
        self.metrics.traffic()
    }

    /// What the rollout analysis reads of it here: counts and latency histograms so far.
    pub fn counts(&self) -> crate::analysis::Counts {
        self.metrics.counts()
    }
}

/// A carve-out with its live phase.
#[derive(Debug, Clone)]
pub struct CarveOut {
    /// The configured carve-out.
    pub spec: CarveOutSpec,
    /// Its current phase.
    pub phase: Phase,
    metrics: RouteMetrics,
    comparator: Comparator,
    capturer: Option<Arc<Capturer>>,
    /// What a shadow mismatch keeps of the bodies is redacted as captures are.
    redactor: Arc<contracts::redact::Redactor>,
}

/// One consistent snapshot of everything routing depends on.
#[derive(Debug)]
pub struct Routing {
    routes: RouteTable,
    carveouts: Vec<CarveOut>,
    upstreams: Vec<Arc<Upstream>>,
    unrouted: RouteMetrics,
    override_header: bool,
    served_by_header: Option<HeaderName>,
    max_body_bytes: u64,
    body_idle_timeout: std::time::Duration,
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl Routing {
    /// Builds a snapshot from a validated configuration.
    pub fn new(config: &Config, metrics: &Metrics) -> Routing {
        let carveouts = config
            .carveouts
            .iter()
            .map(|spec| {
                metrics.set_phase(&spec.name, spec.phase.name());
                CarveOut {
                    spec: spec.clone(),
                    phase: spec.phase,
                    metrics: metrics.route(&spec.name),
                    comparator: Comparator::new(&spec.shadow.ignore, &spec.shadow.headers),
                    capturer: spec.capture.clone().map(|c| Arc::new(Capturer::new(c))),
                    redactor: Arc::new(match &spec.capture {
                        Some(c) => {
                            contracts::redact::Redactor::new(&c.redact_headers, &c.redact_fields)
                        }
                        None => contracts::redact::Redactor::new(&[], &[]),
                    }),
                }
            })
            .collect();
        Routing {
            routes: config.routes.clone(),
            carveouts,
            upstreams: config
                .upstreams
                .iter()
                .cloned()
                .map(|u| Arc::new(Upstream::new(u, metrics)))
                .collect(),
            unrouted: metrics.route("-"),
            override_header: config.override_header,
            served_by_header: config.served_by_header.clone(),
            max_body_bytes: config.max_body_bytes,
            body_idle_timeout: config.body_idle_timeout,
            trusted_proxies: config.trusted_proxies.clone().into(),
        }
    }

    /// Whether `peer` is a trusted proxy, whose forwarding headers are kept.
    fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The carve-outs and their phases.
    pub fn carveouts(&self) -> &[CarveOut] {
        &self.carveouts
    }

    /// The routes, most specific first.
    pub fn routes(&self) -> &[crate::routes::Route] {
        self.routes.routes()
    }

    /// The carve-out that owns a request, if any.
    pub fn owner(&self, method: &Method, path: &str) -> Option<String> {
        self.routes
            .find(method, path)
            .map(|route| self.carveouts[route.carveout].spec.name.clone())
    }

    /// Whether every instance of the upstream at `index` answers `GET /readyz` with a success.
    pub async fn upstream_ready(&self, index: usize) -> Result<(), String> {
        match self.upstreams.get(index) {
            Some(upstream) => upstream.ready().await,
            None => Err(format!("no upstream {index}")),
        }
    }

    /// The name of the upstream at `index`.
    pub fn upstream_name(&self, index: usize) -> &str {
        self.upstreams.get(index).map_or("", |u| u.name())
    }

    /// Which carve-out owns a request (if any) and where its phase sends it.
    fn decide(
        &self,
        request: &Request<Incoming>,
        client: SocketAddr,
    ) -> (Option<&CarveOut>, Decision) {
        let Some(route) = self.routes.find(request.method(), request.uri().path()) else {
            let to_monolith = Decision {
                target: Target::Monolith,
                shadow: false,
                fallback: false,
            };
            return (None, to_monolith);
        };
        let carveout = &self.carveouts[route.carveout];
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        let pinned = if self.override_header {
            request
                .headers()
                .get(&OVERRIDE_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        // Hashing is only needed where the split is.
        let bucket = match carveout.phase {
            Phase::Canary { .. } => caller_bucket(carveout, request.headers(), client),
            _ => 0,
        };
        let decision = carveout
            .phase
            .decide(read, bucket, pinned, carveout.spec.shadow.in_canary);
        (Some(carveout), decision)
    }

    /// A copy of this snapshot with one carve-out in another phase.
    pub fn with_phase(&self, carveout: &str, phase: Phase, metrics: &Metrics) -> Option<Routing> {
        let index = self
            .carveouts
            .iter()
            .position(|c| c.spec.name == carveout)?;
        let mut carveouts = self.carveouts.clone();
        carveouts[index].phase = phase;
        metrics.set_phase(carveout, phase.name());
        Some(Routing {
            routes: self.routes.clone(),
            carveouts,
            upstreams: self.upstreams.clone(),
            unrouted: self.unrouted.clone(),
            override_header: self.override_header,
            served_by_header: self.served_by_header.clone(),
            max_body_bytes: self.max_body_bytes,
            body_idle_timeout: self.body_idle_timeout,
            trusted_proxies: Arc::clone(&self.trusted_proxies),
        })
    }
}

/// The data plane.
pub struct Proxy {
    routing: ArcSwap<Routing>,
    metrics: Metrics,
    shadower: Shadower,
    captures: CaptureStore,
    /// Fenced carve-outs and when each fence lapses (Unix ms).
    fences: tokio::sync::watch::Sender<Arc<HashMap<String, i64>>>,
    any_fence: AtomicBool,
    held: std::sync::atomic::AtomicUsize,
    /// The routing view's lease: until when (ms since `started`) this replica may forward
    /// carve-out writes without reading the control database again. `u64::MAX` when no
    /// control plane drives this proxy.
    view_until_ms: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy for `config`.
    pub fn new(config: &Config) -> Proxy {
        let metrics = Metrics::new();
        let routing = Routing::new(config, &metrics);
        Proxy {
            routing: ArcSwap::from_pointee(routing),
            shadower: Shadower::new(
                config.shadow_concurrency,
                config.shadow_max_body_bytes,
                MismatchStore::new(config.mismatch_samples),
            ),
            captures: CaptureStore::default(),
            fences: tokio::sync::watch::Sender::new(Arc::new(HashMap::new())),
            any_fence: AtomicBool::new(false),
            held: std::sync::atomic::AtomicUsize::new(0),
            view_until_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            started: Instant::now(),
            metrics,
        }
    }

    /// The current routing snapshot.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// Swaps in a new configuration (upstreams, routes, carve-outs), keeping the phases the
    /// control plane set for carve-outs that still exist.
    pub fn reload(&self, config: &Config) {
        let current = self.routing.load();
        let mut next = Routing::new(config, &self.metrics);
        for carveout in &mut next.carveouts {
            if let Some(old) = current
                .carveouts
                .iter()
                .find(|c| c.spec.name == carveout.spec.name)
            {
                carveout.phase = old.phase;
                self.metrics
                    .set_phase(&carveout.spec.name, old.phase.name());
            }
        }
        self.routing.store(Arc::new(next));
    }

    /// Moves a carve-out to `phase` for every request that arrives from now on. Returns false
    /// for an unknown carve-out.
    pub fn set_phase(&self, carveout: &str, phase: Phase) -> bool {
        let mut changed = false;
        self.routing.rcu(
            |current| match current.with_phase(carveout, phase, &self.metrics) {
                Some(next) => {
                    changed = true;
                    Arc::new(next)
                }
                None => {
                    changed = false;
                    Arc::clone(current)
                }
            },
        );
        changed
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The shadow mismatch samples.
    pub fn mismatches(&self) -> &MismatchStore {
        self.shadower.store()
    }

    /// Holds `carveout`'s writes until `until_ms` (Unix ms); 0 (or a past time) lifts the fence.
    pub fn set_fence(&self, carveout: &str, until_ms: i64) {
        self.fences.send_modify(|fences| {
            let mut next = (**fences).clone();
            if until_ms > sqlkit::now_ms() {
                next.insert(carveout.to_owned(), until_ms);
            } else {
                next.remove(carveout);
            }
            self.any_fence.store(!next.is_empty(), Ordering::Relaxed);
            *fences = Arc::new(next);
        });
    }

    /// Whether `carveout`'s writes are held now.
    pub fn fenced(&self, carveout: &str) -> bool {
        self.fences
            .borrow()
            .get(carveout)
            .is_some_and(|until| *until > sqlkit::now_ms())
    }

    /// Renews the routing view's lease after a successful read of the control database.
    pub fn renew_view(&self, lease: std::time::Duration) {
        let until = self.started.elapsed().saturating_add(lease).as_millis();
        self.view_until_ms
            .store(u64::try_from(until).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether the routing view's lease has run out: carve-out writes are refused until the
    /// control database is read again, since a flip may have happened meanwhile.
    pub fn view_expired(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        now > self.view_until_ms.load(Ordering::Relaxed)
    }

    /// How many writes a fence holds right now.
    pub fn held_writes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Waits while `carveout` is fenced; returns whether it waited.
    async fn wait_fence(&self, carveout: &str) -> bool {
        struct Held<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        let _held = Held(&self.held);
        let mut fences = self.fences.subscribe();
        let mut waited = false;
        loop {
            let until = fences.borrow_and_update().get(carveout).copied();
            let now = sqlkit::now_ms();
            match until {
                Some(until) if until > now => {
                    waited = true;
                    let lapse =
                        std::time::Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
                    tokio::select! {
                        changed = fences.changed() => {
                            if changed.is_err() {
                                return waited;
                            }
                        }
                        () = tokio::time::sleep(lapse) => {}
                    }
                }
                _ => return waited,
            }
        }
    }

    /// The captured exchanges of carve-outs that capture traffic.
    pub fn captures(&self) -> &CaptureStore {
        &self.captures
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let mut request = request;
        let mut routing = self.routing.load_full();
        let declared = match screen(&mut request, routing.max_body_bytes) {
            Ok(declared) => declared,
            Err(refusal) => return refusal,
        };
        // A cut-over's write fence: the carve-out's writes wait (none fail) until it lifts or
        // lapses, then go wherever the routing sends them by then.
        if self.any_fence.load(Ordering::Relaxed)
            && !matches!(*request.method(), Method::GET | Method::HEAD)
        {
            if let Some(name) = routing.owner(request.method(), request.uri().path()) {
                if self.wait_fence(&name).await {
                    routing = self.routing.load_full();
                }
            }
        }
        // Whatever the framing (a length, chunks, or HTTP/2 frames with neither), a body that
        // has not ended yet is one: it is streamed once, bounded, and never replayed.
        let has_body = !request.body().is_end_stream();
        let (carveout, decision) = routing.decide(&request, client);
        let metrics = carveout.map_or(&routing.unrouted, |c| &c.metrics);
        // Fail closed for writes: without a fresh view, this replica may not know who owns them.
        if carveout.is_some()
            && !matches!(*request.method(), Method::GET | Method::HEAD)
            && self.view_expired()
        {
            let mut refusal = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "routing-view-expired",
                "this replica cannot read the control database, so it does not know who owns this write; try again",
            );
            refusal
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return refusal;
        }
        let span = tracing::Span::current();
        if let Some(carveout) = carveout {
            span.record("strangler.carveout", carveout.spec.name.as_str());
            span.record("strangler.phase", carveout.phase.name());
            span.record("strangler.shadow", decision.shadow);
        }

        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // A sample of monolith-served exchanges of a capturing carve-out is kept for contracts;
        // a request body is captured only when its declared length fits the bound.
        let capture = carveout
            .and_then(|c| c.capturer.as_ref())
            .filter(|c| {
                decision.target == Target::Monolith
                    && (!has_body || declared.is_some_and(|l| l <= c.max_body_bytes() as u64))
                    && c.sample()
            })
            .map(|c| (Arc::clone(c), c.headers(&parts.headers, true)));
        add_forwarding(&mut parts.headers, client.ip(), routing.trusts(client.ip()));
        // With traces exported, the next hop is a child of this proxy's span.
        telemetry::http::inject(&span, &mut parts.headers);
        if !span.is_disabled() {
            // For log lines: the trace this request belongs to (kept or started above).
            if let Some(trace_id) = telemetry::http::trace_id(&parts.headers) {
                span.record("trace_id", trace_id);
            }
        }
        let mut request_copy = None;
        let idle = routing.body_idle_timeout;
        let body = if has_body {
            let body = ProxyBody::client(body, routing.max_body_bytes, idle);
            match &capture {
                Some((capturer, _)) => {
                    let (body, copy) = ProxyBody::tee(body, capturer.max_body_bytes());
                    request_copy = Some(copy);
                    body
                }
                None => body,
            }
        } else {
            ProxyBody::empty()
        };
        let service = carveout.map(|c| Arc::clone(&routing.upstreams[c.spec.upstream]));
        let monolith = &routing.upstreams[0];
        let upstream = match decision.target {
            Target::Service => service.as_ref().unwrap_or(monolith),
            Target::Monolith => monolith,
        };
        // A bodiless request can be sent again: keep what a retry, a fallback or a shadow copy
        // needs. A request with a body is streamed once and never replayed.
        let replayable =
            !has_body && (decision.fallback || decision.shadow || upstream.retries(&parts.method));
        let capture_path = capture.as_ref().map(|_| {
            (
                parts.method.to_string(),
                parts.uri.path().to_owned(),
                parts.uri.query().map(str::to_owned),
            )
        });
        let replay = replayable.then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
        let retry = replay.as_ref().filter(|r| upstream.retries(&r.method));
        let mut target = decision.target;
        let mut result = upstream.send(Request::from_parts(parts, body), retry).await;

        if decision.fallback {
            let failed = match &result {
                Ok(response) => response.status().is_server_error(),
                Err(_) => true,
            };
            if let (true, Some(replay), Some(carveout)) = (failed, &replay, carveout) {
                if let Err(err) = &result {
                    self.metrics.upstream_error(upstream.name(), err.kind());
                }
                carveout.metrics.fallbacks.inc();
                target = Target::Monolith;
                let retry = Some(replay).filter(|r| monolith.retries(&r.method));
                result = monolith.send(replay.request(), retry).await;
            }
        }

        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                let target_upstream = if target == Target::Monolith {
                    monolith
                } else {
                    upstream
                };
                if !matches!(err, UpstreamError::Client(_)) {
                    self.metrics
                        .upstream_error(target_upstream.name(), err.kind());
                }
                let response = upstream_problem(&err);
                metrics.record(
                    target,
                    response.status().as_u16(),
                    start.elapsed().as_secs_f64(),
                );
                return response;
            }
        };
        strip_hop_by_hop(response.headers_mut());
        if let Some(name) = &routing.served_by_header {
            let served = if target == Target::Monolith {
                monolith
            } else {
                upstream
            };
            response
                .headers_mut()
                .insert(name.clone(), served.name_value().clone());
        }
        span.record("strangler.target", target.as_str());
        span.record("strangler.fallback", target != decision.target);
        span.record("http.response.status_code", response.status().as_u16());
        tracing::debug!(status = response.status().as_u16(), "answered");
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        metrics.record(
            target,
            response.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );

        if decision.shadow && target == Target::Monolith {
            if let (Some(replay), Some(carveout), Some(service)) = (replay, carveout, service) {
                if let Some(permit) = self.shadower.try_start(&carveout.metrics) {
                    let primary = Observed {
                        status: response.status().as_u16(),
                        headers: pick_headers(response.headers(), carveout.comparator.headers()),
                        body: None,
                    };
                    let (parts, body) = response.into_parts();
                    let (body, primary_body) =
                        ProxyBody::tee(ProxyBody::upstream(body, idle), self.shadower.max_body());
                    self.shadower.spawn(
                        ShadowJob {
                            carveout: carveout.spec.name.clone(),
                            request: replay,
                            primary,
                            primary_body,
                            service,
                            comparator: carveout.comparator.clone(),
                            metrics: carveout.metrics.clone(),
                            redactor: carveout.redactor.clone(),
                        },
                        permit,
                    );
                    return Response::from_parts(parts, body);
                }
            }
        }
        if let (Some((capturer, request_headers)), Some((method, path, query)), Some(carveout)) =
            (capture, capture_path, carveout)
        {
            if target == Target::Monolith {
                let response_headers = capturer.headers(response.headers(), false);
                let status = response.status().as_u16();
                let (parts, body) = response.into_parts();
                let (body, response_body) =
                    ProxyBody::tee(ProxyBody::upstream(body, idle), capturer.max_body_bytes());
                self.captures.spawn(CaptureJob {
                    carveout: carveout.spec.name.clone(),
                    capturer,
                    method,
                    path,
                    query,
                    request_headers,
                    request_body: request_copy,
                    status,
                    response_headers,
                    response_body,
                });
                return Response::from_parts(parts, body);
            }
        }
        response.map(|body| ProxyBody::upstream(body, idle))
    }
}

/// Refuses what no upstream should see, before anything else happens to a request, and puts
/// its path in normal form. Returns the declared body length, if any.
#[allow(clippy::result_large_err)]
fn screen(
    request: &mut Request<Incoming>,
    max_body_bytes: u64,
) -> Result<Option<u64>, Response<ProxyBody>> {
    if request.method() == Method::CONNECT {
        let mut refusal = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "CONNECT is not proxied",
        );
        refusal.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Err(refusal);
    }
    if let Err(err) = check_host(request.version(), request.headers()) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "bad-host",
            &err.to_string(),
        ));
    }
    let declared = check_framing(request.headers())
        .map_err(|err| problem(StatusCode::BAD_REQUEST, "bad-framing", &err.to_string()))?;
    if declared.is_some_and(|l| l > max_body_bytes) {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            &format!("the request body exceeds {max_body_bytes} bytes"),
        ));
    }
    let bad_path = |detail: &str| problem(StatusCode::BAD_REQUEST, "bad-path", detail);
    match normalize_path(request.uri().path()) {
        Ok(None) => {}
        Ok(Some(path)) => {
            let path_and_query = match request.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(
                http::uri::PathAndQuery::try_from(path_and_query)
                    .map_err(|_| bad_path("the path cannot be normalised"))?,
            );
            *request.uri_mut() = http::Uri::from_parts(parts)
                .map_err(|_| bad_path("the path cannot be normalised"))?;
        }
        Err(err) => return Err(bad_path(&err.to_string())),
    }
    if has_dot_segment(request.uri().path()) {
        return Err(bad_path(
            "paths with . or .. segments or encoded slashes are refused",
        ));
    }
    Ok(declared)
}

/// The caller's canary bucket: its sticky key hashed with the carve-out's name.
fn caller_bucket(carveout: &CarveOut, headers: &HeaderMap, client: SocketAddr) -> u32 {
    let name = &carveout.spec.name;
    let key = match &carveout.spec.sticky {
        Sticky::Header(header) => headers.get(header).map(HeaderValue::as_bytes),
        Sticky::Cookie(cookie) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == cookie).then_some(v.as_bytes())
            }),
        Sticky::ClientIp => None,
    };
    match (key, client.ip()) {
        (Some(key), _) => phase::bucket(name, key),
        (None, std::net::IpAddr::V4(ip)) => phase::bucket(name, &ip.octets()),
        (None, std::net::IpAddr::V6(ip)) => phase::bucket(name, &ip.octets()),
    }
}

fn upstream_problem(err: &UpstreamError) -> Response<ProxyBody> {
    let (status, slug) = match err {
        UpstreamError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
        UpstreamError::Client(ClientFault::TooLarge { .. }) => {
            (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large")
        }
        UpstreamError::Client(ClientFault::Stalled(_)) => {
            (StatusCode::REQUEST_TIMEOUT, "request-body-timeout")
        }
        UpstreamError::Client(ClientFault::Aborted | ClientFault::Malformed(_)) => {
            (StatusCode::BAD_REQUEST, "bad-request-body")
        }
        UpstreamError::BadResponse { .. } => (StatusCode::BAD_GATEWAY, "bad-upstream-response"),
        UpstreamError::Open { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit-open"),
        UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
            (StatusCode::BAD_GATEWAY, "upstream-unavailable")
        }
    };
    problem(status, slug, &err.to_string())
}
