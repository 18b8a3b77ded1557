//! Parked changes: a change the relay cannot apply (a value the target refuses, a transform that
//! does not fit its column) is parked with its key instead of stopping the whole stream.
//!
//! - The relay applies a batch in one go; if the target refuses it for its data, it applies the
//!   batch key by key (each in a savepoint) and parks each key that fails, with the error. The
//!   other keys, and the checkpoint, move on.
//! - A parked key stays parked: its later changes wait behind the parked one (the row keeps the
//!   latest change; images are whole rows, so the latest is the row's state), and the target
//!   keeps the key as it was before.
//! - Parked changes are in the target's `sync_parked` table: `strangler sync status` lists
//!   them with their errors, the relay's metrics count them, and verify names them beside the
//!   drift they cause.
//! - An operator retries them ([`crate::relay::Relay::retry_parked`], after fixing the data or
//!   the mapping) or skips a key ([`skip`]: its changes are dropped and the target keeps its
//!   row; verify shows the difference until a repair or a later change mends it).
//!
//! Only refusals of the data park a change. A lost connection or a timeout fails the batch as
//! before, to be retried whole.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Map, Value};
use sqlkit::Db;
use sqlx::Row;

/// A parked key of one stream: the change it waits on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parked {
    /// The stream (`catalog:forward`).
    pub stream: String,
    /// The source table.
    pub table: String,
    /// The source key, as a JSON array of the key columns' values.
    pub key: String,
    /// The sequence number of the change that was refused.
    pub first_seq: i64,
    /// The sequence number of the latest change of the key (waiting behind the first).
    pub seq: i64,
    /// Why the target refused it (from the latest attempt).
    pub error: String,
    /// When it was parked (RFC 3339).
    pub parked_at: String,
    /// Attempts made to apply it, the first included.
    pub attempts: i64,
}

/// A parked change as the relay stores and applies it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) seq: i64,
    pub(crate) op: String,
    pub(crate) pk: Map<String, Value>,
    pub(crate) image: Option<Map<String, Value>>,
}

/// The parked keys of `stream`, as (source table, key).
pub(crate) async fn keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    db: &Db,
    stream: &str,
) -> anyhow::Result<HashSet<(String, String)>> {
    let mut select = db.statement("SELECT tbl, pk_key FROM sync_parked WHERE stream = ");
    select.bind(stream.to_owned());
    let rows = select.query()?.fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("tbl")?, row.try_get("pk_key")?)))
        .collect()
}

/// Parks `change` under its key, or (the key is parked already) makes it the change that waits
/// there, keeping the first refusal's sequence number.
pub(crate) async fn park(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    db: &Db,
    stream: &str,
    change: &Held,
    error: &str,
) -> anyhow::Result<()> {
    let text = |map: &Map<String, Value>| Value::Object(map.clone()).to_string();
    let mut upsert = db.statement(
        "INSERT INTO sync_parked (stream, tbl, pk_key, first_seq, seq, op, pk, image, error, parked_at, attempts) VALUES (",
    );
    upsert
        .bind(stream.to_owned())
        .push(", ")
        .bind(change.table.clone())
        .push(", ")
        .bind(change.key.clone())
        .push(", ")
        .bind(change.seq)
        .push(", ")
        .bind(change.seq)
        .push(", ")
        .bind(change.op.clone())
        .push(", ")
        .bind(text(&change.pk))
        .push(", ")
        .bind(change.image.as_ref().map(text))
        .push(", ")
        .bind(error.to_owned())
        .push(", ")
        .bind(sqlkit::now())
        .push(
            ", 1) ON CONFLICT (stream, tbl, pk_key) DO UPDATE SET seq = excluded.seq, \
             op = excluded.op, pk = excluded.pk, image = excluded.image",
        );
    upsert.query()?.execute(&mut **tx).await?;
    Ok(())
}

