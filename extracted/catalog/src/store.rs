//! Products in the service's own schema, presented in the monolith's JSON shape.

use serde::{Deserialize, Serialize};
use sqlkit::Db;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::problem::Problem;

/// A product, as the monolith's catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Product id.
    pub id: i64,
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Free text description.
    pub description: String,
    /// Price in cents.
    pub price_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Creation time (RFC 3339, UTC).
    pub created_at: String,
    /// Last update time (RFC 3339, UTC).
    pub updated_at: String,
}

/// The body of `POST /catalog/products` and `PUT /catalog/products/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// ISO 4217 currency code.
    pub currency: String,
}

/// The most products one page may hold.
pub const MAX_PAGE: u32 = 100;

/// The highest price a product may have, in cents: the monolith's bound, so the two sides
/// accept one domain and every row syncs both ways.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;

const COLUMNS: &str =
    "product_id, sku, title, summary, price_mills, price_currency, created_at, updated_at";

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    let mills: i64 = row.try_get("price_mills")?;
    Ok(Product {
        id: row.try_get("product_id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("title")?,
        description: row.try_get("summary")?,
        price_cents: mills / 10,
        currency: row.try_get("price_currency")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Checks and normalises an input (the monolith's rules and messages).
pub fn validate(input: ProductInput) -> Result<ProductInput, Problem> {
    let sku = input.sku.trim().to_owned();
    let name = input.name.trim().to_owned();
    if sku.is_empty() || sku.len() > 64 || sku.contains(char::is_whitespace) {
        return Err(Problem::unprocessable(
            "sku must be 1 to 64 characters without spaces",
        ));
    }
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Problem::unprocessable("name must be 1 to 200 characters"));
    }
    if input.description.chars().count() > 5000 {
        return Err(Problem::unprocessable(
            "description must be at most 5000 characters",
        ));
    }
    if input.price_cents < 0 {
        return Err(Problem::unprocessable(format!(
            "price_cents must not be negative (got {})",
            input.price_cents
        )));
    }
    if input.price_cents > MAX_PRICE_CENTS {
        return Err(Problem::unprocessable(format!(
            "price_cents must be at most {MAX_PRICE_CENTS} (got {})",
            input.price_cents
        )));
    }
    if input.currency.len() != 3 || !input.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Problem::unprocessable(format!(
            "currency must be an ISO 4217 code such as EUR (got {:?})",
            input.currency
        )));
    }
    Ok(ProductInput { sku, name, ..input })
}

fn sku_conflict(sku: &str, err: sqlx::Error) -> Problem {
    if sqlkit::is_unique_violation(&err) {
        Problem::conflict(format!("a product with sku {sku} already exists"))
    } else {
        err.into()
    }
}

/// Adds a product.
#[tracing::instrument(
    name = "INSERT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "INSERT")
)]
pub async fn insert(db: &Db, input: &ProductInput) -> Result<Product, Problem> {
    let now = sqlkit::now();
    let mut insert = db.statement(
        "INSERT INTO products (sku, title, summary, price_mills, price_currency, created_at, updated_at) VALUES (",
    );
    insert
        .bind(input.sku.clone())
        .push(", ")
        .bind(input.name.clone())
        .push(", ")
        .bind(input.description.clone())
        .push(", ")
        .bind(input.price_cents * 10)
        .push(", ")
        .bind(input.currency.clone())
        .push(", ")
        .bind(now.clone())
        .push(", ")
        .bind(now)
        .push(&format!(") RETURNING {COLUMNS}"));
    let row = insert
        .query()?
        .fetch_one(db.pool())
        .await
        .map_err(|e| sku_conflict(&input.sku, e))?;
    Ok(product(&row)?)
}

/// The product with this id.
#[tracing::instrument(
    name = "SELECT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "SELECT")
)]
pub async fn find(db: &Db, id: i64) -> Result<Option<Product>, Problem> {
    let mut select = db.statement(format!(
        "SELECT {COLUMNS} FROM products WHERE product_id = "
    ));
    select.bind(id);
    let row = select.query()?.fetch_optional(db.pool()).await?;
    Ok(row.as_ref().map(product).transpose()?)
}

/// Replaces a product's fields.
#[tracing::instrument(
    name = "UPDATE products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "UPDATE")
)]
pub async fn update(db: &Db, id: i64, input: &ProductInput) -> Result<Option<Product>, Problem> {
    let mut update = db.statement("UPDATE products SET sku = ");
    update
        .bind(input.sku.clone())
        .push(", title = ")
        .bind(input.name.clone())
        .push(", summary = ")
        .bind(input.description.clone())
        .push(", price_mills = ")
        .bind(input.price_cents * 10)
        .push(", price_currency = ")
        .bind(input.currency.clone())
        .push(", updated_at = ")
        .bind(sqlkit::now())
        .push(" WHERE product_id = ")
        .bind(id)
        .push(&format!(" RETURNING {COLUMNS}"));
    let row = update
        .query()?
        .fetch_optional(db.pool())
        .await
        .map_err(|e| sku_conflict(&input.sku, e))?;
    Ok(row.as_ref().map(product).transpose()?)
}

/// Removes a product; false when there was none.
#[tracing::instrument(
    name = "DELETE products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "DELETE")
)]
pub async fn delete(db: &Db, id: i64) -> Result<bool, Problem> {
    let mut delete = db.statement("DELETE FROM products WHERE product_id = ");
    delete.bind(id);
    Ok(delete.query()?.execute(db.pool()).await?.rows_affected() > 0)
}

/// One page of products after `after`, optionally those whose name contains `needle`
/// (case-insensitive); the second value is the id to continue after.
#[tracing::instrument(
    name = "SELECT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "SELECT")
)]
pub async fn list(
    db: &Db,
    limit: u32,
    after: i64,
    needle: Option<&str>,
) -> Result<(Vec<Product>, Option<i64>), Problem> {
    let mut select = db.statement(format!(
        "SELECT {} FROM products p",
        COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some(needle) = needle {
        select
            .push(" JOIN product_search s ON s.product_id = p.product_id AND s.folded LIKE ")
            .bind(like_pattern(needle))
            .push(" ESCAPE '\\'");
    }
    select
        .push(" WHERE p.product_id > ")
        .bind(after)
        .push(" ORDER BY p.product_id LIMIT ")
        .bind(i64::from(limit) + 1);
    let rows = select.query()?.fetch_all(db.pool()).await?;
    let mut items = rows.iter().map(product).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|p| p.id)
    } else {
        None
    };
    Ok((items, next))
}

/// `%needle%`, lower-cased, with LIKE's wildcards escaped.
fn like_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}
