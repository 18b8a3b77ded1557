//! Storage of orders (`orders_orders`, `orders_items`) and idempotency keys
//! (`orders_idempotency`).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Order, OrderItem};
use crate::db::{self, Db};
use crate::error::Result;

const ORDER_COLUMNS: &str =
    "id, customer_id, status, total_cents, currency, failure_reason, created_at, updated_at";

fn order(row: &AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        status: row.try_get("status")?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        failure_reason: row.try_get("failure_reason")?,
        items: Vec::new(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Records a pending order and its items in one transaction.
pub(super) async fn insert_pending(
    db: &Db,
    customer_id: i64,
    currency: &str,
    total_cents: i64,
    items: &[OrderItem],
) -> Result<Order> {
    let now = db::now();
    let mut tx = db.pool().begin().await?;
    let sql = format!(
        "INSERT INTO orders_orders (customer_id, status, total_cents, currency, created_at, updated_at) \
         VALUES ($1, 'pending', $2, $3, $4, $4) RETURNING {ORDER_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(customer_id)
        .bind(total_cents)
        .bind(currency)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
    let mut created = order(&row)?;
    let mut insert =
        db.statement("INSERT INTO orders_items (order_id, product_id, quantity, unit_price_cents)");
    insert.values(items, |row, item| {
        row.bind(created.id)
            .bind(item.product_id)
            .bind(item.quantity)
            .bind(item.unit_price_cents);
    });
    insert.query()?.execute(&mut *tx).await?;
    tx.commit().await?;
    created.items = items.to_vec();
    Ok(created)
}

/// Moves a `pending` order to a final status and returns it without its items; `None` when the
/// order was not pending (settled already, or unknown), which leaves it alone.
pub(super) async fn finish(
    db: &Db,
    id: i64,
    status: &str,
    reason: Option<&str>,
) -> Result<Option<Order>> {
    let sql = format!(
        "UPDATE orders_orders SET status = $1, failure_reason = $2, updated_at = $3 \
         WHERE id = $4 AND status = 'pending' RETURNING {ORDER_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(status)
        .bind(reason)
        .bind(db::now())
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.as_ref().map(order).transpose()?)
}

async fn with_items(db: &Db, mut orders: Vec<Order>) -> Result<Vec<Order>> {
    if orders.is_empty() {
        return Ok(orders);
    }
    let mut select = db.statement(
        "SELECT order_id, product_id, quantity, unit_price_cents FROM orders_items WHERE order_id IN (",
    );
    select
        .bind_list(orders.iter().map(|o| o.id).collect::<Vec<_>>())
        .push(") ORDER BY order_id, product_id");
    let mut items: HashMap<i64, Vec<OrderItem>> = HashMap::new();
    for row in select.query()?.fetch_all(db.pool()).await? {
        items
            .entry(row.try_get("order_id")?)
            .or_default()
            .push(OrderItem {
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                unit_price_cents: row.try_get("unit_price_cents")?,
            });
    }
    for o in &mut orders {
        o.items = items.remove(&o.id).unwrap_or_default();
    }
    Ok(orders)
}

pub(super) async fn find(db: &Db, id: i64) -> Result<Option<Order>> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders_orders WHERE id = $1");
    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await? else {
        return Ok(None);
    };
    Ok(with_items(db, vec![order(&row)?]).await?.pop())
}

pub(super) async fn for_customer(db: &Db, customer_id: i64) -> Result<Vec<Order>> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders_orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 100"
    );
    let rows = sqlx::query(&sql)
        .bind(customer_id)
        .fetch_all(db.pool())
        .await?;
    let orders = rows.iter().map(order).collect::<Result<Vec<_>, _>>()?;
    with_items(db, orders).await
}

/// Ids of orders still pending that were placed more than `older_than` ago.
pub(super) async fn pending_before(db: &Db, older_than: Duration) -> Result<Vec<i64>> {
    let cutoff = db::timestamp(time::OffsetDateTime::now_utc() - older_than);
    Ok(sqlx::query_scalar(
        "SELECT id FROM orders_orders WHERE status = 'pending' AND created_at < $1 ORDER BY id",
    )
    .bind(cutoff)
    .fetch_all(db.pool())
    .await?)
}

/// What claiming an idempotency key found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// The key is new and now ours: process the request.
    New,
    /// The key's request finished: replay its response.
    Done { status: u16, body: String },
    /// The key's request is still being processed.
    InProgress,
    /// The key was used with a different request body.
    Mismatch,
}

pub(super) async fn claim(db: &Db, key: &str, request_hash: &str) -> Result<Claim> {
    let inserted = sqlx::query(
        "INSERT INTO orders_idempotency (idempotency_key, request_hash, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(request_hash)
    .bind(db::now())
    .execute(db.pool())
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let row = sqlx::query(
        "SELECT request_hash, response_status, response_body FROM orders_idempotency \
         WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_one(db.pool())
    .await?;
    let stored_hash: String = row.try_get("request_hash")?;
    if stored_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    let status: Option<i64> = row.try_get("response_status")?;
    let body: Option<String> = row.try_get("response_body")?;
    Ok(match (status, body) {
        (Some(status), Some(body)) => Claim::Done {
            status: u16::try_from(status).unwrap_or(500),
            body,
        },
        _ => Claim::InProgress,
    })
}

pub(super) async fn complete(db: &Db, key: &str, status: u16, body: &str) -> Result<()> {
    sqlx::query(
        "UPDATE orders_idempotency SET response_status = $1, response_body = $2 WHERE idempotency_key = $3",
    )
    .bind(i64::from(status))
    .bind(body)
    .bind(key)
    .execute(db.pool())
    .await?;
    Ok(())
}
