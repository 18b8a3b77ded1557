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
use crate::problem::{problem, Problem};
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

    /// The service it is carved out to.
    pub fn service(&self) -> &Upstream {
        &self.service
    }
}

/// A carve-out with its live phase.
#[derive(Debug, Clone)]
pub struct CarveOut {
    /// The configured carve-out.
    pub spec: CarveOutSpec,
    /// Its current phase.
    pub phase: Phase,
    /// The service it is carved out to.
    service: Arc<Upstream>,
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
    /// Where every request goes that no carve-out takes.
    monolith: Arc<Upstream>,
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
        // One pool per upstream, shared by the carve-outs it serves; the first is the monolith.
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .cloned()
            .map(|u| Arc::new(Upstream::new(u, config.workers.unwrap_or(1), metrics)))
            .collect();
        let carveouts = config
            .carveouts
            .iter()
            .map(|spec| {
                metrics.set_phase(&spec.name, spec.phase.name());
                CarveOut {
                    spec: spec.clone(),
                    phase: spec.phase,
                    service: Arc::clone(&upstreams[spec.upstream]),
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
            monolith: Arc::clone(&upstreams[0]),
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

    /// The monolith.
    pub fn monolith(&self) -> &Upstream {
        &self.monolith
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
            monolith: Arc::clone(&self.monolith),
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

    /// Answers one request: its stages in order, each a method below over one [`Exchange`].
    ///
    /// | stage       | what it does                                                          |
    /// |-------------|-----------------------------------------------------------------------|
    /// | admit       | refuses what no upstream should see, puts the path in normal form     |
    /// | fence       | a write to a carve-out being moved waits for the move to end          |
    /// | route       | finds the carve-out; its phase decides the target, shadow, fallback   |
    /// | view        | a carve-out write without a fresh routing view is refused (503)       |
    /// | prepare     | hop-by-hop headers out, forwarding and trace headers in, the body     |
    /// |             | bounded, a capture sampled, a bodiless request kept for replay        |
    /// | forward     | sends to the target (with retries), falls back to the monolith        |
    /// | answer      | the response's head: hop-by-hop out, served-by, span and metrics      |
    /// | observe     | tees the monolith's answer to the shadow comparison and the capture   |
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut request = request;
        let routing = self.routing.load_full();
        let declared = match screen(&mut request, routing.max_body_bytes) {
            Ok(declared) => declared,
            Err(refusal) => return refusal,
        };
        let routing = self.fence(&request, routing).await;
        let mut exchange = Exchange::route(&routing, &request, client, started, declared);
        if let Some(refusal) = self.refuse_without_view(&exchange, request.method()) {
            return refusal;
        }
        let request = exchange.prepare(request);
        let response = match self.forward(&mut exchange, request).await {
            Ok(response) => exchange.answer(response),
            Err(err) => return self.failed(&exchange, &err),
        };
        self.observe(exchange, response)
    }

    /// The fence stage: during a cut-over's write fence, the carve-out's writes wait (none
    /// fail) until it lifts or lapses, then go wherever the routing sends them by then.
    async fn fence(&self, request: &Request<Incoming>, routing: Arc<Routing>) -> Arc<Routing> {
        if !self.any_fence.load(Ordering::Relaxed) || is_read(request.method()) {
            return routing;
        }
        match routing.owner(request.method(), request.uri().path()) {
            Some(name) if self.wait_fence(&name).await => self.routing.load_full(),
            _ => routing,
        }
    }

    /// The view stage: fail closed for writes. Without a fresh view, this replica may not know
    /// who owns a carve-out's writes.
    fn refuse_without_view(
        &self,
        exchange: &Exchange<'_>,
        method: &Method,
    ) -> Option<Response<ProxyBody>> {
        if exchange.carveout.is_none() || is_read(method) || !self.view_expired() {
            return None;
        }
        let refusal = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "routing-view-expired",
            "this replica cannot read the control database, so it does not know who owns this write; try again",
        )
        .with_header(header::RETRY_AFTER, "1");
        Some(refusal.into_proxy_response())
    }

    /// The forward stage: the request to its target, retried where that is safe; on a
    /// failure of the service where the phase falls back, the kept copy to the monolith.
    async fn forward(
        &self,
        exchange: &mut Exchange<'_>,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let upstream = exchange.upstream(exchange.decision.target);
        let retry = exchange
            .replay
            .as_ref()
            .filter(|r| upstream.retries(&r.method));
        let result = upstream.send(request, retry).await;
        let failed = match &result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        let (true, true, Some(replay), Some(carveout)) = (
            exchange.decision.fallback,
            failed,
            &exchange.replay,
            exchange.carveout,
        ) else {
            return result;
        };
        if let Err(err) = &result {
            self.metrics.upstream_error(upstream.name(), err.kind());
        }
        carveout.metrics.fallbacks.inc();
        exchange.answered_by = Target::Monolith;
        let monolith = &exchange.routing.monolith;
        let retry = Some(replay).filter(|r| monolith.retries(&r.method));
        monolith.send(replay.request(), retry).await
    }

    /// The answer when no upstream answered: a problem, counted against the upstream unless
    /// the client is what failed.
    fn failed(&self, exchange: &Exchange<'_>, err: &UpstreamError) -> Response<ProxyBody> {
        if !matches!(err, UpstreamError::Client(_)) {
            let upstream = exchange.upstream(exchange.answered_by);
            self.metrics.upstream_error(upstream.name(), err.kind());
        }
        let response = upstream_problem(err);
        exchange.record(response.status());
        response
    }

    /// The observe stage: the monolith's answer, as it streams to the client, is copied to
    /// the shadow comparison (a shadowed read) and to the capture (a sampled exchange).
    fn observe(&self, exchange: Exchange<'_>, response: Response<Incoming>) -> Response<ProxyBody> {
        let idle = exchange.routing.body_idle_timeout;
        let (parts, body) = response.into_parts();
        let mut body = ProxyBody::upstream(body, idle);
        if exchange.answered_by != Target::Monolith {
            return Response::from_parts(parts, body);
        }
        if let (true, Some(replay), Some(carveout)) =
            (exchange.decision.shadow, exchange.replay, exchange.carveout)
        {
            if let Some(permit) = self.shadower.try_start(&carveout.metrics) {
                let primary = Observed {
                    status: parts.status.as_u16(),
                    headers: pick_headers(&parts.headers, carveout.comparator.headers()),
                    body: None,
                };
                let (teed, primary_body) = ProxyBody::tee(body, self.shadower.max_body());
                body = teed;
                self.shadower.spawn(
                    ShadowJob {
                        carveout: carveout.spec.name.clone(),
                        request: replay,
                        primary,
                        primary_body,
                        service: Arc::clone(&carveout.service),
                        comparator: carveout.comparator.clone(),
                        metrics: carveout.metrics.clone(),
                        redactor: carveout.redactor.clone(),
                    },
                    permit,
                );
            }
        }
        if let (Some(capture), Some(carveout)) = (exchange.capture, exchange.carveout) {
            let (teed, response_body) = ProxyBody::tee(body, capture.capturer.max_body_bytes());
            body = teed;
            self.captures.spawn(CaptureJob {
                carveout: carveout.spec.name.clone(),
                response_headers: capture.capturer.headers(&parts.headers, false),
                capturer: capture.capturer,
                method: capture.method,
                path: capture.path,
                query: capture.query,
                request_headers: capture.request_headers,
                request_body: capture.request_body,
                status: parts.status.as_u16(),
                response_body,
            });
        }
        Response::from_parts(parts, body)
    }
}

/// Whether `method` only reads.
fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// One exchange on its way through [`Proxy::handle`]: what routing decided, and what the
/// stages after the forward need of the request.
struct Exchange<'r> {
    started: Instant,
    client: SocketAddr,
    routing: &'r Routing,
    /// The carve-out that owns the request, if any.
    carveout: Option<&'r CarveOut>,
    decision: Decision,
    /// Who answers: the decision's target, or the monolith after a fallback.
    answered_by: Target,
    /// The client's body: whether there is one (streamed once, bounded, never replayed),
    /// and its declared length.
    has_body: bool,
    declared: Option<u64>,
    /// What a retry, a fallback or the shadow copy sends again (bodiless requests only).
    replay: Option<Replay>,
    /// The request's half of a sampled capture.
    capture: Option<CaptureStart>,
    span: tracing::Span,
}

/// What a sampled capture keeps of the request, until the response completes it.
struct CaptureStart {
    capturer: Arc<Capturer>,
    method: String,
    path: String,
    query: Option<String>,
    /// Redacted, as the client sent them (before the forwarding headers).
    request_headers: Vec<(String, String)>,
    request_body: Option<tokio::sync::oneshot::Receiver<Option<bytes::Bytes>>>,
}

impl<'r> Exchange<'r> {
    /// The route stage: which carve-out owns the request and what its phase decides.
    fn route(
        routing: &'r Routing,
        request: &Request<Incoming>,
        client: SocketAddr,
        started: Instant,
        declared: Option<u64>,
    ) -> Self {
        let (carveout, decision) = routing.decide(request, client);
        let span = tracing::Span::current();
        if let Some(carveout) = carveout {
            span.record("strangler.carveout", carveout.spec.name.as_str());
            span.record("strangler.phase", carveout.phase.name());
            span.record("strangler.shadow", decision.shadow);
        }
        Exchange {
            started,
            client,
            routing,
            carveout,
            answered_by: decision.target,
            decision,
            // Whatever the framing (a length, chunks, or HTTP/2 frames with neither), a body
            // that has not ended yet is one.
            has_body: !request.body().is_end_stream(),
            declared,
            replay: None,
            capture: None,
            span,
        }
    }

