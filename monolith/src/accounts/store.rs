//! Storage of customers in `accounts_customers`.

use indicatif::ProgressBar;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Customer, NewCustomer};
use crate::db::{self, Db};
use crate::error::{Error, Result};

const COLUMNS: &str = "id, email, name, created_at";

fn customer(row: &AnyRow) -> Result<Customer, sqlx::Error> {
    Ok(Customer {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) async fn insert(db: &Db, new: &NewCustomer) -> Result<Customer> {
    let sql = format!(
        "INSERT INTO accounts_customers (email, name, created_at) VALUES ($1, $2, $3) \
         RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(&new.email)
        .bind(&new.name)
        .bind(db::now())
        .fetch_one(db.pool())
        .await
        .map_err(|e| {
            if db::is_unique_violation(&e) {
                Error::Conflict(format!(
                    "a customer with email {} already exists",
                    new.email
                ))
            } else {
                e.into()
            }
        })?;
    Ok(customer(&row)?)
}

pub(super) async fn find(db: &Db, id: i64) -> Result<Option<Customer>> {
    let sql = format!("SELECT {COLUMNS} FROM accounts_customers WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db.pool()).await?;
    Ok(row.as_ref().map(customer).transpose()?)
}

/// Inserts `count` generated customers (`customer-<n>@example.com`), in batches, reporting
/// each batch to `progress`. Emails continue after the customers already present.
pub async fn seed_customers(db: &Db, count: u64, progress: &ProgressBar) -> anyhow::Result<()> {
    const BATCH: u64 = 1000;
    let start: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM accounts_customers")
        .fetch_one(db.pool())
        .await?;
    let now = db::now();
    let mut tx = db.pool().begin().await?;
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let mut insert = db.statement("INSERT INTO accounts_customers (email, name, created_at)");
        insert.values(0..n, |row, i| {
            let k = start as u64 + done + i + 1;
            row.bind(format!("customer-{k}@example.com"))
                .bind(format!("Customer {k}"))
                .bind(now.clone());
        });
        insert.query()?.execute(&mut *tx).await?;
        done += n;
        progress.inc(n);
    }
    tx.commit().await?;
    Ok(())
}
