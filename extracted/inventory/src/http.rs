//! The HTTP surface: the monolith's `/inventory/{product_id}` routes, answered alike.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sqlkit::Db;
use strangler_sync::guard::{self, Guard};

use crate::problem::Problem;
use crate::store::{self, Stock, MAX_QUANTITY};

/// What the routes need.
#[derive(Clone)]
pub struct Http {
    db: Db,
    catalog: Option<Catalog>,
}

/// The catalog that says which products exist (the monolith's contract answers 404 for a
/// product that does not exist, and zero stock for one that has no stock record).
#[derive(Clone)]
struct Catalog {
    base: String,
    http: reqwest::Client,
}

impl Http {
    /// Routes over `db`; products are looked up at `catalog_url` (without one, a product with
    /// no stock record is answered 404).
    pub fn new(db: Db, catalog_url: Option<&str>) -> anyhow::Result<Http> {
        let catalog = catalog_url
            .map(|url| -> anyhow::Result<Catalog> {
                Ok(Catalog {
                    base: url.trim_end_matches('/').to_owned(),
                    http: reqwest::Client::builder()
                        .timeout(Duration::from_secs(2))
                        .build()?,
                })
            })
            .transpose()?;
        Ok(Http { db, catalog })
    }

    async fn product_exists(&self, product_id: i64) -> Result<bool, Problem> {
        let Some(catalog) = &self.catalog else {
            return Ok(false);
        };
        let url = format!("{}/catalog/products/{product_id}", catalog.base);
        let response = catalog.http.get(&url).send().await.map_err(|e| {
            tracing::warn!(%url, error = %e, "the catalog does not answer");
            unavailable("the catalog does not answer")
        })?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => {
                tracing::warn!(%url, %status, "the catalog failed");
                Err(unavailable("the catalog failed"))
            }
        }
    }
}

fn unavailable(detail: &str) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
}

/// The service's routes.
pub fn router(http: Http) -> Router {
    Router::new()
        .route("/inventory/{product_id}", get(read).put(set))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(http)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStock {
    quantity: i64,
}

fn path_id(path: Result<Path<i64>, PathRejection>) -> Result<i64, Problem> {
    path.map(|Path(id)| id).map_err(|r| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-path-parameter",
            r.body_text(),
        )
    })
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    let status = rejection.status();
    let slug = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
        _ => "malformed-body",
    };
    Problem::new(status, slug, rejection.body_text())
}

fn no_product(product_id: i64) -> Problem {
    Problem::not_found(format!("product {product_id} does not exist"))
}

async fn read(
    State(http): State<Http>,
    path: Result<Path<i64>, PathRejection>,
) -> Result<Json<Stock>, Problem> {
    let product_id = path_id(path)?;
    if let Some(stock) = store::stock(&http.db, product_id).await? {
        return Ok(Json(stock));
    }
    if !http.product_exists(product_id).await? {
        return Err(no_product(product_id));
    }
    Ok(Json(Stock {
        product_id,
        quantity: 0,
        reserved: 0,
        updated_at: None,
    }))
}

async fn set(
    State(http): State<Http>,
    path: Result<Path<i64>, PathRejection>,
    body: Result<Json<SetStock>, JsonRejection>,
) -> Result<Json<Stock>, Problem> {
    let product_id = path_id(path)?;
    let Json(body) = body.map_err(|r| json_problem(&r))?;
    if !(0..=MAX_QUANTITY).contains(&body.quantity) {
        return Err(Problem::unprocessable(format!(
            "quantity must be between 0 and {MAX_QUANTITY} (got {})",
            body.quantity
        )));
    }
    if store::stock(&http.db, product_id).await?.is_none()
        && !http.product_exists(product_id).await?
    {
        return Err(no_product(product_id));
    }
    let mut tx = http.db.begin_write().await?;
    match store::set(&mut tx, product_id, body.quantity).await {
        Ok(()) => tx.commit().await?,
        Err(err) => {
            return Err(match guard::refusal(&err) {
                Some(Guard::Fenced) => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "fenced",
                    "the inventory's writes are moving between the monolith and this service; try again",
                ),
                Some(Guard::OwnedElsewhere) => Problem::new(
                    StatusCode::CONFLICT,
                    "not-owner",
                    "the monolith owns the inventory's writes",
                ),
                None => err.into(),
            })
        }
    }
    let stock = store::stock(&http.db, product_id).await?;
    stock
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("product {product_id} does not exist")))
}

async fn ready(State(http): State<Http>) -> Response {
    match http.db.ping().await {
        Ok(()) => "ready".into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "the database does not answer");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "the database does not answer",
            )
            .into_response()
        }
    }
}

async fn not_found(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("method not allowed on {}", uri.path()),
    )
}
