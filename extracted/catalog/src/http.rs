//! The HTTP surface: the monolith's `/catalog/products` routes, answered alike.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sqlkit::Db;

use crate::problem::Problem;
use crate::store::{self, Product, ProductInput, MAX_PAGE};

/// The service's routes.
pub fn router(db: Db) -> Router {
    Router::new()
        .route("/catalog/products", get(list).post(create))
        .route(
            "/catalog/products/{id}",
            get(read).put(replace).delete(remove),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(db)
}

fn json_problem(rejection: &JsonRejection) -> Problem {
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
    Problem::new(status, slug, detail)
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

/// The body, refused as the monolith refuses it: text with a NUL character is a 422
/// `invalid-body` (SQLite would store it and PostgreSQL refuses it).
fn body(body: Result<Json<ProductInput>, JsonRejection>) -> Result<ProductInput, Problem> {
    let input = body.map(|Json(b)| b).map_err(|r| json_problem(&r))?;
    let texts = [&input.sku, &input.name, &input.description, &input.currency];
    if texts.iter().any(|text| text.contains('\0')) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "text must not contain NUL characters (\\u0000)",
        ));
    }
    Ok(input)
}

fn not_found_product(id: i64) -> Problem {
    Problem::not_found(format!("product {id} does not exist"))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<u32>,
    after: Option<String>,
    q: Option<String>,
}

#[derive(Debug, Serialize)]
struct ProductList {
    items: Vec<Product>,
    next: Option<String>,
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("id:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, Problem> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("id:").and_then(|id| id.parse().ok()))
        .ok_or_else(|| Problem::bad_request(format!("after={cursor:?} is not a valid cursor")))
}

async fn list(
    State(db): State<Db>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ProductList>, Problem> {
    let Query(params) = params
        .map_err(|r| Problem::new(StatusCode::BAD_REQUEST, "invalid-query", r.body_text()))?;
    let texts = [&params.after, &params.q];
    if texts
        .iter()
        .any(|text| text.as_deref().is_some_and(|t| t.contains('\0')))
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "the query must not contain NUL characters (%00)",
        ));
    }
    let limit = params.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::unprocessable(format!(
            "limit must be between 1 and {MAX_PAGE} (got {limit})"
        )));
    }
    let after = params.after.as_deref().map(decode_cursor).transpose()?;
    let needle = params.q.filter(|q| !q.trim().is_empty());
    let (items, next) = store::list(&db, limit, after.unwrap_or(0), needle.as_deref()).await?;
    Ok(Json(ProductList {
        items,
        next: next.map(encode_cursor),
    }))
}

async fn create(
    State(db): State<Db>,
    input: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Response, Problem> {
    let input = store::validate(body(input)?)?;
    let product = store::insert(&db, &input).await?;
    let location = format!("/catalog/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(product),
    )
        .into_response())
}

async fn read(
    State(db): State<Db>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Product>, Problem> {
    let id = path_id(id)?;
    store::find(&db, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found_product(id))
}

async fn replace(
    State(db): State<Db>,
    id: Result<Path<i64>, PathRejection>,
    input: Result<Json<ProductInput>, JsonRejection>,
) -> Result<Json<Product>, Problem> {
    let id = path_id(id)?;
    let input = store::validate(body(input)?)?;
    store::update(&db, id, &input)
        .await?
        .map(Json)
        .ok_or_else(|| not_found_product(id))
}

async fn remove(
    State(db): State<Db>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let id = path_id(id)?;
    if store::delete(&db, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found_product(id))
    }
}

async fn ready(State(db): State<Db>) -> Response {
    match db.ping().await {
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
