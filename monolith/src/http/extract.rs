//! Extractors whose rejections are problem+json like every other error.
//!
//! axum's own `Json`, `Path` and `Query` reject with plain text; these wrappers keep axum's
//! status codes (400 bad syntax, 413 too large, 415 wrong content type, 422 wrong shape) and
//! render them through [`Error`](crate::error::Error)'s problem shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::Problem;

/// JSON body extractor and response type with problem+json rejections.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(Rejection))]
pub struct Json<T>(pub T);

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
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Rejection))]
pub struct Query<T>(pub T);

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
