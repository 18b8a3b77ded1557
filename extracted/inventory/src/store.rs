//! Stock, reservations and the movement ledger. Every change of stock is one transaction that
//! moves `stock_levels.available`, records the reservation's state, and appends the movement;
//! taking stock is a conditional update (`available >= units`), so two orders can never both
//! take the last unit, and the `CHECK (available >= 0)` backs it.

use messaging::inventory::{Line, Reply};
use serde::Serialize;
use sqlkit::Db;
use sqlx::{Any, Row as _, Transaction};

/// Stock of one product, shaped as the monolith's `GET /inventory/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stock {
    /// The product.
    pub product_id: i64,
    /// Units available for sale.
    pub quantity: i64,
    /// Units held by orders being placed.
    pub reserved: i64,
    /// When the stock last changed; null if it was never set.
    pub updated_at: Option<String>,
}

/// The largest stock quantity accepted (as the monolith's).
pub const MAX_QUANTITY: i64 = 1_000_000_000;

type Tx = Transaction<'static, Any>;

async fn movement(
    tx: &mut Tx,
    product_id: i64,
    delta: i64,
    reason: &str,
    order_id: Option<i64>,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stock_movements (product_id, delta, reason, order_id, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(product_id)
    .bind(delta)
    .bind(reason)
    .bind(order_id)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The stock of a product, `None` when it has no stock record.
pub async fn stock(db: &Db, product_id: i64) -> Result<Option<Stock>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT available, updated_at, \
         (SELECT CAST(COALESCE(SUM(units), 0) AS BIGINT) FROM reservations \
           WHERE product_id = $1 AND state = 'held') AS reserved \
         FROM stock_levels WHERE product_id = $1",
    )
    .bind(product_id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Stock {
        product_id,
        quantity: row.try_get("available")?,
        reserved: row.try_get("reserved")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

/// Sets the units available (the ledger records the difference).
pub async fn set(tx: &mut Tx, product_id: i64, quantity: i64) -> Result<(), sqlx::Error> {
    let now = sqlkit::now();
    let before: Option<i64> =
        sqlx::query_scalar("SELECT available FROM stock_levels WHERE product_id = $1")
            .bind(product_id)
            .fetch_optional(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO stock_levels (product_id, available, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (product_id) DO UPDATE SET available = excluded.available, updated_at = excluded.updated_at",
    )
    .bind(product_id)
    .bind(quantity)
    .bind(&now)
    .execute(&mut **tx)
    .await?;
    movement(
        tx,
        product_id,
        quantity - before.unwrap_or(0),
        "set",
        None,
        &now,
    )
    .await
}

/// Holds every line for the order, all or nothing. Idempotent: an order that holds (or held)
/// its reservation gets the same answer again, and an order already released holds nothing.
/// On [`Reply::Insufficient`] the caller rolls `tx` back (some lines may have been taken).
pub async fn reserve(
    tx: &mut Tx,
    order_id: i64,
    lines: &[Line],
    expires_at: &str,
) -> Result<Reply, sqlx::Error> {
    let released: Option<i64> =
        sqlx::query_scalar("SELECT order_id FROM released_orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await?;
    if released.is_some() {
        return Ok(Reply::Released { order_id });
    }
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(&mut **tx)
            .await?;
    if let Some(state) = states.first() {
        return Ok(match state.as_str() {
            "released" => Reply::Released { order_id },
            _ => Reply::Reserved { order_id },
        });
    }
    let mut lines = lines.to_vec();
    lines.sort_by_key(|l| l.product_id);
    if lines.windows(2).any(|w| w[0].product_id == w[1].product_id)
        || lines.iter().any(|l| l.quantity <= 0)
        || lines.is_empty()
    {
        return Ok(Reply::Refused {
            order_id,
            reason: "each product once, with a positive quantity".to_owned(),
        });
    }
    let now = sqlkit::now();
    for line in &lines {
        let taken = sqlx::query(
            "UPDATE stock_levels SET available = available - $1, updated_at = $2 \
             WHERE product_id = $3 AND available >= $1",
        )
        .bind(line.quantity)
        .bind(&now)
        .bind(line.product_id)
        .execute(&mut **tx)
        .await?;
        if taken.rows_affected() == 0 {
            let available: Option<i64> =
                sqlx::query_scalar("SELECT available FROM stock_levels WHERE product_id = $1")
                    .bind(line.product_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            return Ok(Reply::Insufficient {
                order_id,
                product_id: line.product_id,
                requested: line.quantity,
                available: available.unwrap_or(0),
            });
        }
        sqlx::query(
            "INSERT INTO reservations (order_id, product_id, units, state, reserved_at, expires_at) \
             VALUES ($1, $2, $3, 'held', $4, $5)",
        )
        .bind(order_id)
        .bind(line.product_id)
        .bind(line.quantity)
        .bind(&now)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        movement(
            tx,
            line.product_id,
            -line.quantity,
            "reserve",
            Some(order_id),
            &now,
        )
        .await?;
    }
    Ok(Reply::Reserved { order_id })
}

/// Makes the order's held reservation final; [`Reply::Expired`] when there is none left to
/// commit (it expired, or was never made).
pub async fn commit(tx: &mut Tx, order_id: i64) -> Result<Reply, sqlx::Error> {
    sqlx::query(
        "UPDATE reservations SET state = 'committed' WHERE order_id = $1 AND state = 'held'",
    )
    .bind(order_id)
    .execute(&mut **tx)
    .await?;
    let committed: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM reservations WHERE order_id = $1 AND state = 'committed'",
    )
    .bind(order_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(if committed > 0 {
        Reply::Committed { order_id }
    } else {
        Reply::Expired { order_id }
    })
}

/// Puts the order's held units back (`reason`: `release` or `expire`) and remembers the order
/// as released, so a reserve arriving later holds nothing.
pub async fn release(tx: &mut Tx, order_id: i64, reason: &str) -> Result<Reply, sqlx::Error> {
    let now = sqlkit::now();
    let held = sqlx::query(
        "SELECT product_id, units FROM reservations WHERE order_id = $1 AND state = 'held' ORDER BY product_id",
    )
    .bind(order_id)
    .fetch_all(&mut **tx)
    .await?;
    for row in held {
        let product_id: i64 = row.try_get("product_id")?;
        let units: i64 = row.try_get("units")?;
        sqlx::query(
            "UPDATE reservations SET state = 'released' WHERE order_id = $1 AND product_id = $2",
        )
        .bind(order_id)
        .bind(product_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE stock_levels SET available = available + $1, updated_at = $2 WHERE product_id = $3",
        )
        .bind(units)
        .bind(&now)
        .bind(product_id)
        .execute(&mut **tx)
        .await?;
        movement(tx, product_id, units, reason, Some(order_id), &now).await?;
    }
    if reason == "release" {
        sqlx::query(
            "INSERT INTO released_orders (order_id, at) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(&now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(Reply::Released { order_id })
}

/// The orders holding reservations that expired before `now` (at most `limit`).
pub async fn expired(db: &Db, now: &str, limit: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT order_id FROM reservations WHERE state = 'held' AND expires_at < $1 \
         ORDER BY order_id LIMIT $2",
    )
    .bind(now.to_owned())
    .bind(limit)
    .fetch_all(db.pool())
    .await
}