/// The parked changes of `stream` (of one key when `only` is given), in order.
pub(crate) async fn held(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    db: &Db,
    stream: &str,
    only: Option<(&str, &str)>,
) -> anyhow::Result<Vec<Held>> {
    let mut select =
        db.statement("SELECT tbl, pk_key, seq, op, pk, image FROM sync_parked WHERE stream = ");
    select.bind(stream.to_owned());
    if let Some((table, key)) = only {
        select
            .push(" AND tbl = ")
            .bind(table.to_owned())
            .push(" AND pk_key = ")
            .bind(key.to_owned());
    }
    select.push(" ORDER BY first_seq");
    let rows = select.query()?.fetch_all(&mut **tx).await?;
    let object = |text: Option<String>| -> anyhow::Result<Option<Map<String, Value>>> {
        match text
            .map(|t| serde_json::from_str::<Value>(&t))
            .transpose()?
        {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => anyhow::bail!("a parked row holds {other}, not an object"),
        }
    };
    rows.iter()
        .map(|row| {
            Ok(Held {
                table: row.try_get("tbl")?,
                key: row.try_get("pk_key")?,
                seq: row.try_get("seq")?,
                op: row.try_get("op")?,
                pk: object(Some(row.try_get("pk")?))?.unwrap_or_default(),
                image: object(row.try_get("image")?)?,
            })
        })
        .collect()
}

/// Records a failed retry of a parked key.
pub(crate) async fn failed_again(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    db: &Db,
    stream: &str,
    change: &Held,
    error: &str,
) -> anyhow::Result<()> {
    let mut update = db.statement("UPDATE sync_parked SET error = ");
    update
        .bind(error.to_owned())
        .push(", attempts = attempts + 1 WHERE stream = ")
        .bind(stream.to_owned())
        .push(" AND tbl = ")
        .bind(change.table.clone())
        .push(" AND pk_key = ")
        .bind(change.key.clone());
    update.query()?.execute(&mut **tx).await?;
    Ok(())
}

/// Lets a parked key go (applied by a retry, or skipped).
pub(crate) async fn release(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    db: &Db,
    stream: &str,
    table: &str,
    key: &str,
) -> anyhow::Result<bool> {
    let mut delete = db.statement("DELETE FROM sync_parked WHERE stream = ");
    delete
        .bind(stream.to_owned())
        .push(" AND tbl = ")
        .bind(table.to_owned())
        .push(" AND pk_key = ")
        .bind(key.to_owned());
    Ok(delete.query()?.execute(executor).await?.rows_affected() > 0)
}

/// The parked changes in `target` (of one stream, or all), oldest first. A target no relay has
/// written to yet has none.
pub async fn list(target: &Db, stream: Option<&str>) -> anyhow::Result<Vec<Parked>> {
    let mut select = target.statement(
        "SELECT stream, tbl, pk_key, first_seq, seq, error, parked_at, attempts FROM sync_parked",
    );
    if let Some(stream) = stream {
        select.push(" WHERE stream = ").bind(stream.to_owned());
    }
    select.push(" ORDER BY stream, first_seq");
    let rows = match select.query()?.fetch_all(target.pool()).await {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(err)) if missing_table(err.as_ref()) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    rows.iter()
        .map(|row| {
            Ok(Parked {
                stream: row.try_get("stream")?,
                table: row.try_get("tbl")?,
                key: row.try_get("pk_key")?,
                first_seq: row.try_get("first_seq")?,
                seq: row.try_get("seq")?,
                error: row.try_get("error")?,
                parked_at: row.try_get("parked_at")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .collect()
}

/// The parked changes of a carve-out's streams (both directions).
pub async fn of_carveout(target: &Db, carveout: &str) -> anyhow::Result<Vec<Parked>> {
    let prefix = format!("{carveout}:");
    let mut all = list(target, None).await?;
    all.retain(|p| p.stream.starts_with(&prefix));
    Ok(all)
}

fn missing_table(err: &dyn sqlx::error::DatabaseError) -> bool {
    err.code().as_deref() == Some("42P01") || err.message().contains("no such table")
}

/// Drops a parked key's changes: the target keeps the row as it is. Returns whether the key was
/// parked. The skip is deliberate data loss on the target side, so the caller audits it.
pub async fn skip(target: &Db, stream: &str, table: &str, key: &str) -> anyhow::Result<bool> {
    crate::capture::ensure_target_tables(target).await?;
    // Under the relay's lock, so a batch in flight cannot park the key again behind the skip.
    let mut sync = crate::txn::SyncTx::begin(target, stream, "sync").await?;
    let skipped = release(&mut **sync.tx(), target, stream, table, key).await?;
    sync.commit().await?;
    Ok(skipped)
}
