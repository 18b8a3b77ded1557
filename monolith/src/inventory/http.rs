//! `PUT /inventory/{product_id}`, `GET /inventory/{product_id}`.

use std::sync::Arc;

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{InventoryApi, SetStock, Stock};
use crate::error::{Problem, Result};
use crate::http::extract::{Json, Path};

type Api = State<Arc<dyn InventoryApi>>;

/// The inventory routes.
pub fn router(api: Arc<dyn InventoryApi>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(get_stock, set_stock))
        .with_state(api)
}

/// Reads a product's stock.
#[utoipa::path(get, path = "/inventory/{product_id}", tag = "inventory",
    params(("product_id" = i64, Path, description = "Product id")),
    responses(
        (status = 200, description = "The stock", body = Stock),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_stock(State(api): Api, Path(product_id): Path<i64>) -> Result<Json<Stock>> {
    Ok(Json(api.stock(product_id).await?))
}

/// Sets a product's available stock.
#[utoipa::path(put, path = "/inventory/{product_id}", tag = "inventory", request_body = SetStock,
    params(("product_id" = i64, Path, description = "Product id")),
    responses(
        (status = 200, description = "The new stock", body = Stock),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Negative or too large quantity", body = Problem, content_type = "application/problem+json"),
    ))]
async fn set_stock(
    State(api): Api,
    Path(product_id): Path<i64>,
    Json(body): Json<SetStock>,
) -> Result<Json<Stock>> {
    Ok(Json(api.set_stock(product_id, body.quantity).await?))
}
