//! Extractors whose rejections are problem+json like every other error.
//!
//! axum's own `Json`, `Path` and `Query` reject with plain text; these wrappers keep axum's
//! status codes (400 bad syntax, 413 too large, 415 wrong content type, 422 wrong shape) and
//! render them through [`Error`](crate::error::Error)'s problem shape.
//!
//! Text never carries a NUL character: SQLite would store it and PostgreSQL refuses it, so the
//! two backends would disagree. A JSON body with a `\u0000` escape is a 422 (`invalid-body`) and
//! a query string with `%00` a 400 (`invalid-query`), on every route, before any handler runs.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::Problem;

/// JSON body extractor and response type with problem+json rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        if !json_content_type(request.headers()) {
            return Err(Rejection(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Expected request with `Content-Type: application/json`",
            )));
        }
        // Bytes honours the router's body limit.
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                let (slug, detail) = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    (
                        "payload-too-large",
                        "the request body exceeds the size limit".to_owned(),
                    )
                } else {
                    ("malformed-body", rejection.body_text())
                };
                Rejection(Problem::new(status, slug, detail))
            })?;
        if has_nul_escape(&bytes) {
            return Err(Rejection(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "text must not contain NUL characters (\\u0000)",
            )));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some(subtype) = essence
        .get(..12)
        .filter(|t| t.eq_ignore_ascii_case("application/"))
        .map(|_| &essence[12..])
    else {
        return false;
    };
    subtype.eq_ignore_ascii_case("json")
        || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json")
}

/// Whether JSON text holds a `\u0000` escape (a NUL in a string). Backslashes only start escapes
/// in JSON, so walking escape by escape is exact: `\\u0000` is a backslash and text.
pub fn has_nul_escape(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameter extractor with problem+json rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Rejection))]
pub struct Path<T>(pub T);

/// Query string extractor with problem+json rejections.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Rejection> {
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(Rejection(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "the query must not contain NUL characters (%00)",
            )));
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// A rejected request part, rendered as problem+json.
#[derive(Debug)]
pub struct Rejection(Problem);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<JsonRejection> for Rejection {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let slug = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
            _ => "malformed-body",
        };
        let detail = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "the request body exceeds the size limit".to_owned(),
            _ => rejection.body_text(),
        };
        Rejection(Problem::new(status, slug, detail))
    }
}

impl From<PathRejection> for Rejection {
    fn from(rejection: PathRejection) -> Self {
        // An id that does not parse names no resource: 404 would hide a client bug, so 400.
        Rejection(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-path-parameter",
            rejection.body_text(),
        ))
    }
}

impl From<QueryRejection> for Rejection {
    fn from(rejection: QueryRejection) -> Self {
        Rejection(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            rejection.body_text(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(has_nul_escape(br#"{"name":"a\u0000b"}"#));
        assert!(has_nul_escape(br#"["\\\u0000"]"#));
        assert!(!has_nul_escape(br#"{"name":"a\\u0000b"}"#));
        assert!(!has_nul_escape(br#"{"name":"a\u0001\n"}"#));
        assert!(!has_nul_escape(b"\\"));
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::CONTENT_TYPE, value.parse().unwrap());
            json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/json"));
        assert!(!with("application/jsonx"));
        assert!(!with("application/+json"));
        assert!(!json_content_type(&axum::http::HeaderMap::new()));
    }
}
