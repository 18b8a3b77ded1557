//! The `/catalog/products` routes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CatalogApi, Product, ProductInput, ProductQuery, MAX_PAGE};
use crate::error::{Error, Problem, Result};
use crate::http::extract::{Json, Path, Query};

type Api = State<Arc<dyn CatalogApi>>;

/// The catalog routes.
pub fn router(api: Arc<dyn CatalogApi>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product, update_product, delete_product))
        .with_state(api)
}

/// Query parameters of `GET /catalog/products`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Page size, 1 to 100 (default 20).
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// Case-insensitive substring of the product name.
    q: Option<String>,
}

/// One page of products.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductList {
    /// Products in ascending id order.
    pub items: Vec<Product>,
    /// Cursor of the next page (`?after=`), or null on the last page.
    pub next: Option<String>,
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("id:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("id:").and_then(|id| id.parse().ok()))
        .ok_or_else(|| Error::BadRequest(format!("after={cursor:?} is not a valid cursor")))
}

/// Adds a product.
#[utoipa::path(post, path = "/catalog/products", tag = "catalog", request_body = ProductInput,
    responses(
        (status = 201, description = "Created", body = Product),
        (status = 409, description = "Duplicate sku", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid product", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_product(
    State(api): Api,
    Json(input): Json<ProductInput>,
) -> Result<impl IntoResponse> {
    let product = api.create_product(input).await?;
    let location = format!("/catalog/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(product),
    ))
}

/// Lists products, page by page, optionally filtered by name.
#[utoipa::path(get, path = "/catalog/products", tag = "catalog", params(ListParams),
    responses(
        (status = 200, description = "A page of products", body = ProductList),
        (status = 400, description = "Invalid cursor", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_products(
    State(api): Api,
    Query(params): Query<ListParams>,
) -> Result<Json<ProductList>> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::Unprocessable(format!(
            "limit must be between 1 and {MAX_PAGE} (got {limit})"
        )));
    }
    let after = params.after.as_deref().map(decode_cursor).transpose()?;
    let name_contains = params.q.filter(|q| !q.trim().is_empty());
    let page = api
        .list_products(ProductQuery {
            limit,
            after,
            name_contains,
        })
        .await?;
    Ok(Json(ProductList {
        items: page.items,
        next: page.next_after.map(encode_cursor),
    }))
}

/// Reads a product.
#[utoipa::path(get, path = "/catalog/products/{id}", tag = "catalog",
    params(("id" = i64, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_product(State(api): Api, Path(id): Path<i64>) -> Result<Json<Product>> {
    api.product(id)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("product {id} does not exist")))
}

/// Replaces a product's fields.
#[utoipa::path(put, path = "/catalog/products/{id}", tag = "catalog", request_body = ProductInput,
    params(("id" = i64, Path, description = "Product id")),
    responses(
        (status = 200, description = "Updated", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Duplicate sku", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid product", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_product(
    State(api): Api,
    Path(id): Path<i64>,
    Json(input): Json<ProductInput>,
) -> Result<Json<Product>> {
    Ok(Json(api.update_product(id, input).await?))
}

/// Removes a product.
#[utoipa::path(delete, path = "/catalog/products/{id}", tag = "catalog",
    params(("id" = i64, Path, description = "Product id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_product(State(api): Api, Path(id): Path<i64>) -> Result<StatusCode> {
    api.delete_product(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("not-a-cursor").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("id:x")).is_err());
    }
}
