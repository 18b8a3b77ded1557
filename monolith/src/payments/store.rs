//! Storage of payment attempts in `payments_payments`.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{ChargeRequest, Payment};
use crate::db::{self, Db};
use crate::error::{Error, Result};

fn payment(row: &AnyRow) -> Result<Payment, sqlx::Error> {
    Ok(Payment {
        id: row.try_get("id")?,
        order_id: row.try_get("order_id")?,
        amount_cents: row.try_get("amount_cents")?,
        currency: row.try_get("currency")?,
        status: row.try_get("status")?,
        provider_ref: row.try_get("provider_ref")?,
    })
}

pub(super) async fn approved(db: &Db, order_id: i64) -> Result<Option<Payment>> {
    let row = sqlx::query(
        "SELECT id, order_id, amount_cents, currency, status, provider_ref FROM payments_payments \
         WHERE order_id = $1 AND status = 'approved' AND refunded_at IS NULL",
    )
    .bind(order_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.as_ref().map(payment).transpose()?)
}

pub(super) async fn record(
    db: &Db,
    request: &ChargeRequest,
    status: &str,
    provider_ref: Option<&str>,
    reason: Option<&str>,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO payments_payments (order_id, amount_cents, currency, status, provider_ref, decline_reason, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(request.order_id)
    .bind(request.amount_cents)
    .bind(&request.currency)
    .bind(status)
    .bind(provider_ref)
    .bind(reason)
    .bind(db::now())
    .fetch_one(db.pool())
    .await
    .map_err(|e| {
        if db::is_unique_violation(&e) {
            Error::Conflict(format!("order {} is already paid", request.order_id))
        } else {
            e.into()
        }
    })
}

/// Whether the order has a charge whose answer timed out and that is not voided yet.
pub(super) async fn has_timed_out(db: &Db, order_id: i64) -> Result<bool> {
    let found: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM payments_payments \
         WHERE order_id = $1 AND status = 'timed_out' AND voided_at IS NULL",
    )
    .bind(order_id)
    .fetch_one(db.pool())
    .await?;
    Ok(found > 0)
}

/// Stamps the order's payments with a compensation (`voided_at` for timed-out charges,
/// `refunded_at` for the approved one).
pub(super) async fn mark(db: &Db, order_id: i64, column: &str) -> Result<()> {
    let (column, status) = match column {
        "voided_at" => ("voided_at", "timed_out"),
        _ => ("refunded_at", "approved"),
    };
    sqlx::query(&format!(
        "UPDATE payments_payments SET {column} = $1 WHERE order_id = $2 AND status = $3 AND {column} IS NULL"
    ))
    .bind(db::now())
    .bind(order_id)
    .bind(status)
    .execute(db.pool())
    .await?;
    Ok(())
}