    /// The upstream that serves `target` for this exchange.
    fn upstream(&self, target: Target) -> &'r Arc<Upstream> {
        match (target, self.carveout) {
            (Target::Service, Some(carveout)) => &carveout.service,
            _ => &self.routing.monolith,
        }
    }

    /// The prepare stage: the request as it goes upstream.
    fn prepare(&mut self, request: Request<Incoming>) -> Request<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        self.capture = self.sample_capture(&parts);
        let client = self.client.ip();
        add_forwarding(&mut parts.headers, client, self.routing.trusts(client));
        // With traces exported, the next hop is a child of this proxy's span.
        telemetry::http::inject(&self.span, &mut parts.headers);
        if !self.span.is_disabled() {
            // For log lines: the trace this request belongs to (kept or started above).
            if let Some(trace_id) = telemetry::http::trace_id(&parts.headers) {
                self.span.record("trace_id", trace_id);
            }
        }
        let body = if self.has_body {
            let body = ProxyBody::client(
                body,
                self.routing.max_body_bytes,
                self.routing.body_idle_timeout,
            );
            match &mut self.capture {
                Some(capture) => {
                    let (body, copy) = ProxyBody::tee(body, capture.capturer.max_body_bytes());
                    capture.request_body = Some(copy);
                    body
                }
                None => body,
            }
        } else {
            ProxyBody::empty()
        };
        let retries = self.upstream(self.decision.target).retries(&parts.method);
        let replayable =
            !self.has_body && (self.decision.fallback || self.decision.shadow || retries);
        self.replay = replayable.then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
        Request::from_parts(parts, body)
    }

    /// A sample of the monolith-served exchanges of a capturing carve-out is kept for
    /// contracts; a request body is captured only when its declared length fits the bound.
    fn sample_capture(&self, parts: &http::request::Parts) -> Option<CaptureStart> {
        let capturer = self.carveout?.capturer.as_ref()?;
        let fits = !self.has_body
            || self
                .declared
                .is_some_and(|l| l <= capturer.max_body_bytes() as u64);
        if self.decision.target != Target::Monolith || !fits || !capturer.sample() {
            return None;
        }
        Some(CaptureStart {
            capturer: Arc::clone(capturer),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            request_headers: capturer.headers(&parts.headers, true),
            request_body: None,
        })
    }

    /// The answer stage: the response's head as it goes back, the span and the metrics.
    fn answer(&self, mut response: Response<Incoming>) -> Response<Incoming> {
        strip_hop_by_hop(response.headers_mut());
        if let Some(name) = &self.routing.served_by_header {
            let served = self.upstream(self.answered_by).name_value().clone();
            response.headers_mut().insert(name.clone(), served);
        }
        let status = response.status();
        self.span
            .record("strangler.target", self.answered_by.as_str());
        self.span.record(
            "strangler.fallback",
            self.answered_by != self.decision.target,
        );
        self.span
            .record("http.response.status_code", status.as_u16());
        tracing::debug!(status = status.as_u16(), "answered");
        if status.is_server_error() {
            self.span.record("otel.status_code", "ERROR");
        }
        self.record(status);
        response
    }

    /// Counts the exchange for its carve-out (or the unrouted requests).
    fn record(&self, status: StatusCode) {
        let metrics = self.carveout.map_or(&self.routing.unrouted, |c| &c.metrics);
        metrics.record(
            self.answered_by,
            status.as_u16(),
            self.started.elapsed().as_secs_f64(),
        );
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
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "CONNECT is not proxied",
        )
        .with_header(
            header::ALLOW,
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        )
        .into_proxy_response());
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
