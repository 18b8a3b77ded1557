//! The provider-state hook for contract verification (`POST /_contracts/provider-states`),
//! served only when `--provider-states` is on; the same states as the monolith's hook:
//!
//! - `catalog fixture`: the products are the catalog's business (the service asks its
//!   `--catalog-url`): nothing to do here.
//! - `stock of a product` (`product_id`, `quantity`): the product has exactly `quantity` units
//!   available.

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

/// The hook's path.
pub const PATH: &str = "/_contracts/provider-states";

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

/// The hook's route.
pub fn router(db: Db) -> Router {
    Router::new().route(PATH, post(change)).with_state(db)
}

async fn change(
    State(db): State<Db>,
    body: Result<Json<StateChange>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(change) = body.map_err(|r| Problem::unprocessable(r.body_text()))?;
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
        "catalog fixture" => Ok(Json(json!({})).into_response()),
        "stock of a product" => {
            let number = |name: &str| {
                change
                    .params
                    .get(name)
                    .and_then(Value::as_i64)
                    .ok_or_else(|| Problem::unprocessable(format!("{name} must be an integer")))
            };
            let (product_id, quantity) = (number("product_id")?, number("quantity")?);
            let mut tx = db.begin_write().await?;
            crate::store::set(&mut tx, product_id, quantity).await?;
            tx.commit().await?;
            Ok(Json(json!({"product_id": product_id, "quantity": quantity})).into_response())
        }
        other => Err(Problem::unprocessable(format!(
            "unknown provider state {other:?} (known: \"catalog fixture\", \"stock of a product\")"
        ))),
    }
}
