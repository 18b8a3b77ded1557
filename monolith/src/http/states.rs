//! The provider-state hook for contract verification (`POST /_contracts/provider-states`),
//! served only when `--provider-states` is on. A contract verifier (ours or Pact's) posts
//! `{"state": ..., "params": {...}, "action": "setup" | "teardown"}` before an interaction and
//! the hook puts the data in the state the interaction needs.
//!
//! States:
//! - `catalog fixture` (`count`, default 3): the catalog holds exactly the products
//!   `CT-0001` .. `CT-<count>` with their canonical fields; other products are removed. Never
//!   turn this on against data you want to keep. Answers `{"count", "first_id", "last_id"}`
//!   for `ProviderState` generators (`/catalog/products/${first_id}`).
//! - `stock of a product` (`product_id`, `quantity`): the product (which must exist) has
//!   exactly `quantity` units available.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::catalog::{CatalogApi, ProductInput, ProductQuery, MAX_PAGE};
use crate::error::{Error, Result};
use crate::http::extract::Json;
use crate::inventory::InventoryApi;

/// The hook's path.
pub const PATH: &str = "/_contracts/provider-states";

/// What a verifier posts.
#[derive(Debug, Deserialize)]
struct StateChange {
    state: String,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default = "setup")]
    action: String,
}

fn setup() -> String {
    "setup".to_owned()
}

/// What the hook changes.
#[derive(Clone)]
struct Modules {
    catalog: Arc<dyn CatalogApi>,
    inventory: Arc<dyn InventoryApi>,
}

/// The hook's route.
pub fn router(catalog: Arc<dyn CatalogApi>, inventory: Arc<dyn InventoryApi>) -> Router {
    Router::new()
        .route(PATH, post(change))
        .with_state(Modules { catalog, inventory })
}

/// The canonical fields of fixture product `k`.
pub fn fixture_product(k: u64) -> ProductInput {
    ProductInput {
        sku: format!("CT-{k:04}"),
        name: format!("Contract product {k}"),
        description: format!("Product {k} of the contract fixture."),
        price_cents: i64::try_from(k).unwrap_or(i64::MAX).saturating_mul(250),
        currency: "EUR".to_owned(),
    }
}

async fn change(
    State(modules): State<Modules>,
    Json(change): Json<StateChange>,
) -> Result<Response> {
    // Pact's verifier calls the hook for interactions without a state too, with an empty name.
    if change.action == "teardown" || change.state.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if change.action != "setup" {
        return Err(Error::Unprocessable(format!(
            "action must be setup or teardown, not {:?}",
            change.action
        )));
    }
    match change.state.as_str() {
        "catalog fixture" => {
            let count = match change.params.get("count") {
                None => 3,
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        Error::Unprocessable(format!("count must be 1 to 1000, not {v}"))
                    })?,
            };
            let ids = catalog_fixture(modules.catalog.as_ref(), count).await?;
            // The values a contract's `ProviderState` generators can use (`${first_id}`).
            Ok(axum::Json(json!({
                "count": count,
                "first_id": ids.first(),
                "last_id": ids.last(),
            }))
            .into_response())
        }
        "stock of a product" => {
            let number = |name: &str| {
                change
                    .params
                    .get(name)
                    .and_then(Value::as_i64)
                    .ok_or_else(|| Error::Unprocessable(format!("{name} must be an integer")))
            };
            let (product_id, quantity) = (number("product_id")?, number("quantity")?);
            let stock = modules.inventory.set_stock(product_id, quantity).await?;
            Ok(
                axum::Json(json!({"product_id": stock.product_id, "quantity": stock.quantity}))
                    .into_response(),
            )
        }
        other => Err(Error::Unprocessable(format!(
            "unknown provider state {other:?} (known: \"catalog fixture\", \"stock of a product\")"
        ))),
    }
}

/// Puts the fixture in place; returns the fixture products' ids in sku order.
async fn catalog_fixture(catalog: &dyn CatalogApi, count: u64) -> Result<Vec<i64>> {
    let wanted: Vec<ProductInput> = (1..=count).map(fixture_product).collect();
    let mut existing = Vec::new();
    let mut after = None;
    loop {
        let page = catalog
            .list_products(ProductQuery {
                limit: MAX_PAGE,
                after,
                name_contains: None,
            })
            .await?;
        existing.extend(page.items);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for product in &existing {
        match wanted.iter().find(|w| w.sku == product.sku) {
            Some(w)
                if w.name == product.name
                    && w.description == product.description
                    && w.price_cents == product.price_cents
                    && w.currency == product.currency => {}
            Some(w) => {
                catalog.update_product(product.id, w.clone()).await?;
            }
            None => catalog.delete_product(product.id).await?,
        }
    }
    let mut ids = Vec::with_capacity(wanted.len());
    for w in wanted {
        match existing.iter().find(|p| p.sku == w.sku) {
            Some(p) => ids.push(p.id),
            None => ids.push(catalog.create_product(w).await?.id),
        }
    }
    Ok(ids)
}
