//! The inbox: a receiver records each message id in the transaction that applies the message,
//! so a message delivered again (redelivery, a re-publication, a duplicate on purpose) finds
//! its id taken and changes nothing.
//!
//! The table (each database names its own, e.g. `inbox`):
//!
//! ```sql
//! CREATE TABLE inbox (message_id TEXT PRIMARY KEY, received_at TEXT NOT NULL);
//! ```

/// A database's inbox table.
#[derive(Debug, Clone, Copy)]
pub struct Inbox {
    table: &'static str,
}

impl Inbox {
    /// The inbox stored in `table`.
    pub const fn new(table: &'static str) -> Inbox {
        Inbox { table }
    }

    /// Records `message_id` inside `tx`: `true` the first time, `false` when it is already
    /// there (then the caller applies nothing and lets `tx` go).
    pub async fn first_delivery(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        message_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO {} (message_id, received_at) VALUES ($1, $2) ON CONFLICT (message_id) DO NOTHING",
            self.table
        ))
        .bind(message_id)
        .bind(sqlkit::now())
        .execute(&mut **tx)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }
}
