//! Backfill: copies the rows that existed before capture began, in key-ordered chunks, while
//! capture and the relay keep running. It needs capture installed first, so no change between
//! copy and follow is lost.
//!
//! Each chunk is read in one source snapshot together with the change log's high-water mark W.
//! It is written under the lock a relay batch takes, minus the rows whose key appears in the
//! log after W: those rows changed after the chunk was read, and the relay applies (or has
//! applied) their newer image. So a stale copy never overwrites a newer change (the watermark
//! rule of DBLog). Progress is saved with every chunk in the target: a backfill that stops
//! resumes after its last chunk. A composite key is walked as a row value, `(a, b) > (?, ?)`.
//!
//! Between two PostgreSQL databases, a table with an integer key goes by `COPY`: each chunk is
//! copied out of the source already mapped (`COPY (SELECT ...) TO STDOUT`), the changed keys
//! dropped, and copied into the target, straight when its key range there is empty, through a
//! staging table and an upsert when not. The next chunk is read while the last one is written.

use std::collections::HashSet;

use futures::TryStreamExt as _;
use serde_json::Value;
use sqlkit::{is_unique_violation, Backend, Db};
use sqlx::Row;

use crate::capture::{ensure_target_tables, installed};
use crate::mapping::{Mapping, TableMap, Transform};
use crate::relay::{on_conflict, upsert_all};
use crate::schema::Kind;
use crate::txn::{SyncTx, ENSURE_CHECKPOINT, LOCK_CHECKPOINT_PG, MARK, UNMARK};
use crate::verify::read_value;

/// Saves a table's progress over a native PostgreSQL connection.
const SAVE_PROGRESS: &str =
    "INSERT INTO sync_backfill (stream, tbl, last_key, read_rows, skipped, done) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream, tbl) DO UPDATE SET \
     last_key = excluded.last_key, read_rows = excluded.read_rows, skipped = excluded.skipped, \
     done = excluded.done";

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
        ensure_target_tables(&target).await?;
        Ok(Backfill {
            stream: format!("{}:{direction}", mapping.carveout),
            source,
            target,
            mapping,
            chunk: 5000,
        })
    }

    /// Rows per chunk (default 5,000; each chunk is one target transaction).
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
            if self.by_copy(table) && !state.0.done && budget > 0 {
                state = self
                    .copy_table(table, state, &mut budget, &mut progress)
                    .await?;
            }
            while !state.0.done && budget > 0 {
                state = self.chunk(table, state).await?;
                budget -= 1;
                progress(&state.0);
            }
            out.push(state.0);
        }
        Ok(out)
    }

    /// The keys (as logged) of `table`'s changes after `watermark`.
    async fn changed_since(&self, table: &TableMap, watermark: i64) -> anyhow::Result<Vec<Value>> {
        let mut changed = self
            .source
            .statement("SELECT pk FROM sync_changes WHERE seq > ");
        changed
            .bind(watermark)
            .push(" AND tbl = ")
            .bind(table.source.clone());
        Ok(changed
            .query()?
            .fetch_all(self.source.pool())
            .await?
            .iter()
            .filter_map(|row| row.try_get::<String, _>("pk").ok())
            .filter_map(|pk| serde_json::from_str::<Value>(&pk).ok())
            .collect())
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
        let keys = table.key.len();
        let key_names: Vec<&str> = table.key.iter().map(|c| c.source.as_str()).collect();
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
        // After the last key read: a single value, or (for a composite key) a row value
        // compared column by column, as both databases order them.
        if let Some(last) = &last {
            let values = match (keys, last) {
                (1, value) => vec![value.clone()],
                (_, Value::Array(values)) if values.len() == keys => values.clone(),
                _ => anyhow::bail!(
                    "{}: the saved position {last} does not fit the key",
                    table.source
                ),
            };
            select.push(&format!(" WHERE ({}) > (", key_names.join(", ")));
            for (i, (c, v)) in table.key.iter().zip(&values).enumerate() {
                if i > 0 {
                    select.push(", ");
                }
                crate::relay::bind(&mut select, c.source_kind, v)
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
            select.push(")");
        }
        select
            .push(&format!(" ORDER BY {} LIMIT ", key_names.join(", ")))
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
        let new_last = rows
            .last()
            .map(|r| match keys {
                1 => r[0].clone(),
                _ => Value::from(r[..keys].to_vec()),
            })
            .or(last);

        let mut sync = SyncTx::begin(&self.target, &self.stream, "sync").await?;
        let tx = sync.tx();
        // Keys changed after the chunk was read: the relay owns them.
        let changed: HashSet<String> = self
            .changed_since(table, watermark)
            .await?
            .into_iter()
            .map(|pk| {
                let key: Vec<Value> = key_names
                    .iter()
                    .map(|k| pk.get(*k).cloned().unwrap_or(Value::Null))
                    .collect();
                Value::from(key).to_string()
            })
            .collect();
        let mut copy = Vec::with_capacity(rows.len());
        for row in &rows {
            if changed.contains(&Value::from(row[..keys].to_vec()).to_string()) {
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
        upsert_all(&self.target, tx, table, &copy).await?;
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
        save.query()?.execute(&mut **tx).await?;
        sync.commit().await?;
        Ok((progress, new_last))
    }
}

/// A chunk read from the source by `COPY ... TO STDOUT`: text-format rows, mapped already.
struct Copied {
    data: Vec<u8>,
    rows: u64,
    /// First and last mapped (target) key of the chunk.
    keys: Option<(i64, i64)>,
    watermark: i64,
}

/// The first field of a `COPY` text row: the mapped key.
fn copy_key(line: &[u8]) -> anyhow::Result<i64> {
    let field = line
        .split(|b| *b == b'\t' || *b == b'\n')
        .next()
        .unwrap_or(line);
    std::str::from_utf8(field)
        .ok()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a copied row has no integer key: {:?}",
                String::from_utf8_lossy(field)
            )
        })
}

