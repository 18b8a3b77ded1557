//! The one error type of the shop, shared by the module facades and the HTTP layer.
//!
//! Policy: code inside request handling and behind the facades returns [`Error`]; it names what
//! went wrong in domain terms (not found, conflict, unprocessable...) and carries no database types,
//! so a facade can later be backed by an HTTP client without changing its signature. Work outside
//! the request cycle (the CLI, seeding, start-up) uses `anyhow` with `.context()`.
//!
//! Every variant renders as an RFC 9457 `application/problem+json` body. Internal errors are opaque
//! to clients (a generic detail) and logged with their whole cause chain.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
pub use strangler_sync::guard::Guard;
use utoipa::ToSchema;

/// Result alias used throughout the shop.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was malformed (syntax, unparsable parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The named resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with current state (duplicate key, request in progress).
    #[error("{0}")]
    Conflict(String),
    /// The request was well-formed but its content is invalid.
    #[error("{0}")]
    Unprocessable(String),
    /// A fully described problem (status, type, extra members), for domain outcomes such as a
    /// declined payment that clients must be able to tell apart.
    #[error("{}", .0.detail)]
    Problem(Box<Problem>),
    /// The data sync's write guard refused a write: the tables belong to a carve-out whose
    /// writes are moving ([`Guard::Fenced`]: try again shortly) or are owned by its extracted
    /// service ([`Guard::OwnedElsewhere`]).
    #[error("the carve-out's writes are {}", .0.name())]
    Elsewhere(Guard),
    /// A dependency (database, provider, remote module) failed; the cause is logged, not shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match strangler_sync::guard::refusal(&err) {
            Some(guard) => Error::Elsewhere(guard),
            None => Error::Internal(anyhow::Error::new(err)),
        }
    }
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// An explanation specific to this occurrence.
    pub detail: String,
    /// Extension members (e.g. `order_id`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// A problem with the given status, type slug (`/problems/<slug>`) and detail.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// The HTTP status of this problem.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl Error {
    /// The problem this error renders as.
    pub fn to_problem(&self) -> Problem {
        match self {
            Error::BadRequest(d) => Problem::new(StatusCode::BAD_REQUEST, "bad-request", d),
            Error::NotFound(d) => Problem::new(StatusCode::NOT_FOUND, "not-found", d),
            Error::Conflict(d) => Problem::new(StatusCode::CONFLICT, "conflict", d),
            Error::Unprocessable(d) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", d)
            }
            Error::Problem(p) => (**p).clone(),
            Error::Elsewhere(Guard::Fenced) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "fenced",
                "these writes are moving between the monolith and an extracted service; try again shortly",
            ),
            Error::Elsewhere(Guard::OwnedElsewhere) => Problem::new(
                StatusCode::CONFLICT,
                "not-owner",
                "an extracted service owns these writes; send them through the proxy",
            ),
            Error::Internal(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; it has been logged",
            ),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(err) = &self {
            tracing::error!(error = ?err, "request failed");
        }
        self.to_problem().into_response()
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}
