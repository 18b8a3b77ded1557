//! RFC 9457 problem+json: every refusal of the proxy (its own answers on the data path) and of
//! its admin API is a [`Problem`], rendered in one place.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// A problem: status, a type slug (`/problems/<slug>`), a detail, and optionally extension
/// members and headers (`Retry-After`, `WWW-Authenticate`).
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    status: StatusCode,
    slug: &'static str,
    detail: String,
    members: serde_json::Map<String, serde_json::Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with `status`, a type slug and a detail.
    pub(crate) fn new(
        status: StatusCode,
        slug: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            slug,
            detail: detail.into(),
            members: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds extension members: the fields of `members`, an object.
    pub(crate) fn with_members(mut self, members: serde_json::Value) -> Problem {
        if let serde_json::Value::Object(members) = members {
            self.members.extend(members);
        }
        self
    }

    /// Adds a header to the response.
    pub(crate) fn with_header(mut self, name: HeaderName, value: &'static str) -> Problem {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    fn render(self) -> (http::response::Parts, String) {
        let mut body = serde_json::json!({
            "type": format!("/problems/{}", self.slug),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(body) = body.as_object_mut() {
            body.extend(self.members);
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = self.status;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            parts.headers.insert(name, value);
        }
        (parts, body.to_string())
    }

    /// The response on the data path.
    pub(crate) fn into_proxy_response(self) -> Response<ProxyBody> {
        let (parts, body) = self.render();
        Response::from_parts(parts, ProxyBody::full(Bytes::from(body)))
    }
}

impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        let (parts, body) = self.render();
        Response::from_parts(parts, axum::body::Body::from(body))
    }
}

/// A problem+json response on the data path, with `status`, a type slug and a detail.
pub(crate) fn problem(status: StatusCode, slug: &'static str, detail: &str) -> Response<ProxyBody> {
    Problem::new(status, slug, detail).into_proxy_response()
}
