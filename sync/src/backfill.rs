//! Backfill: copies the rows that existed before capture began, in key-ordered chunks, while
//! capture and the relay keep running. It needs capture installed first, so no change between
//! copy and follow is lost.
//!
//! Each chunk is read in one source snapshot together with the change log's high-water mark W.
//! It is written under the lock a relay batch takes, minus the rows whose key appears in the
//! log after W: those rows changed after the chunk was read, and the relay applies (or has
//! applied) their newer image. So a stale copy never overwrites a newer change (the watermark
//! rule of DBLog). Progress is saved with every chunk in the target: a backfill that stops
//! resumes after its last chunk.

use std::collections::HashSet;

use serde_json::Value;
use sqlkit::{Backend, Db};
use sqlx::Row;

use crate::capture::{ensure_target_tables, installed};
use crate::mapping::{Mapping, TableMap};
use crate::relay::{lock_checkpoint, upsert_rows};
use crate::verify::read_value;

/// How far a table's backfill got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The source table.
    pub table: String,
    /// Rows in the source when the backfill started on it.
    pub total: u64,
    /// Rows read so far.
    pub read: u64,
    /// Rows left to the relay because they changed after their chunk was read.
    pub skipped: u64,
    /// Whether the table is done.
    pub done: bool,
}

/// A backfill of one direction of a carve-out.
#[derive(Debug)]
pub struct Backfill {
    source: Db,
    target: Db,
    mapping: Mapping,
    stream: String,
    chunk: i64,
}

impl Backfill {
    /// A backfill from `source` to `target` (capture must be installed on `source`).
    pub async fn new(
        source: Db,
        target: Db,
        mapping: Mapping,
        direction: &str,
    ) -> anyhow::Result<Backfill> {
        anyhow::ensure!(
            installed(&source, &mapping).await?,
            "capture is not installed for {}: install it first, or changes made during the copy are lost",
            mapping.carveout
        );
        for table in &mapping.tables {
            anyhow::ensure!(
                table.key.len() == 1,
                "{}: the backfill copies in key order and needs a single-column key",
                table.source
            );
        }
        ensure_target_tables(&target).await?;
        Ok(Backfill {
            stream: format!("{}:{direction}", mapping.carveout),
            source,
            target,
            mapping,
            chunk: 1000,
        })
    }

    /// Rows per chunk.
    pub fn with_chunk(mut self, rows: i64) -> Self {
        self.chunk = rows.max(1);
        self
    }

    /// Copies every table (resuming where an earlier run stopped), calling `progress` after each
    /// chunk.
    pub async fn run(&self, progress: impl FnMut(&Progress)) -> anyhow::Result<Vec<Progress>> {
        self.run_chunks(usize::MAX, progress).await
    }

    /// [`Backfill::run`], stopping after `chunks` chunks (a later run resumes).
    pub async fn run_chunks(
        &self,
        chunks: usize,
        mut progress: impl FnMut(&Progress),
    ) -> anyhow::Result<Vec<Progress>> {
        let mut budget = chunks;
        let mut out = Vec::new();
        for table in &self.mapping.tables {
            let total: i64 = sqlx::query_scalar(&format!(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM {}",
                table.source
            ))
            .fetch_one(self.source.pool())
            .await?;
            let mut state = self.state(table, u64::try_from(total).unwrap_or(0)).await?;
            progress(&state.0);
            while !state.0.done && budget > 0 {
                state = self.chunk(table, state).await?;
                budget -= 1;
                progress(&state.0);
            }
            out.push(state.0);
        }
        Ok(out)
    }

    async fn state(
        &self,
        table: &TableMap,
        total: u64,
    ) -> anyhow::Result<(Progress, Option<Value>)> {
        let mut select = self.target.statement(
            "SELECT last_key, read_rows, skipped, done FROM sync_backfill WHERE stream = ",
        );
        select
            .bind(self.stream.clone())
            .push(" AND tbl = ")
            .bind(table.source.clone());
        let row = select.query()?.fetch_optional(self.target.pool()).await?;
        Ok(match row {
            None => (
                Progress {
                    table: table.source.clone(),
                    total,
                    read: 0,
                    skipped: 0,
                    done: false,
                },
                None,
            ),
            Some(row) => {
                let last: Option<String> = row.try_get("last_key")?;
                (
                    Progress {
                        table: table.source.clone(),
                        total,
                        read: u64::try_from(row.try_get::<i64, _>("read_rows")?).unwrap_or(0),
                        skipped: u64::try_from(row.try_get::<i64, _>("skipped")?).unwrap_or(0),
                        done: row.try_get::<i64, _>("done")? != 0,
                    },
                    last.map(|t| serde_json::from_str(&t)).transpose()?,
                )
            }
        })
    }

