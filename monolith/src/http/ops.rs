//! Operational endpoints: liveness, readiness, and the fallbacks for unknown routes.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::Db;
use crate::error::Problem;
use crate::http::extract::Json;

/// The answer of the health endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    status: &'static str,
}

pub(crate) fn router(db: Db) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .with_state(db)
}

/// The process is up.
#[utoipa::path(get, path = "/livez", tag = "ops", responses((status = 200, body = Health)))]
async fn livez() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The process can serve: its database answers.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, body = Health),
    (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json"),
))]
async fn readyz(State(db): State<Db>) -> Result<Json<Health>, Problem> {
    match db.ping().await {
        Ok(()) => Ok(Json(Health { status: "ok" })),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "the database does not answer",
            ))
        }
    }
}

pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no route for {}", uri.path()),
    )
}

pub(crate) async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("method not allowed on {}", uri.path()),
    )
}
