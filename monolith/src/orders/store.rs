//! Storage of orders (`orders_orders`, with their lines inline as a JSON snapshot) and
//! idempotency keys (`orders_idempotency`).

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Order, OrderItem};
use crate::db::{self, Db};
use crate::error::Result;

const ORDER_COLUMNS: &str =
    "id, customer_id, status, total_cents, currency, failure_reason, items, created_at, updated_at";

fn order(row: &AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        status: row.try_get("status")?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        failure_reason: row.try_get("failure_reason")?,
        items: serde_json::from_str(&row.try_get::<String, _>("items")?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A transaction of the orders' tables (and the outbox staged with them).
pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Records a pending order with its lines at the saga's first step (`reserving`), with the card
/// token it will charge, and links the request's idempotency key (if any) to it, inside `tx`:
/// a key is linked to an order exactly when the order exists.
pub(super) async fn insert_pending(
    tx: &mut Tx,
    customer_id: i64,
    currency: &str,
    total_cents: i64,
    items: &[OrderItem],
    card_token: &str,
    idempotency_key: Option<&str>,
) -> Result<Order> {
    let items = serde_json::to_string(items).map_err(anyhow::Error::from)?;
    let sql = format!(
        "INSERT INTO orders_orders (customer_id, status, total_cents, currency, items, created_at, updated_at, saga_step, card_token) \
         VALUES ($1, 'pending', $2, $3, $4, $5, $5, 'reserving', $6) RETURNING {ORDER_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(customer_id)
        .bind(total_cents)
        .bind(currency)
        .bind(items)
        .bind(db::now())
        .bind(card_token)
        .fetch_one(&mut **tx)
        .await?;
    let order = order(&row)?;
    if let Some(key) = idempotency_key {
        sqlx::query("UPDATE orders_idempotency SET order_id = $1 WHERE idempotency_key = $2")
            .bind(order.id)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(order)
}

/// A pending order as the saga needs it.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// Its step (`None`: an order placed before the saga recorded steps).
    pub(super) step: Option<String>,
    pub(super) total_cents: i64,
    pub(super) currency: String,
    pub(super) card_token: Option<String>,
}

/// The order if it is still pending.
pub(super) async fn pending(db: &Db, id: i64) -> Result<Option<Pending>> {
    let row = sqlx::query(
        "SELECT saga_step, total_cents, currency, card_token, items FROM orders_orders \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Pending {
        step: row.try_get("saga_step")?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        card_token: row.try_get("card_token")?,
    }))
}

/// Moves a pending order from step `from` to `to`; `false` when it is not at `from` (an event
/// repeated or overtaken), which changes nothing.
pub(super) async fn move_step(tx: &mut Tx, id: i64, from: &str, to: &str) -> Result<bool> {
    let moved = sqlx::query(
        "UPDATE orders_orders SET saga_step = $1, updated_at = $2 \
         WHERE id = $3 AND status = 'pending' AND saga_step = $4",
    )
    .bind(to)
    .bind(db::now())
    .bind(id)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// Moves a pending order at step `from` (`None`: at any step) to a final status and returns it;
/// `None` when it is not pending at that step, which leaves it alone.
pub(super) async fn settle(
    tx: &mut Tx,
    id: i64,
    from: Option<&str>,
    status: &str,
    reason: Option<&str>,
) -> Result<Option<Order>> {
    let sql = format!(
        "UPDATE orders_orders SET status = $1, failure_reason = $2, updated_at = $3, saga_step = NULL, card_token = NULL \
         WHERE id = $4 AND status = 'pending' AND ($5 = '' OR saga_step = $5) RETURNING {ORDER_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(status)
        .bind(reason)
        .bind(db::now())
        .bind(id)
        .bind(from.unwrap_or(""))
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.as_ref().map(order).transpose()?)
}

pub(super) async fn find(db: &Db, id: i64) -> Result<Option<Order>> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders_orders WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await?;
    Ok(row.as_ref().map(order).transpose()?)
}

pub(super) async fn for_customer(db: &Db, customer_id: i64) -> Result<Vec<Order>> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders_orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 100"
    );
    let rows = sqlx::query(&sql)
        .bind(customer_id)
        .fetch_all(db.pool())
        .await?;
    Ok(rows.iter().map(order).collect::<Result<Vec<_>, _>>()?)
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

/// Ends a key's request: a request that recorded no order (refused before any side effect)
/// frees its key for another attempt; one that did stores its response for replays.
pub(super) async fn complete(db: &Db, key: &str, status: u16, body: &str) -> Result<()> {
    let released = sqlx::query(
        "DELETE FROM orders_idempotency WHERE idempotency_key = $1 AND order_id IS NULL",
    )
    .bind(key)
    .execute(db.pool())
    .await?;
    if released.rows_affected() == 0 {
        sqlx::query(
            "UPDATE orders_idempotency SET response_status = $1, response_body = $2 WHERE idempotency_key = $3",
        )
        .bind(i64::from(status))
        .bind(body)
        .bind(key)
        .execute(db.pool())
        .await?;
    }
    Ok(())
}

/// Stores the response of the keys linked to `order_id` that have none yet (their request
/// answered 202, or ended with the process), inside `tx` (the one that settles the order).
pub(super) async fn complete_for_order(
    tx: &mut Tx,
    order_id: i64,
    status: u16,
    body: &str,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE orders_idempotency SET response_status = $1, response_body = $2 \
         WHERE order_id = $3 AND response_status IS NULL",
    )
    .bind(i64::from(status))
    .bind(body)
    .bind(order_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Frees keys claimed more than `older_than` ago whose request recorded no order and never
/// ended (the process died first): nothing happened under them, so they may be used again.
pub(super) async fn release_abandoned_keys(db: &Db, older_than: Duration) -> Result<u64> {
    let cutoff = db::timestamp(time::OffsetDateTime::now_utc() - older_than);
    let released = sqlx::query(
        "DELETE FROM orders_idempotency \
         WHERE order_id IS NULL AND response_status IS NULL AND created_at < $1",
    )
    .bind(cutoff)
    .execute(db.pool())
    .await?;
    Ok(released.rows_affected())
}