    async fn chunk(
        &self,
        table: &TableMap,
        (mut progress, last): (Progress, Option<Value>),
    ) -> anyhow::Result<(Progress, Option<Value>)> {
        let columns: Vec<_> = table.all().collect();
        let key = &table.key[0];
        // One source snapshot for the high-water mark and the chunk.
        let mut tx = self.source.pool().begin().await?;
        if self.source.backend() == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let watermark: i64 =
            sqlx::query_scalar("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM sync_changes")
                .fetch_one(&mut *tx)
                .await?;
        let names: Vec<&str> = columns.iter().map(|c| c.source.as_str()).collect();
        let mut select =
            self.source
                .statement(format!("SELECT {} FROM {}", names.join(", "), table.source));
        if let Some(last) = &last {
            select.push(&format!(" WHERE {} > ", key.source));
            crate::relay::bind(&mut select, key.source_kind, last)
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        select
            .push(&format!(" ORDER BY {} LIMIT ", key.source))
            .bind(self.chunk);
        let rows = select.query()?.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let rows: Vec<Vec<Value>> = rows
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| read_value(row, i, c.source_kind))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let done = rows.len() < usize::try_from(self.chunk).unwrap_or(usize::MAX);
        let new_last = rows.last().map(|r| r[0].clone()).or(last);

        let mut tx = self.target.pool().begin().await?;
        lock_checkpoint(&self.target, &mut tx, &self.stream).await?;
        // Keys changed after the chunk was read: the relay owns them.
        let mut changed = self
            .source
            .statement("SELECT pk FROM sync_changes WHERE seq > ");
        changed
            .bind(watermark)
            .push(" AND tbl = ")
            .bind(table.source.clone());
        let changed: HashSet<String> = changed
            .query()?
            .fetch_all(self.source.pool())
            .await?
            .iter()
            .filter_map(|row| row.try_get::<String, _>("pk").ok())
            .filter_map(|pk| serde_json::from_str::<Value>(&pk).ok())
            .filter_map(|pk| pk.get(&key.source).map(Value::to_string))
            .collect();
        let mut copy = Vec::with_capacity(rows.len());
        for row in &rows {
            if changed.contains(&row[0].to_string()) {
                progress.skipped += 1;
                continue;
            }
            let mapped: Vec<Value> = columns
                .iter()
                .zip(row)
                .map(|(c, v)| c.transform.apply(v))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", table.source))?;
            copy.push(mapped);
        }
        // SQLite takes at most 32,766 bound values a statement.
        let per_statement = (30_000 / columns.len().max(1)).max(1);
        for rows in copy.chunks(per_statement) {
            upsert_rows(&self.target, table, rows)
                .map_err(|e| anyhow::anyhow!("{}: {e}", table.source))?
                .query()?
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM sync_applying")
            .execute(&mut *tx)
            .await?;
        progress.read += rows.len() as u64;
        progress.done = done;
        let mut save = self.target.statement(
            "INSERT INTO sync_backfill (stream, tbl, last_key, read_rows, skipped, done) VALUES (",
        );
        save.bind(self.stream.clone())
            .push(", ")
            .bind(table.source.clone())
            .push(", ")
            .bind(new_last.as_ref().map(Value::to_string))
            .push(", ")
            .bind(i64::try_from(progress.read).unwrap_or(i64::MAX))
            .push(", ")
            .bind(i64::try_from(progress.skipped).unwrap_or(i64::MAX))
            .push(", ")
            .bind(i64::from(done))
            .push(
                ") ON CONFLICT (stream, tbl) DO UPDATE SET last_key = excluded.last_key, \
                 read_rows = excluded.read_rows, skipped = excluded.skipped, done = excluded.done",
            );
        save.query()?.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((progress, new_last))
    }
}
