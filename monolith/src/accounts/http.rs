//! `POST /accounts`, `GET /accounts/{id}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AccountsApi, Customer, NewCustomer};
use crate::error::{Error, Problem, Result};
use crate::http::extract::{Json, Path};

type Api = State<Arc<dyn AccountsApi>>;

/// The accounts routes.
pub fn router(api: Arc<dyn AccountsApi>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_customer))
        .routes(routes!(get_customer))
        .with_state(api)
}

/// Registers a customer.
#[utoipa::path(post, path = "/accounts", tag = "accounts", request_body = NewCustomer,
    responses(
        (status = 201, description = "Registered", body = Customer),
        (status = 409, description = "Email already registered", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email or name", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_customer(
    State(api): Api,
    Json(new): Json<NewCustomer>,
) -> Result<(StatusCode, Json<Customer>)> {
    let customer = api.create_customer(new).await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

/// Reads a customer.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = i64, Path, description = "Customer id")),
    responses(
        (status = 200, description = "The customer", body = Customer),
        (status = 404, description = "No such customer", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_customer(State(api): Api, Path(id): Path<i64>) -> Result<Json<Customer>> {
    api.customer(id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("customer {id} does not exist")))
}