impl Backfill {
    /// Whether `table` goes by `COPY`: both sides PostgreSQL, an integer key, the same kind of
    /// value on both sides of every column, and no division (whose precision check runs in the
    /// row-by-row path).
    fn by_copy(&self, table: &TableMap) -> bool {
        self.source.backend() == Backend::Postgres
            && self.target.backend() == Backend::Postgres
            && table.key.len() == 1
            && table.key[0].source_kind == Kind::Integer
            && table.all().all(|c| {
                c.source_kind == c.target_kind && !matches!(c.transform, Transform::Divide(_))
            })
    }

    /// Copies `table` with `COPY` out of the source and into the target, reading the next
    /// chunk while the last one is written.
    async fn copy_table(
        &self,
        table: &TableMap,
        (mut progress, last): (Progress, Option<Value>),
        budget: &mut usize,
        report: &mut impl FnMut(&Progress),
    ) -> anyhow::Result<(Progress, Option<Value>)> {
        let (Some(mut src), Some(mut dst)) = (
            self.source.pg_connection().await?,
            self.target.pg_connection().await?,
        ) else {
            anyhow::bail!("COPY needs PostgreSQL on both sides");
        };
        let key = &table.key[0];
        let factor = match key.transform {
            Transform::Multiply(n) => n,
            _ => 1,
        };
        let mut after = match &last {
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                anyhow::anyhow!("{}: saved key {v} is not an integer", table.source)
            })?),
            None => None,
        };
        let mut chunk = self.copy_read(&mut src, table, after).await?;
        loop {
            let done = chunk.rows < u64::try_from(self.chunk).unwrap_or(u64::MAX);
            *budget = budget.saturating_sub(1);
            // The saved position is a source key: the mapped one divided back.
            after = chunk.keys.map(|(_, last)| last / factor).or(after);
            let write = self.copy_write(&mut dst, table, &chunk, &mut progress, done, after);
            if done || *budget == 0 {
                write.await?;
                report(&progress);
                break;
            }
            let (written, next) = tokio::join!(write, self.copy_read(&mut src, table, after));
            written?;
            report(&progress);
            chunk = next?;
        }
        Ok((progress, after.map(Value::from)))
    }

    async fn copy_read(
        &self,
        src: &mut sqlx::PgConnection,
        table: &TableMap,
        after: Option<i64>,
    ) -> anyhow::Result<Copied> {
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *src)
            .await?;
        let watermark: i64 =
            sqlx::query_scalar("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM sync_changes")
                .fetch_one(&mut *src)
                .await?;
        let values: Vec<String> = table
            .all()
            .map(|c| match (c.transform, c.source_kind) {
                (Transform::Multiply(n), Kind::Integer) => {
                    format!("CAST({} AS BIGINT) * {n}", c.source)
                }
                (Transform::Multiply(n), _) => format!("{} * {n}", c.source),
                _ => c.source.clone(),
            })
            .collect();
        let key = &table.key[0].source;
        let filter = after.map_or(String::new(), |k| format!(" WHERE {key} > {k}"));
        let sql = format!(
            "COPY (SELECT {} FROM {}{filter} ORDER BY {key} LIMIT {}) TO STDOUT",
            values.join(", "),
            table.source,
            self.chunk
        );
        let mut data = Vec::new();
        {
            let mut out = src.copy_out_raw(&sql).await?;
            while let Some(bytes) = out.try_next().await? {
                data.extend_from_slice(&bytes);
            }
        }
        sqlx::raw_sql("COMMIT").execute(&mut *src).await?;
        let mut lines = data.split_inclusive(|b| *b == b'\n');
        let rows = lines.clone().count() as u64;
        let keys = match (
            lines.next(),
            data.split_inclusive(|b| *b == b'\n').next_back(),
        ) {
            (Some(first), Some(last)) => Some((copy_key(first)?, copy_key(last)?)),
            _ => None,
        };
        Ok(Copied {
            data,
            rows,
            keys,
            watermark,
        })
    }

    async fn copy_write(
        &self,
        dst: &mut sqlx::PgConnection,
        table: &TableMap,
        chunk: &Copied,
        progress: &mut Progress,
        done: bool,
        last: Option<i64>,
    ) -> anyhow::Result<()> {
        let key = &table.key[0];

        sqlx::raw_sql("BEGIN").execute(&mut *dst).await?;
        // The lock a relay batch takes, and the mark that keeps these writes from being
        // captured again.
        // (A native connection, for COPY: the statements of a SyncTx, spelt out.)
        sqlx::query(MARK).bind("sync").execute(&mut *dst).await?;
        sqlx::query(ENSURE_CHECKPOINT)
            .bind(&self.stream)
            .bind(sqlkit::now())
            .execute(&mut *dst)
            .await?;
        sqlx::query(LOCK_CHECKPOINT_PG)
            .bind(&self.stream)
            .execute(&mut *dst)
            .await?;
        // Keys changed after the chunk was read (mapped): the relay owns them. Read under the
        // lock, so every change the relay has applied is among them.
        let changed: HashSet<i64> = self
            .changed_since(table, chunk.watermark)
            .await?
            .into_iter()
            .filter_map(|pk| {
                pk.get(&key.source)
                    .and_then(|v| key.transform.apply(v).ok())
            })
            .filter_map(|v| v.as_i64())
            .collect();
        let mut body = Vec::with_capacity(chunk.data.len());
        let mut skipped = 0;
        for line in chunk.data.split_inclusive(|b| *b == b'\n') {
            if !changed.is_empty() && changed.contains(&copy_key(line)?) {
                skipped += 1;
            } else {
                body.extend_from_slice(line);
            }
        }
        if let (Some((first, last_key)), false) = (chunk.keys, body.is_empty()) {
            let columns: Vec<&str> = table.all().map(|c| c.target.as_str()).collect();
            let columns = columns.join(", ");
            // A key range the target has no row in takes the rows straight; otherwise (or when
            // a row appeared meanwhile) they go through a staging table and an upsert.
            let occupied: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {} BETWEEN $1 AND $2)",
                table.target, key.target
            ))
            .bind(first)
            .bind(last_key)
            .fetch_one(&mut *dst)
            .await?;
            let mut staged = occupied;
            if !occupied {
                sqlx::raw_sql("SAVEPOINT sync_copy")
                    .execute(&mut *dst)
                    .await?;
                let copied = copy_in(
                    dst,
                    &format!("COPY {} ({columns}) FROM STDIN", table.target),
                    &body,
                )
                .await;
                match copied {
                    Ok(()) => {
                        sqlx::raw_sql("RELEASE SAVEPOINT sync_copy")
                            .execute(&mut *dst)
                            .await?;
                    }
                    Err(e) if is_unique_violation(&e) => {
                        sqlx::raw_sql("ROLLBACK TO SAVEPOINT sync_copy")
                            .execute(&mut *dst)
                            .await?;
                        staged = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if staged {
                let stage = format!("sync_stage_{}", table.target);
                sqlx::raw_sql(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT {columns} FROM {} WITH NO DATA; \
                     TRUNCATE {stage}",
                    table.target
                ))
                .execute(&mut *dst)
                .await?;
                copy_in(dst, &format!("COPY {stage} ({columns}) FROM STDIN"), &body).await?;
                sqlx::raw_sql(&format!(
                    "INSERT INTO {} ({columns}) SELECT {columns} FROM {stage}{}",
                    table.target,
                    on_conflict(table)
                ))
                .execute(&mut *dst)
                .await?;
            }
        }
        sqlx::query(UNMARK).execute(&mut *dst).await?;
        progress.read += chunk.rows;
        progress.skipped += skipped;
        progress.done = done;
        sqlx::query(SAVE_PROGRESS)
            .bind(&self.stream)
            .bind(&table.source)
            .bind(last.map(|k| k.to_string()))
            .bind(i64::try_from(progress.read).unwrap_or(i64::MAX))
            .bind(i64::try_from(progress.skipped).unwrap_or(i64::MAX))
            .bind(i64::from(done))
            .execute(&mut *dst)
            .await?;
        sqlx::raw_sql("COMMIT").execute(&mut *dst).await?;
        Ok(())
    }
}

async fn copy_in(
    dst: &mut sqlx::PgConnection,
    statement: &str,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    let mut copy = dst.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(body).await {
        let _ = copy.abort(e.to_string()).await;
        return Err(e);
    }
    copy.finish().await.map(|_| ())
}
