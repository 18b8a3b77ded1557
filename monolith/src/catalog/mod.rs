//! Catalog: the products the shop sells.
//!
//! Owns the `catalog_*` tables. Other modules (inventory, orders) read products only through
//! [`CatalogApi`]; that trait is the seam a later carve-out backs with an HTTP client of the
//! extracted catalog service, so it stays async and free of database types.

mod client;
mod http;
mod store;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::{Error, Result};

pub use client::HttpCatalog;
pub use http::{router, ProductList};
pub use store::seed_products;

/// The highest price a product may have, in cents (ten billion units of its currency). The
/// extracted catalog service accepts the same domain (it stores mills, ten per cent), so every
/// price the monolith takes can be synced to it.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;

/// A product for sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    /// Product id.
    pub id: i64,
    /// Stock keeping unit, unique across products.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Free text description.
    pub description: String,
    /// Price in the currency's minor unit (cents).
    pub price_cents: i64,
    /// ISO 4217 currency code, e.g. `EUR`.
    pub currency: String,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
    /// Last update time (RFC 3339, UTC).
    pub updated_at: String,
}

/// The body of `POST /catalog/products` and `PUT /catalog/products/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    /// Stock keeping unit; must be unique.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Free text description.
    #[serde(default)]
    pub description: String,
    /// Price in cents; not negative.
    pub price_cents: i64,
    /// ISO 4217 currency code (three upper-case letters).
    pub currency: String,
}

/// Which page of products to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductQuery {
    /// Page size.
    pub limit: u32,
    /// List products after this id (exclusive).
    pub after: Option<i64>,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
}

/// One page of products, in ascending id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPage {
    /// The products of this page.
    pub items: Vec<Product>,
    /// The id to continue after, when there are more products.
    pub next_after: Option<i64>,
}

/// The catalog module's facade.
#[async_trait]
pub trait CatalogApi: Send + Sync {
    /// Adds a product; a duplicate sku is a conflict.
    async fn create_product(&self, input: ProductInput) -> Result<Product>;
    /// The product with this id, if any.
    async fn product(&self, id: i64) -> Result<Option<Product>>;
    /// The products with these ids that exist, in ascending id order.
    async fn products(&self, ids: &[i64]) -> Result<Vec<Product>>;
    /// Replaces a product's fields.
    async fn update_product(&self, id: i64, input: ProductInput) -> Result<Product>;
    /// Removes a product.
    async fn delete_product(&self, id: i64) -> Result<()>;
    /// Lists products page by page.
    async fn list_products(&self, query: ProductQuery) -> Result<ProductPage>;
}

/// The in-process implementation of [`CatalogApi`].
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Db,
}

impl Catalog {
    /// The catalog stored in `db`.
    pub fn new(db: Db) -> Self {
        Catalog { db }
    }
}

#[async_trait]
impl CatalogApi for Catalog {
    async fn create_product(&self, input: ProductInput) -> Result<Product> {
        store::insert(&self.db, &validate(input)?).await
    }

    async fn product(&self, id: i64) -> Result<Option<Product>> {
        store::find(&self.db, id).await
    }

    async fn products(&self, ids: &[i64]) -> Result<Vec<Product>> {
        store::find_many(&self.db, ids).await
    }

    async fn update_product(&self, id: i64, input: ProductInput) -> Result<Product> {
        store::update(&self.db, id, &validate(input)?)
            .await?
            .ok_or_else(|| not_found(id))
    }

    async fn delete_product(&self, id: i64) -> Result<()> {
        if store::delete(&self.db, id).await? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    async fn list_products(&self, query: ProductQuery) -> Result<ProductPage> {
        store::list(&self.db, &query).await
    }
}

fn not_found(id: i64) -> Error {
    Error::NotFound(format!("product {id} does not exist"))
}

/// The most products one page may hold.
pub const MAX_PAGE: u32 = 100;

fn validate(input: ProductInput) -> Result<ProductInput> {
    let sku = input.sku.trim().to_owned();
    let name = input.name.trim().to_owned();
    if sku.is_empty() || sku.len() > 64 || sku.contains(char::is_whitespace) {
        return Err(Error::Unprocessable(
            "sku must be 1 to 64 characters without spaces".to_owned(),
        ));
    }
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::Unprocessable(
            "name must be 1 to 200 characters".to_owned(),
        ));
    }
    if input.description.chars().count() > 5000 {
        return Err(Error::Unprocessable(
            "description must be at most 5000 characters".to_owned(),
        ));
    }
    if input.price_cents < 0 {
        return Err(Error::Unprocessable(format!(
            "price_cents must not be negative (got {})",
            input.price_cents
        )));
    }
    if input.price_cents > MAX_PRICE_CENTS {
        return Err(Error::Unprocessable(format!(
            "price_cents must be at most {MAX_PRICE_CENTS} (got {})",
            input.price_cents
        )));
    }
    if input.currency.len() != 3 || !input.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::Unprocessable(format!(
            "currency must be an ISO 4217 code such as EUR (got {:?})",
            input.currency
        )));
    }
    Ok(ProductInput {
        sku,
        name,
        description: input.description,
        price_cents: input.price_cents,
        currency: input.currency,
    })
}
