//! Storage of products in `catalog_products`.

use indicatif::ProgressBar;
use rand::Rng;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Product, ProductInput, ProductPage, ProductQuery};
use crate::db::{self, Db};
use crate::error::{Error, Result};

const COLUMNS: &str = "id, sku, name, description, price_cents, currency, created_at, updated_at";

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price_cents: row.try_get("price_cents")?,
        currency: row.try_get("currency")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn sku_conflict(sku: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        if db::is_unique_violation(&e) {
            Error::Conflict(format!("a product with sku {sku} already exists"))
        } else {
            e.into()
        }
    }
}

#[tracing::instrument(
    name = "INSERT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "INSERT")
)]
pub(super) async fn insert(db: &Db, input: &ProductInput) -> Result<Product> {
    let now = db::now();
    let sql = format!(
        "INSERT INTO catalog_products (sku, name, description, price_cents, currency, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(&input.sku)
        .bind(&input.name)
        .bind(&input.description)
        .bind(input.price_cents)
        .bind(&input.currency)
        .bind(&now)
        .fetch_one(db.pool())
        .await
        .map_err(sku_conflict(&input.sku))?;
    Ok(product(&row)?)
}

#[tracing::instrument(
    name = "SELECT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "SELECT")
)]
pub(super) async fn find(db: &Db, id: i64) -> Result<Option<Product>> {
    let sql = format!("SELECT {COLUMNS} FROM catalog_products WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await?;
    Ok(row.as_ref().map(product).transpose()?)
}

#[tracing::instrument(
    name = "SELECT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "SELECT")
)]
pub(super) async fn find_many(db: &Db, ids: &[i64]) -> Result<Vec<Product>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = db.statement(format!(
        "SELECT {COLUMNS} FROM catalog_products WHERE id IN ("
    ));
    select.bind_list(ids.to_vec()).push(") ORDER BY id");
    let rows = select.query()?.fetch_all(db.pool()).await?;
    Ok(rows.iter().map(product).collect::<Result<_, _>>()?)
}

#[tracing::instrument(
    name = "UPDATE products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "UPDATE")
)]
pub(super) async fn update(db: &Db, id: i64, input: &ProductInput) -> Result<Option<Product>> {
    let sql = format!(
        "UPDATE catalog_products SET sku = $1, name = $2, description = $3, price_cents = $4, \
         currency = $5, updated_at = $6 WHERE id = $7 RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(&input.sku)
        .bind(&input.name)
        .bind(&input.description)
        .bind(input.price_cents)
        .bind(&input.currency)
        .bind(db::now())
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .map_err(sku_conflict(&input.sku))?;
    Ok(row.as_ref().map(product).transpose()?)
}

#[tracing::instrument(
    name = "DELETE products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "DELETE")
)]
pub(super) async fn delete(db: &Db, id: i64) -> Result<bool> {
    let done = sqlx::query("DELETE FROM catalog_products WHERE id = $1")
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}

#[tracing::instrument(
    name = "SELECT products",
    skip_all,
    fields(otel.kind = "client", db.system.name = db.backend().system_name(), db.collection.name = "products", db.operation.name = "SELECT")
)]
pub(super) async fn list(db: &Db, query: &ProductQuery) -> Result<ProductPage> {
    let mut select = db.statement(format!(
        "SELECT {COLUMNS} FROM catalog_products WHERE id > "
    ));
    select.bind(query.after.unwrap_or(0));
    if let Some(needle) = &query.name_contains {
        // lower() on both sides: PostgreSQL's LIKE is case-sensitive, SQLite's is not.
        select
            .push(" AND lower(name) LIKE ")
            .bind(like_pattern(needle))
            .push(" ESCAPE '\\'");
    }
    // One extra row tells whether there is a next page without a COUNT.
    select
        .push(" ORDER BY id LIMIT ")
        .bind(i64::from(query.limit) + 1);
    let rows = select.query()?.fetch_all(db.pool()).await?;
    let mut items = rows.iter().map(product).collect::<Result<Vec<_>, _>>()?;
    let next_after = if items.len() > query.limit as usize {
        items.truncate(query.limit as usize);
        items.last().map(|p| p.id)
    } else {
        None
    };
    Ok(ProductPage { items, next_after })
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

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Ergonomic",
    "Handmade",
    "Heavy-duty",
    "Light",
    "Modern",
    "Organic",
    "Portable",
    "Premium",
    "Rustic",
    "Smart",
    "Vintage",
    "Wireless",
];
const NOUNS: &[&str] = &[
    "Backpack",
    "Blender",
    "Bookshelf",
    "Candle",
    "Chair",
    "Coffee Mug",
    "Desk Lamp",
    "Headphones",
    "Kettle",
    "Notebook",
    "Pillow",
    "Rain Jacket",
    "Sneakers",
    "Teapot",
    "Toaster",
    "Water Bottle",
];

/// Inserts `count` generated products with realistic names and prices, in batches inside one
/// transaction, reporting progress. Skus continue after the products already present. Returns
/// the new products' ids.
pub async fn seed_products(
    db: &Db,
    count: u64,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<i64>> {
    // 7 parameters a row: 2,000 rows keep a batch under SQLite's 32,766-variable limit.
    const BATCH: u64 = 2000;
    let start: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM catalog_products")
        .fetch_one(db.pool())
        .await?;
    let now = db::now();
    let mut rng = rand::thread_rng();
    let mut ids = Vec::with_capacity(count as usize);
    let mut tx = db.pool().begin().await?;
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let mut insert = db.statement(
            "INSERT INTO catalog_products (sku, name, description, price_cents, currency, created_at, updated_at)",
        );
        insert.values(0..n, |row, i| {
            let k = start as u64 + done + i + 1;
            let adjective = ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())];
            let noun = NOUNS[rng.gen_range(0..NOUNS.len())];
            row.bind(format!("SKU-{k:08}"))
                .bind(format!("{adjective} {noun} {k}"))
                .bind(format!(
                    "{} {} {} for everyday use.",
                    if adjective.starts_with(['E', 'O']) {
                        "An"
                    } else {
                        "A"
                    },
                    adjective.to_lowercase(),
                    noun.to_lowercase()
                ))
                .bind(rng.gen_range(199..=49_999_i64))
                .bind("EUR")
                .bind(now.clone())
                .bind(now.clone());
        });
        insert.push(" RETURNING id");
        let rows = insert.query()?.fetch_all(&mut *tx).await?;
        for row in rows {
            ids.push(row.try_get::<i64, _>(0)?);
        }
        done += n;
        progress.inc(n);
    }
    tx.commit().await?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::like_pattern("Mug"), "%mug%");
        assert_eq!(super::like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
