//! The provider-state hook for contract verification (`POST /_contracts/provider-states`),
//! served only with `--provider-states`: the same states as the monolith's hook, on this
//! service's schema, so the same contracts verify both.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlkit::Db;

use crate::problem::Problem;
use crate::store::{self, ProductInput};

/// The hook's path.
pub const PATH: &str = "/_contracts/provider-states";

#[derive(Debug, Deserialize)]
struct StateChange {
    #[serde(default)]
    state: String,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default = "setup")]
    action: String,
}

fn setup() -> String {
    "setup".to_owned()
}

/// The hook's route.
pub fn router(db: Db) -> Router {
    Router::new().route(PATH, post(change)).with_state(db)
}

fn fixture_product(k: u64) -> ProductInput {
    ProductInput {
        sku: format!("CT-{k:04}"),
        name: format!("Contract product {k}"),
        description: format!("Product {k} of the contract fixture."),
        price_cents: i64::try_from(k).unwrap_or(i64::MAX).saturating_mul(250),
        currency: "EUR".to_owned(),
    }
}

async fn change(
    State(db): State<Db>,
    body: Result<Json<StateChange>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(change) = body.map_err(|r| Problem::new(r.status(), "invalid-body", r.body_text()))?;
    if change.action == "teardown" || change.state.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if change.action != "setup" {
        return Err(Problem::unprocessable(format!(
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
                        Problem::unprocessable(format!("count must be 1 to 1000, not {v}"))
                    })?,
            };
            let ids = fixture(&db, count).await?;
            Ok(
                Json(json!({"count": count, "first_id": ids.first(), "last_id": ids.last()}))
                    .into_response(),
            )
        }
        other => Err(Problem::unprocessable(format!(
            "unknown provider state {other:?} (known: \"catalog fixture\")"
        ))),
    }
}

async fn fixture(db: &Db, count: u64) -> Result<Vec<i64>, Problem> {
    let wanted: Vec<ProductInput> = (1..=count).map(fixture_product).collect();
    let mut existing = Vec::new();
    let mut after = 0;
    loop {
        let (page, next) = store::list(db, store::MAX_PAGE, after, None).await?;
        existing.extend(page);
        match next {
            Some(n) => after = n,
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
                store::update(db, product.id, w).await?;
            }
            None => {
                store::delete(db, product.id).await?;
            }
        }
    }
    let mut ids = Vec::with_capacity(wanted.len());
    for w in wanted {
        match existing.iter().find(|p| p.sku == w.sku) {
            Some(p) => ids.push(p.id),
            None => ids.push(store::insert(db, &w).await?.id),
        }
    }
    Ok(ids)
}
