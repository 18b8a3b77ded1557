//! [`CatalogApi`] over HTTP: the catalog served by the extracted catalog service (or any
//! provider of the same contract). Timeouts on every call, and retries of idempotent calls
//! (reads, replaces, deletes) on connection failures and 5xx answers; creates are never retried.

use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::{CatalogApi, Product, ProductInput, ProductPage, ProductQuery};
use crate::error::{Error, Problem, Result};

/// The catalog at a base URL.
#[derive(Debug, Clone)]
pub struct HttpCatalog {
    base: String,
    http: reqwest::Client,
    retries: u32,
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Product>,
    next: Option<String>,
}

impl HttpCatalog {
    /// A client of the catalog at `base` (`http://127.0.0.1:8081`), each call bounded by
    /// `timeout`, idempotent ones tried up to `1 + retries` times.
    pub fn new(base: &str, timeout: Duration, retries: u32) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()?;
        Ok(HttpCatalog {
            base: base.trim_end_matches('/').to_owned(),
            http,
            retries,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&ProductInput>,
    ) -> Result<(StatusCode, Value)> {
        let idempotent = method != Method::POST;
        let attempts = if idempotent { 1 + self.retries } else { 1 };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
            }
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .headers(telemetry::http::propagation());
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if response.status().is_server_error() && attempt + 1 < attempts => {
                    last = Some(format!("{} answered {}", self.base, response.status()));
                }
                Ok(response) => {
                    let status = response.status();
                    let body = if status == StatusCode::NO_CONTENT {
                        Value::Null
                    } else {
                        response.json().await.map_err(|e| {
                            Error::Internal(anyhow::anyhow!("the catalog at {} answered {status} with a body that is not JSON: {e}", self.base))
                        })?
                    };
                    return Ok((status, body));
                }
                Err(err) => {
                    last = Some(format!("cannot reach the catalog at {}: {err}", self.base))
                }
            }
        }
        tracing::warn!(catalog = %self.base, error = ?last, "the catalog is unavailable");
        Err(Error::Problem(Box::new(Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "catalog-unavailable",
            last.unwrap_or_else(|| "the catalog call failed".to_owned()),
        ))))
    }

    /// A non-success answer as the error the in-process catalog would give.
    fn error(status: StatusCode, body: &Value) -> Error {
        let detail = body["detail"]
            .as_str()
            .unwrap_or("the catalog refused the request")
            .to_owned();
        match status {
            StatusCode::BAD_REQUEST => Error::BadRequest(detail),
            StatusCode::NOT_FOUND => Error::NotFound(detail),
            StatusCode::CONFLICT => Error::Conflict(detail),
            StatusCode::UNPROCESSABLE_ENTITY => Error::Unprocessable(detail),
            other => Error::Internal(anyhow::anyhow!("the catalog answered {other}: {detail}")),
        }
    }

    fn product(status: StatusCode, body: Value) -> Result<Product> {
        if !status.is_success() {
            return Err(Self::error(status, &body));
        }
        serde_json::from_value(body).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "the catalog answered an unexpected product: {e}"
            ))
        })
    }
}

#[async_trait]
impl CatalogApi for HttpCatalog {
    async fn create_product(&self, input: ProductInput) -> Result<Product> {
        let (status, body) = self
            .call(Method::POST, "/catalog/products", Some(&input))
            .await?;
        Self::product(status, body)
    }

    async fn product(&self, id: i64) -> Result<Option<Product>> {
        let (status, body) = self
            .call(Method::GET, &format!("/catalog/products/{id}"), None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::product(status, body).map(Some)
    }

    async fn products(&self, ids: &[i64]) -> Result<Vec<Product>> {
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let found =
            futures::future::try_join_all(unique.iter().map(|id| self.product(*id))).await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn update_product(&self, id: i64, input: ProductInput) -> Result<Product> {
        let (status, body) = self
            .call(
                Method::PUT,
                &format!("/catalog/products/{id}"),
                Some(&input),
            )
            .await?;
        Self::product(status, body)
    }

    async fn delete_product(&self, id: i64) -> Result<()> {
        let (status, body) = self
            .call(Method::DELETE, &format!("/catalog/products/{id}"), None)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Self::error(status, &body))
        }
    }

    async fn list_products(&self, query: ProductQuery) -> Result<ProductPage> {
        let mut path = format!("/catalog/products?limit={}", query.limit);
        if let Some(after) = query.after {
            path.push_str(&format!(
                "&after={}",
                URL_SAFE_NO_PAD.encode(format!("id:{after}"))
            ));
        }
        if let Some(q) = &query.name_contains {
            let encoded: String = q
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            path.push_str(&format!("&q={encoded}"));
        }
        let (status, body) = self.call(Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(Self::error(status, &body));
        }
        let page: Page = serde_json::from_value(body).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "the catalog answered an unexpected page: {e}"
            ))
        })?;
        let next_after = page
            .next
            .as_deref()
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.strip_prefix("id:").and_then(|id| id.parse().ok()));
        Ok(ProductPage {
            items: page.items,
            next_after,
        })
    }
}
