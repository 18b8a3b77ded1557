//! `POST /orders` (with `Idempotency-Key`), `GET /orders/{id}`, `GET /orders?customer_id=`.
//!
//! Idempotency: the first request with a key claims it before any work starts; the response it
//! produces (success or failure, status and body) is stored under the key. A retry with the same
//! key and body gets that stored response (marked `Idempotent-Replayed: true`) and charges
//! nothing; the same key with a different body is a 422; a retry while the first is still running
//! is a 409, so two concurrent retries never place two orders.
//!
//! The placement runs in a task of its own, so a client that hangs up cancels neither the saga
//! nor the storing of its outcome. A request refused before it recorded an order (validation,
//! an unknown customer or product) frees its key instead of using it up: nothing happened. If
//! the process dies mid-saga, recovery settles the order and stores the outcome under its key.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, Claim};
use super::{Order, OrdersApi, PlaceOrder};
use crate::db::Db;
use crate::error::{Error, Problem, Result};
use crate::http::extract::{Json, Path, Query};

/// State of the orders routes.
#[derive(Clone)]
struct OrdersHttp {
    api: Arc<dyn OrdersApi>,
    db: Db,
}

/// The orders routes. `db` holds the idempotency keys.
pub fn router(api: Arc<dyn OrdersApi>, db: Db) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(place_order, list_orders))
        .routes(routes!(get_order))
        .with_state(OrdersHttp { api, db })
}

/// Query parameters of `GET /orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Whose orders.
    customer_id: i64,
}

/// A customer's orders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    /// Newest first, at most 100.
    pub items: Vec<Order>,
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(Error::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
        )),
    }
}

fn request_hash(request: &PlaceOrder) -> String {
    // The parsed request, re-serialized, so whitespace and key order do not matter.
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_response(status: u16, body: String, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Places an order: reserve stock, charge, confirm (or compensate).
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the first result")),
    responses(
        (status = 201, description = "Confirmed", body = Order),
        (status = 202, description = "Still pending: the inventory has not answered within the wait; the order settles later (poll `GET /orders/{id}`)", body = Order),
        (status = 402, description = "Payment declined or timed out; the order is payment_failed and its stock released", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Out of stock (the order is rejected), or the key's first request is still running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid order, unknown customer or product, or key reused with another body", body = Problem, content_type = "application/problem+json"),
    ))]
async fn place_order(
    State(state): State<OrdersHttp>,
    headers: HeaderMap,
    Json(request): Json<PlaceOrder>,
) -> Result<Response> {
    let key = idempotency_key(&headers)?;
    // Detached from this request's future: a client that hangs up cancels nothing.
    tokio::spawn(place_and_record(state, key, request))
        .await
        .map_err(|err| Error::Internal(anyhow::anyhow!("the order placement task failed: {err}")))?
}

async fn place_and_record(
    state: OrdersHttp,
    key: Option<String>,
    request: PlaceOrder,
) -> Result<Response> {
    if let Some(key) = &key {
        match store::claim(&state.db, key, &request_hash(&request)).await? {
            Claim::New => {}
            Claim::Done { status, body } => return Ok(json_response(status, body, true)),
            Claim::InProgress => {
                return Err(Error::Conflict(format!(
                    "a request with Idempotency-Key {key:?} is still being processed"
                )))
            }
            Claim::Mismatch => {
                return Err(Error::Unprocessable(format!(
                    "Idempotency-Key {key:?} was already used with a different request"
                )))
            }
        }
    }
    let result = state.api.place_order(request, key.clone()).await;
    if let Err(Error::Internal(cause)) = &result {
        tracing::error!(error = ?cause, "placing an order failed");
    }
    let location = result
        .as_ref()
        .ok()
        .map(|order| format!("/orders/{}", order.id));
    let (status, body) = outcome(&result);
    if let Some(key) = &key {
        // Failures are stored too: a retry must not charge again after an ambiguous failure.
        // A pending order's key gets its outcome when the order settles.
        if status != 202 {
            store::complete(&state.db, key, status, &body).await?;
        }
    }
    let mut response = json_response(status, body, false);
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The status and body `POST /orders` answers for a placement's result (and replays for its key).
pub(super) fn outcome(result: &Result<Order>) -> (u16, String) {
    match result {
        Ok(order) if order.status == "pending" => {
            (202, serde_json::to_string(order).unwrap_or_default())
        }
        Ok(order) => (201, serde_json::to_string(order).unwrap_or_default()),
        Err(err) => {
            let problem = err.to_problem();
            let body = serde_json::to_string(&problem).unwrap_or_default();
            (problem.status, body)
        }
    }
}

/// Reads an order.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_order(State(state): State<OrdersHttp>, Path(id): Path<i64>) -> Result<Json<Order>> {
    state
        .api
        .order(id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("order {id} does not exist")))
}

/// Lists a customer's orders.
#[utoipa::path(get, path = "/orders", tag = "orders", params(ListParams),
    responses(
        (status = 200, description = "The customer's orders, newest first", body = OrderList),
        (status = 400, description = "Missing or invalid customer_id", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_orders(
    State(state): State<OrdersHttp>,
    Query(params): Query<ListParams>,
) -> Result<Json<OrderList>> {
    Ok(Json(OrderList {
        items: state.api.customer_orders(params.customer_id).await?,
    }))
}
