//! The transactional outbox: a message is staged in the sender's database transaction, with the
//! state change it announces, and [`Outbox::relay`] publishes it once that has committed.
//!
//! The table (each database names its own, e.g. `orders_outbox`):
//!
//! ```sql
//! CREATE TABLE orders_outbox (
//!     seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- BIGSERIAL on PostgreSQL
//!     message_id TEXT NOT NULL UNIQUE, subject TEXT NOT NULL, payload TEXT NOT NULL,
//!     created_at TEXT NOT NULL);
//! ```
//!
//! The relay publishes staged messages in `seq` order and deletes them once the transport has
//! stored them. A relay that dies between the two publishes them again: at least once, and the
//! receiver's inbox drops the copy. It wakes when a sender in this process calls
//! [`Outbox::wake`] after committing, and polls for what other processes staged.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use sqlkit::Db;
use sqlx::Row as _;
use tokio::sync::Notify;

use crate::transport::{Message, Transport};

/// Most messages one relay pass publishes.
const BATCH: i64 = 256;

/// A database's outbox table.
#[derive(Debug, Clone)]
pub struct Outbox {
    table: &'static str,
    wake: Arc<Notify>,
}

/// What a relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Messages published and removed from the table.
    pub published: usize,
}

impl Outbox {
    /// The outbox stored in `table`.
    pub fn new(table: &'static str) -> Outbox {
        Outbox {
            table,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Stages `message` inside `tx`: it is published if and only if `tx` commits.
    pub async fn stage(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        message: &Message,
    ) -> Result<(), sqlx::Error> {
        let payload = std::str::from_utf8(&message.payload)
            .map_err(|e| sqlx::Error::Protocol(format!("an outbox payload is not UTF-8: {e}")))?;
        sqlx::query(&format!(
            "INSERT INTO {} (message_id, subject, payload, created_at) VALUES ($1, $2, $3, $4)",
            self.table
        ))
        .bind(&message.id)
        .bind(&message.subject)
        .bind(payload)
        .bind(sqlkit::now())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Tells this process's relay that something was committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// How many messages wait to be published.
    pub async fn backlog(&self, db: &Db) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM {}",
            self.table
        ))
        .fetch_one(db.pool())
        .await
    }

    /// One pass: publishes the oldest staged messages and removes them.
    pub async fn relay_once(&self, db: &Db, transport: &dyn Transport) -> anyhow::Result<Relayed> {
        let rows = sqlx::query(&format!(
            "SELECT seq, message_id, subject, payload FROM {} ORDER BY seq LIMIT {BATCH}",
            self.table
        ))
        .fetch_all(db.pool())
        .await?;
        if rows.is_empty() {
            return Ok(Relayed::default());
        }
        let mut messages = Vec::with_capacity(rows.len());
        let mut published = Vec::with_capacity(rows.len());
        for row in &rows {
            published.push(row.try_get::<i64, _>("seq")?);
            let payload: String = row.try_get("payload")?;
            messages.push(Message {
                id: row.try_get("message_id")?,
                subject: row.try_get("subject")?,
                payload: payload.into(),
            });
        }
        // A span per batch (none for an idle poll).
        let span = tracing::info_span!(
            "outbox relay batch",
            otel.kind = "producer",
            messaging.batch.message_count = messages.len(),
            strangler.outbox = self.table,
        );
        async {
            transport
                .publish(&messages)
                .await
                .map_err(|e| anyhow::anyhow!("cannot publish to {}: {e}", transport.describe()))?;
            // By the exact sequence numbers: on PostgreSQL a lower one may commit after a
            // higher one was read, and must not be deleted unpublished.
            let mut delete = db.statement(format!("DELETE FROM {} WHERE seq IN (", self.table));
            delete.bind_list(published.iter().copied());
            delete.push(")");
            // Relaxed: a delete lost in a database crash publishes its messages again, which
            // the receivers' inboxes drop.
            delete.query()?.execute(db.relaxed_pool()).await?;
            Ok(Relayed {
                published: messages.len(),
            })
        }
        .instrument(span)
        .await
    }

    /// Publishes staged messages until `stop` completes: at once when woken, else every
    /// `poll`; after a failure (the transport is down) it tries again with a growing pause, up
    /// to two seconds.
    pub async fn relay(
        self,
        db: Db,
        transport: Arc<dyn Transport>,
        poll: Duration,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        let mut failures = 0_u32;
        loop {
            let woken = self.wake.notified();
            let pause = match self.relay_once(&db, transport.as_ref()).await {
                Ok(relayed) if relayed.published as i64 == BATCH => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    poll
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!(error = %err, failures, "the outbox relay cannot publish; trying again");
                    }
                    Duration::from_millis(25 << failures.min(6)).min(Duration::from_secs(2))
                }
            };
            tokio::select! {
                () = &mut stop => return,
                () = woken, if failures == 0 => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
