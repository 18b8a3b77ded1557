//! Storage of stock (`inventory_stock`) and reservations (`inventory_reservations`).

use indicatif::ProgressBar;
use rand::Rng;
use sqlx::Row;

use super::{Commit, Reservation, Stock, StockLine};
use crate::db::{self, Db};
use crate::error::Result;

async fn reserved(db: &Db, product_id: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM inventory_reservations \
         WHERE product_id = $1 AND status = 'held'",
    )
    .bind(product_id)
    .fetch_one(db.pool())
    .await?)
}

pub(super) async fn get(db: &Db, product_id: i64) -> Result<Option<Stock>> {
    let row = sqlx::query("SELECT quantity, updated_at FROM inventory_stock WHERE product_id = $1")
        .bind(product_id)
        .fetch_optional(db.pool())
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Stock {
        product_id,
        quantity: row.try_get("quantity")?,
        reserved: reserved(db, product_id).await?,
        updated_at: row.try_get("updated_at")?,
    }))
}

pub(super) async fn set(db: &Db, product_id: i64, quantity: i64) -> Result<Stock> {
    let row = sqlx::query(
        "INSERT INTO inventory_stock (product_id, quantity, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (product_id) DO UPDATE SET quantity = excluded.quantity, updated_at = excluded.updated_at \
         RETURNING quantity, updated_at",
    )
    .bind(product_id)
    .bind(quantity)
    .bind(db::now())
    .fetch_one(db.pool())
    .await?;
    Ok(Stock {
        product_id,
        quantity: row.try_get("quantity")?,
        reserved: reserved(db, product_id).await?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Records the reservation of every line; the stock-ledger trigger takes the units out of stock
/// as each row goes in, and the stock's `CHECK (quantity >= 0)` refuses an oversell. One
/// statement, so all lines or none. `lines` are sorted by product id (a fixed lock order).
pub(super) async fn reserve(
    db: &Db,
    order_id: i64,
    lines: &[StockLine],
    expires_at: Option<&str>,
) -> Result<Reservation> {
    let now = db::now();
    let mut insert = db.statement(
        "INSERT INTO inventory_reservations (order_id, product_id, quantity, status, created_at, expires_at)",
    );
    let expires_at = expires_at.map(str::to_owned);
    insert.values(lines, |row, line| {
        row.bind(order_id)
            .bind(line.product_id)
            .bind(line.quantity)
            .bind("held")
            .bind(now.clone())
            .bind(expires_at.clone());
    });
    // Relaxed commit: the order's durable settlement follows and flushes it (see `Db::relaxed_pool`).
    match insert.query()?.execute(db.relaxed_pool()).await {
        Ok(_) => Ok(Reservation::Reserved),
        Err(err) if is_shortage(&err) => shortage(db, lines).await,
        Err(err) => Err(err.into()),
    }
}

/// Whether the ledger refused a reservation: not enough stock, or no stock row at all.
fn is_shortage(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(e) => {
            e.kind() == sqlx::error::ErrorKind::CheckViolation
                || e.message().contains("inventory: no stock row")
        }
        _ => false,
    }
}

/// Names the first line the stock cannot meet (read after the refusal, for the message).
async fn shortage(db: &Db, lines: &[StockLine]) -> Result<Reservation> {
    let mut first = None;
    for line in lines {
        let available: i64 =
            sqlx::query_scalar("SELECT quantity FROM inventory_stock WHERE product_id = $1")
                .bind(line.product_id)
                .fetch_optional(db.pool())
                .await?
                .unwrap_or(0);
        let short = Reservation::Insufficient {
            product_id: line.product_id,
            requested: line.quantity,
            available,
        };
        if available < line.quantity {
            return Ok(short);
        }
        first.get_or_insert(short);
    }
    // Stock came back meanwhile: report the first line as it is now.
    Ok(first.unwrap_or(Reservation::Insufficient {
        product_id: 0,
        requested: 0,
        available: 0,
    }))
}

/// Whether the order holds (or held) a reservation that is not released.
pub(super) async fn held_by(db: &Db, order_id: i64) -> Result<bool> {
    let found: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM inventory_reservations \
         WHERE order_id = $1 AND status IN ('held', 'committed')",
    )
    .bind(order_id)
    .fetch_one(db.pool())
    .await?;
    Ok(found > 0)
}

/// Makes the held lines final; [`Commit::Expired`] when nothing is held or committed (expired
/// and released, or never reserved).
pub(super) async fn commit(db: &Db, order_id: i64) -> Result<Commit> {
    let mut tx = guarded(db).await?;
    sqlx::query(
        "UPDATE inventory_reservations SET status = 'committed' \
         WHERE order_id = $1 AND status = 'held'",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .await?;
    let committed: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM inventory_reservations \
         WHERE order_id = $1 AND status = 'committed'",
    )
    .bind(order_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(if committed > 0 {
        Commit::Committed
    } else {
        Commit::Expired
    })
}

/// A (relaxed) write transaction of the reservations, refused at once when the data sync's
/// write guard keeps them from this database: a commit or release that matches no row here
/// fires no guard trigger, and would otherwise report success for rows the service holds.
async fn guarded(db: &Db) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
    let mut tx = db.begin_relaxed_write().await?;
    if let Some(guard) =
        strangler_sync::guard::check(&mut tx, db.backend(), "inventory_reservations").await?
    {
        return Err(crate::error::Error::Elsewhere(guard));
    }
    Ok(tx)
}

/// Orders holding a reservation whose expiry is before `now` (at most 500).
pub(super) async fn expired(db: &Db, now: &str) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT order_id FROM inventory_reservations \
         WHERE status = 'held' AND expires_at < $1 ORDER BY order_id LIMIT 500",
    )
    .bind(now.to_owned())
    .fetch_all(db.pool())
    .await?)
}

/// Marks the held lines released; the stock-ledger trigger returns their units to stock. Lines
/// already released or committed are left alone, so a repeated release changes nothing.
pub(super) async fn release(db: &Db, order_id: i64) -> Result<()> {
    let mut tx = guarded(db).await?;
    sqlx::query(
        "UPDATE inventory_reservations SET status = 'released' WHERE order_id = $1 AND status = 'held'",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Gives each product a random stock of 10 to 500 units, in batches inside one transaction.
pub async fn seed_stock(
    db: &Db,
    product_ids: &[i64],
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    const BATCH: usize = 5000;
    let now = db::now();
    let mut rng = rand::thread_rng();
    let mut tx = db.pool().begin().await?;
    for chunk in product_ids.chunks(BATCH) {
        let mut insert =
            db.statement("INSERT INTO inventory_stock (product_id, quantity, updated_at)");
        insert.values(chunk, |row, id| {
            row.bind(*id)
                .bind(rng.gen_range(10..=500_i64))
                .bind(now.clone());
        });
        insert.push(
            " ON CONFLICT (product_id) DO UPDATE SET quantity = excluded.quantity, updated_at = excluded.updated_at",
        );
        insert.query()?.execute(&mut *tx).await?;
        progress.inc(chunk.len() as u64);
    }
    tx.commit().await?;
    Ok(())
}
