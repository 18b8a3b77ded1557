//! Trace context over HTTP: a span per served request, `traceparent` in and out.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use tracing::field::Empty;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The trace id in a request's W3C `traceparent` header, if it holds a valid one.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    valid_trace_id(headers.get("traceparent")?.to_str().ok()?)
}

/// The trace id of a valid version-00 W3C `traceparent` value.
pub fn valid_trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

/// Makes `span` a child of the context the request's headers carry (when traces are on).
pub fn set_parent(span: &tracing::Span, headers: &HeaderMap) {
    if crate::traces_on() {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
        });
        // Fails only for a span that has started already, which a fresh one has not.
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s context into outgoing headers (`traceparent`), when traces are on.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if crate::traces_on() {
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers));
        });
    }
}

/// The headers that carry the current span's context to a downstream service (empty when
/// traces are off).
pub fn propagation() -> HeaderMap {
    let mut headers = HeaderMap::new();
    inject(&tracing::Span::current(), &mut headers);
    headers
}

/// Middleware: one `request` span per served request, a child of the caller's span, with the
/// method, route and status, and the caller's trace id for log lines.
pub async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        trace_id = trace_id(request.headers()).unwrap_or_default(),
    );
    set_parent(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::debug!(parent: &span, status = status.as_u16(), "answered");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", traceparent.parse().unwrap());
        headers
    }

    #[test]
    fn a_valid_traceparent_gives_its_trace_id() {
        let valid = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(trace_id(&valid), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert_eq!(trace_id(&headers(invalid)), None, "{invalid}");
        }
        assert_eq!(trace_id(&HeaderMap::new()), None);
    }
}
