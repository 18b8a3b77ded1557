//! Verification: source and target compared on the mapped form of every row (the source row
//! put through the mapping, against the target row), with a report of every drifted key.
//! A verification that compared zero rows is not clean. Repair re-copies the drifted keys.
//!
//! A table with a single integer key is compared in chunks of its key range, the way VDiff and
//! pt-table-checksum do: each side gives a row count and a hash per chunk, both sides at once
//! and each in one snapshot (PostgreSQL computes them in the database over each row's text
//! form; elsewhere the rows are streamed and hashed here, never held). Only the chunks whose
//! count or hash differ are read row by row and compared value by value, so memory stays
//! bounded and a clean table costs one scan per side. A table with another key is compared
//! whole. A live comparison counts the keys whose change is in flight apart from drift;
//! [`settle`] compares those keys again once the relay has applied their changes. [`verify_changed`] compares only the keys changed since a log position: the
//! cut-over's re-verify under its write fence.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use futures::TryStreamExt as _;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlkit::{Backend, Db};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::mapping::{ColumnMap, Mapping, TableMap, Transform};
use crate::relay::{bind, delete, upsert};
use crate::schema::Kind;

/// The rows per chunk a chunked comparison aims for.
const CHUNK_ROWS: i128 = 4096;
/// At most this many differing chunks are read together.
const RANGE_CHUNKS: i64 = 16;
/// At most this many keys go into one statement of [`verify_changed`].
const KEYS_PER_STATEMENT: usize = 500;

/// How a key differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// In the source, not in the target.
    Missing,
    /// In the target, not in the source.
    Extra,
    /// In both, with different values.
    Different,
    /// In the source with a value the target cannot hold (a transform that overflows or would
    /// lose precision): no copy can mend it; the source's data or the mapping must change.
    Unmappable,
}

/// One drifted row.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// The target table.
    pub table: String,
    /// The row's key (target columns).
    pub key: Map<String, Value>,
    /// How it differs.
    pub kind: DriftKind,
    /// The source row, mapped to target columns.
    pub expected: Option<Map<String, Value>>,
    /// The target row.
    pub actual: Option<Map<String, Value>>,
    /// Why the source row cannot be mapped (for [`DriftKind::Unmappable`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The source row as read (source columns), for repair.
    #[serde(skip)]
    source_image: Option<Map<String, Value>>,
    /// The target key as source columns, for repair.
    #[serde(skip)]
    source_key: Map<String, Value>,
}

/// Per-table counts.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// Source table.
    pub source: String,
    /// Target table.
    pub target: String,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the target.
    pub target_rows: u64,
    /// Chunks compared by count and hash (0: the table was compared whole, or by key).
    pub chunks: u64,
    /// Chunks whose count or hash differed, read row by row.
    pub chunks_differing: u64,
    /// Drifted keys.
    pub drifted: u64,
}

impl TableReport {
    fn of(table: &TableMap) -> TableReport {
        TableReport {
            source: table.source.clone(),
            target: table.target.clone(),
            source_rows: 0,
            target_rows: 0,
            chunks: 0,
            chunks_differing: 0,
            drifted: 0,
        }
    }
}

/// A verification's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The carve-out.
    pub carveout: String,
    /// Rows compared (source rows).
    pub rows_compared: u64,
    /// Differences explained by changes in flight (not drift).
    pub in_flight: u64,
    /// The source change log's position the comparison covers: a change logged after it may
    /// not be reflected ([`verify_changed`] from here re-checks those keys). `None` when the
    /// source has no change log.
    pub covered_to: Option<i64>,
    /// Per table.
    pub tables: Vec<TableReport>,
    /// Every drifted key.
    pub drift: Vec<Drift>,
    /// Changes of this carve-out the target refused, parked by key: each explains the drift of
    /// its key until it is retried or skipped.
    pub parked: Vec<crate::parked::Parked>,
    /// The differences of keys in flight, for [`settle`].
    #[serde(skip)]
    pending: Vec<Drift>,
}

impl Report {
    /// Clean: rows were compared and none drifted.
    pub fn clean(&self) -> bool {
        self.rows_compared > 0 && self.drift.is_empty()
    }

    /// A readable summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for t in &self.tables {
            let _ = write!(
                out,
                "{} → {}: {} source rows, {} target rows, {} drifted",
                t.source, t.target, t.source_rows, t.target_rows, t.drifted
            );
            if t.chunks > 0 {
                let _ = write!(
                    out,
                    " ({} chunks, {} read row by row)",
                    t.chunks, t.chunks_differing
                );
            }
            out.push('\n');
        }
        let verdict = if self.clean() {
            "no drift".to_owned()
        } else if self.rows_compared == 0 {
            "nothing was compared: that is not a pass".to_owned()
        } else {
            format!("{} drifted row(s)", self.drift.len())
        };
        let _ = writeln!(
            out,
            "{}: {} rows compared, {verdict}",
            self.carveout, self.rows_compared
        );
        if self.in_flight > 0 {
            let _ = writeln!(
                out,
                "{} row(s) differ only by changes the relay has not applied yet (in flight, not drift)",
                self.in_flight
            );
        }
        for p in &self.parked {
            let _ = writeln!(
                out,
                "parked: {} {} key {} (change {}, parked {}): {} (strangler sync retry, or skip)",
                p.stream, p.table, p.key, p.first_seq, p.parked_at, p.error
            );
        }
        out
    }
}

pub(crate) fn read_value(row: &AnyRow, index: usize, kind: Kind) -> Result<Value, sqlx::Error> {
    Ok(match kind {
        Kind::Integer => row
            .try_get::<Option<i64>, _>(index)?
            .map_or(Value::Null, Value::from),
        Kind::Real => row
            .try_get::<Option<f64>, _>(index)?
            .map_or(Value::Null, Value::from),
        Kind::Bool => match row.try_get::<Option<bool>, _>(index) {
            Ok(v) => v.map_or(Value::Null, Value::from),
            Err(_) => row
                .try_get::<Option<i64>, _>(index)?
                .map_or(Value::Null, |i| Value::from(i != 0)),
        },
        Kind::Text => row
            .try_get::<Option<String>, _>(index)?
            .map_or(Value::Null, Value::from),
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn object(columns: &[&ColumnMap], values: &[Value], target: bool) -> Map<String, Value> {
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| {
            let name = if target { &c.target } else { &c.source };
            (name.clone(), v.clone())
        })
        .collect()
}

/// One side of the comparison: the source (read through the mapping) or the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

impl Side {
    fn table(self, table: &TableMap) -> &str {
        match self {
            Side::Source => &table.source,
            Side::Target => &table.target,
        }
    }

    fn column(self, c: &ColumnMap) -> (&str, Kind) {
        match self {
            Side::Source => (&c.source, c.source_kind),
            Side::Target => (&c.target, c.target_kind),
        }
    }

    /// The mapped (target) form of a row as read on this side.
    fn mapped(self, table: &TableMap, row: Vec<Value>) -> anyhow::Result<Vec<Value>> {
        match self {
            Side::Target => Ok(row),
            Side::Source => table
                .all()
                .zip(&row)
                .map(|(c, v)| c.transform.apply(v))
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", table.source)),
        }
    }
}

/// How a table is compared.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Whole: every row of both sides.
    Whole,
    /// In chunks of `width` target keys.
    Chunked { width: i64, hash: Hashing },
}

/// Where chunk hashes are computed: in the database when both sides are the same kind of
/// database and every column has the same kind of value on both sides, here otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hashing {
    /// PostgreSQL: per column `hash*extended` (seeded with its position), combined by XOR,
    /// summed per chunk.
    Postgres,
    /// SQLite: each chunk's rows as `quote()` text in key order, hashed here.
    Sqlite,
    /// Every row streamed and hashed here.
    Streamed,
}

/// What one side's snapshot gave for a table.
enum Scan {
    Rows(Vec<Vec<Value>>),
    /// Chunk → (rows, hash).
    Chunks(BTreeMap<i64, (u64, String)>),
}

fn chunk_key(table: &TableMap) -> Option<&ColumnMap> {
    match table.key.as_slice() {
        [key] if key.source_kind == Kind::Integer && key.target_kind == Kind::Integer => Some(key),
        _ => None,
    }
}

/// Chunk widths from the source key's span and row count (in target keys).
async fn plan(source: &Db, target: &Db, table: &TableMap) -> anyhow::Result<Plan> {
    let Some(key) = chunk_key(table) else {
        return Ok(Plan::Whole);
    };
    let row = sqlx::query(&format!(
        "SELECT CAST(MIN({k}) AS BIGINT), CAST(MAX({k}) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM {t}",
        k = key.source,
        t = table.source
    ))
    .fetch_one(source.pool())
    .await?;
    let (min, max, count): (Option<i64>, Option<i64>, i64) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let span = match (min, max) {
        (Some(min), Some(max)) => i128::from(max) - i128::from(min) + 1,
        _ => 1,
    };
    let width = (span * CHUNK_ROWS / i128::from(count.max(1))).max(1);
    let width = match key.transform {
        Transform::Identity => width,
        Transform::Multiply(n) => width * i128::from(n),
        Transform::Divide(n) => (width / i128::from(n)).max(1),
    };
    let same_kinds = table.all().all(|c| c.source_kind == c.target_kind);
    let hash = match (source.backend(), target.backend()) {
        (Backend::Postgres, Backend::Postgres) if same_kinds => Hashing::Postgres,
        (Backend::Sqlite, Backend::Sqlite) if same_kinds => Hashing::Sqlite,
        _ => Hashing::Streamed,
    };
    Ok(Plan::Chunked {
        width: i64::try_from(width).unwrap_or(i64::MAX),
        hash,
    })
}

/// The SQL for a column's mapped value (`CAST` spelt for `backend`); an integer that does not
/// divide maps to NULL (the callers tell it apart).
fn mapped_sql(side: Side, c: &ColumnMap, backend: Backend) -> String {
    let (name, kind) = side.column(c);
    let int = match backend {
        Backend::Postgres => "BIGINT",
        Backend::Sqlite => "INTEGER",
    };
    let real = match backend {
        Backend::Postgres => "DOUBLE PRECISION",
        Backend::Sqlite => "REAL",
    };
    match (side, c.transform, kind) {
        (Side::Target, ..) | (_, Transform::Identity, _) => name.to_owned(),
        // An integer whose product does not fit maps to NULL (the callers tell it apart), as
        // PostgreSQL would refuse the product and SQLite would turn it into a REAL.
        (_, Transform::Multiply(n), Kind::Integer) => {
            let bound = i64::MAX / n.max(1);
            format!(
                "(CASE WHEN CAST({name} AS {int}) BETWEEN -{bound} AND {bound} THEN CAST({name} AS {int}) * {n} END)"
            )
        }
        (_, Transform::Multiply(n), _) => format!("(CAST({name} AS {real}) * {n})"),
        (_, Transform::Divide(n), Kind::Integer) => format!(
            "(CASE WHEN CAST({name} AS {int}) % {n} = 0 THEN CAST({name} AS {int}) / {n} END)"
        ),
        (_, Transform::Divide(n), _) => format!("(CAST({name} AS {real}) / {n})"),
    }
}

/// The SQL of a column's hash on PostgreSQL, seeded with its position; NULL hashes as the
/// position itself.
fn pg_hash(side: Side, c: &ColumnMap, position: usize) -> String {
    let value = mapped_sql(side, c, Backend::Postgres);
    let hash = match side.column(c).1 {
        Kind::Integer => format!("hashint8extended(CAST({value} AS BIGINT), {position})"),
        Kind::Real => format!("hashfloat8extended(CAST({value} AS DOUBLE PRECISION), {position})"),
        Kind::Bool => format!(
            "hashint8extended(CASE WHEN {value} THEN 1 WHEN NOT {value} THEN 0 END, {position})"
        ),
        Kind::Text => format!("hashtextextended(CAST({value} AS TEXT), {position})"),
    };
    let (name, _) = side.column(c);
    match (side, c.transform, side.column(c).1) {
        // An integer that does not divide, or whose product does not fit, is not a value the
        // target can hold: it hashes as something no value hashes to, and the row comparison
        // reports it.
        (Side::Source, Transform::Divide(_) | Transform::Multiply(_), Kind::Integer) => format!(
            "COALESCE({hash}, CASE WHEN {name} IS NULL THEN {position} \
             ELSE hashtextextended('unmappable ' || CAST({name} AS TEXT), {position}) END)"
        ),
        _ => format!("COALESCE({hash}, {position})"),
    }
}

/// The SQL of a column's canonical text on SQLite (`quote()`: NULL, numbers and strings
/// spelt apart).
fn sqlite_text(side: Side, c: &ColumnMap) -> String {
    let value = mapped_sql(side, c, Backend::Sqlite);
    let (name, _) = side.column(c);
    match (side, c.transform, side.column(c).1) {
        (Side::Source, Transform::Divide(_) | Transform::Multiply(_), Kind::Integer) => format!(
            "CASE WHEN {name} IS NOT NULL AND {value} IS NULL \
             THEN 'unmappable ' || quote({name}) ELSE quote({value}) END"
        ),
        _ => format!("quote({value})"),
    }
}

/// The chunk of a row, as SQL.
fn chunk_sql(side: Side, table: &TableMap, width: i64, backend: Backend) -> String {
    let key = &table.key[0];
    let (name, _) = side.column(key);
    let int = match backend {
        Backend::Postgres => "BIGINT",
        Backend::Sqlite => "INTEGER",
    };
    match (side, key.transform) {
        (Side::Target, _) | (_, Transform::Identity) => format!("CAST({name} AS {int}) / {width}"),
        (_, Transform::Multiply(n)) => format!("CAST({name} AS {int}) * {n} / {width}"),
        (_, Transform::Divide(n)) => format!("CAST({name} AS {int}) / {n} / {width}"),
    }
}

/// A row's hash (the mapped values), equal for values [`same`] calls equal.
fn row_hash(values: &[Value]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for v in values {
        match v {
            Value::Null => 0u8.hash(&mut h),
            Value::Bool(b) => (1u8, b).hash(&mut h),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => (2u8, i).hash(&mut h),
                #[allow(clippy::cast_possible_truncation)]
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => {
                    (2u8, f as i64).hash(&mut h);
                }
                (None, Some(f)) => (3u8, f.to_bits()).hash(&mut h),
                (None, None) => (4u8, n.to_string()).hash(&mut h),
            },
            other => (5u8, other.to_string()).hash(&mut h),
        }
    }
    h.finish()
}

fn integer(v: &Value) -> Option<i64> {
    v.as_i64()
}

fn decode(row: &AnyRow, columns: &[(&str, Kind)]) -> Result<Vec<Value>, sqlx::Error> {
    columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| read_value(row, i, *kind))
        .collect()
}

fn select_columns(side: Side, table: &TableMap) -> (Vec<(&str, Kind)>, String) {
    let columns: Vec<(&str, Kind)> = table.all().map(|c| side.column(c)).collect();
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let sql = format!("SELECT {} FROM {}", names.join(", "), side.table(table));
    (columns, sql)
}

/// Reads every table of one side in one snapshot, with a log position read in the same
/// snapshot (the source's last change, or the target's checkpoint of `stream`).
async fn scan_side(
    db: &Db,
    mapping: &Mapping,
    plans: &[Plan],
    side: Side,
    stream: Option<&str>,
) -> anyhow::Result<(Vec<Scan>, Option<i64>)> {
    // The mark's table may not exist (capture not installed, no relay yet): no mark then.
    let mark_table = match side {
        Side::Source => "sync_changes",
        Side::Target => "sync_checkpoints",
    };
    let has_mark = (side == Side::Source || stream.is_some())
        && sqlx::query(&format!("SELECT 1 FROM {mark_table} LIMIT 1"))
            .fetch_optional(db.pool())
            .await
            .is_ok();
    let mut tx = db.pool().begin().await?;
    if db.backend() == Backend::Postgres {
        sqlx::raw_sql(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET LOCAL TIME ZONE 'UTC'; SET LOCAL extra_float_digits = 1",
        )
        .execute(&mut *tx)
        .await?;
    }
    let mut mark = None;
    if has_mark {
        let mut statement = match (side, stream) {
            (Side::Source, _) => db.statement("SELECT CAST(MAX(seq) AS BIGINT) FROM sync_changes"),
            (Side::Target, stream) => {
                let mut s = db.statement("SELECT seq FROM sync_checkpoints WHERE stream = ");
                s.bind(stream.unwrap_or_default().to_owned());
                s
            }
        };
        let row = statement.query()?.fetch_optional(&mut *tx).await?;
        mark = row.and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten());
    }
    let mut scans = Vec::with_capacity(plans.len());
    for (table, plan) in mapping.tables.iter().zip(plans) {
        let (columns, select) = select_columns(side, table);
        scans.push(match *plan {
            Plan::Whole => {
                let rows = sqlx::query(&select).fetch_all(&mut *tx).await?;
                Scan::Rows(
                    rows.iter()
                        .map(|r| decode(r, &columns))
                        .collect::<Result<_, _>>()?,
                )
            }
            Plan::Chunked {
                width,
                hash: hash @ (Hashing::Postgres | Hashing::Sqlite),
            } => {
                let backend = db.backend();
                let chunk = chunk_sql(side, table, width, backend);
                let sql = if hash == Hashing::Postgres {
                    let hashes: Vec<String> = table
                        .all()
                        .enumerate()
                        .map(|(i, c)| pg_hash(side, c, i + 1))
                        .collect();
                    format!(
                        "SELECT {chunk} AS chunk, CAST(COUNT(*) AS BIGINT) AS n, \
                         CAST(SUM({}) AS TEXT) AS h FROM {} GROUP BY 1",
                        hashes.join(" # "),
                        side.table(table)
                    )
                } else {
                    let texts: Vec<String> = table.all().map(|c| sqlite_text(side, c)).collect();
                    format!(
                        "SELECT {chunk} AS chunk, COUNT(*) AS n, \
                         group_concat({}, char(10) ORDER BY {}) AS h FROM {} GROUP BY 1",
                        texts.join(" || ',' || "),
                        side.column(&table.key[0]).0,
                        side.table(table)
                    )
                };
                let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
                let mut chunks = BTreeMap::new();
                for row in rows {
                    let n: i64 = row.try_get("n")?;
                    let h: String = row.try_get("h")?;
                    let h = match hash {
                        Hashing::Sqlite => xxhash_rust::xxh3::xxh3_64(h.as_bytes()).to_string(),
                        _ => h,
                    };
                    chunks.insert(
                        row.try_get::<i64, _>("chunk")?,
                        (u64::try_from(n).unwrap_or(0), h),
                    );
                }
                Scan::Chunks(chunks)
            }
            Plan::Chunked {
                width,
                hash: Hashing::Streamed,
            } => {
                let mut sums: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
                let mut rows = sqlx::query(&select).fetch(&mut *tx);
                while let Some(row) = rows.try_next().await? {
                    let mapped = side.mapped(table, decode(&row, &columns)?)?;
                    let Some(key) = integer(&mapped[0]) else {
                        anyhow::bail!("{}: a row has no integer key", side.table(table));
                    };
                    let entry = sums.entry(key / width).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.wrapping_add(row_hash(&mapped));
                }
                Scan::Chunks(
                    sums.into_iter()
                        .map(|(c, (n, h))| (c, (n, h.to_string())))
                        .collect(),
                )
            }
        });
    }
    tx.commit().await?;
    Ok((scans, mark))
}

/// The keys (target values) chunk `chunk` of `width` holds: integer division truncates, so
/// chunk 0 spans both sides of zero.
fn chunk_span(chunk: i64, width: i64) -> (i64, i64) {
    let start = chunk.saturating_mul(width);
    let far = start.saturating_add(width.saturating_sub(1).saturating_mul(chunk.signum()));
    match chunk.signum() {
        0 => (-(width - 1), width - 1),
        1 => (start, far),
        _ => (far, start),
    }
}

/// The rows of one side whose mapped key lies in `lo..=hi`, as read (source columns for the
/// source).
async fn rows_in_range(
    db: &Db,
    table: &TableMap,
    side: Side,
    (lo, hi): (i64, i64),
) -> anyhow::Result<Vec<Vec<Value>>> {
    let key = &table.key[0];
    // The side's own key range: a superset, filtered on the mapped key below.
    let (from, to) = match (side, key.transform) {
        (Side::Target, _) | (_, Transform::Identity) => (lo, hi),
        (_, Transform::Multiply(n)) => (lo.div_euclid(n), hi.div_euclid(n).saturating_add(1)),
        (_, Transform::Divide(n)) => (
            lo.saturating_sub(1).saturating_mul(n),
            hi.saturating_add(1).saturating_mul(n),
        ),
    };
    let (columns, select) = select_columns(side, table);
    let mut statement = db.statement(select);
    statement
        .push(&format!(" WHERE {} BETWEEN ", side.column(key).0))
        .bind(from)
        .push(" AND ")
        .bind(to);
    let rows = statement.query()?.fetch_all(db.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let row = decode(&row, &columns)?;
        let mapped_key = match side {
            Side::Target => integer(&row[0]),
            Side::Source => key.transform.apply(&row[0]).ok().as_ref().and_then(integer),
        };
        // A key the transform refuses stays in, to be reported by the comparison.
        if mapped_key.is_none_or(|k| (lo..=hi).contains(&k)) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Compares source rows (as read) with target rows; returns the drift and, apart, the
/// differences of keys with a change in flight.
fn compare_rows(
    table: &TableMap,
    source_rows: Vec<Vec<Value>>,
    target_rows: Vec<Vec<Value>>,
    in_flight: &HashSet<String>,
) -> anyhow::Result<(Vec<Drift>, Vec<Drift>)> {
    let all: Vec<&ColumnMap> = table.all().collect();
    let keys = table.key.len();
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::with_capacity(target_rows.len());
    for row in target_rows {
        by_key.insert(Value::from(row[..keys].to_vec()).to_string(), row);
    }
    let mut drift = Vec::new();
    for row in source_rows {
        let image = object(&all, &row, false);
        let source_key = object(&all[..keys], &row[..keys], false);
        let mapped = match Side::Source.mapped(table, row.clone()) {
            Ok(mapped) => mapped,
            Err(err) => {
                // Named by its mapped key when the key maps (so the target row is not also
                // reported as extra), by its source key otherwise.
                let mapped_key: Option<Vec<Value>> = all[..keys]
                    .iter()
                    .zip(&row[..keys])
                    .map(|(c, v)| c.transform.apply(v).ok())
                    .collect();
                let (key, actual) = match mapped_key {
                    Some(mapped_key) => {
                        let text = Value::from(mapped_key.clone()).to_string();
                        let actual = by_key.remove(&text).map(|a| object(&all, &a, true));
                        (object(&all[..keys], &mapped_key, true), actual)
                    }
                    None => (source_key.clone(), None),
                };
                drift.push(Drift {
                    table: table.target.clone(),
                    key,
                    kind: DriftKind::Unmappable,
                    expected: None,
                    actual,
                    reason: Some(format!("{err:#}")),
                    source_image: Some(image),
                    source_key,
                });
                continue;
            }
        };
        let key = Value::from(mapped[..keys].to_vec()).to_string();
        match by_key.remove(&key) {
            None => drift.push(Drift {
                table: table.target.clone(),
                key: object(&all[..keys], &mapped[..keys], true),
                kind: DriftKind::Missing,
                expected: Some(object(&all, &mapped, true)),
                actual: None,
                reason: None,
                source_image: Some(image),
                source_key,
            }),
            Some(actual) if !mapped.iter().zip(&actual).all(|(a, b)| same(a, b)) => {
                drift.push(Drift {
                    table: table.target.clone(),
                    key: object(&all[..keys], &mapped[..keys], true),
                    kind: DriftKind::Different,
                    expected: Some(object(&all, &mapped, true)),
                    actual: Some(object(&all, &actual, true)),
                    reason: None,
                    source_image: Some(image),
                    source_key,
                })
            }
            Some(_) => {}
        }
    }
    for (_, actual) in by_key {
        // The source key of an extra target row, through the inverse transforms.
        let source_key: Map<String, Value> = all[..keys]
            .iter()
            .zip(&actual[..keys])
            .map(|(c, v)| Ok((c.source.clone(), c.transform.inverse().apply(v)?)))
            .collect::<Result<_, String>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", table.target))?;
        drift.push(Drift {
            table: table.target.clone(),
            key: object(&all[..keys], &actual[..keys], true),
            kind: DriftKind::Extra,
            expected: None,
            actual: Some(object(&all, &actual, true)),
            reason: None,
            source_image: None,
            source_key,
        });
    }
    // Keys with a change in flight (logged, and applied on one side of the two snapshots but
    // not the other) are not drift: the relay settles them.
    let (flying, drift): (Vec<Drift>, Vec<Drift>) = drift
        .into_iter()
        .partition(|d| in_flight.contains(&flight_key(table, &d.key)));
    Ok((drift, flying))
}

/// How a key in flight is named: the source table and the target key values.
fn flight_key(table: &TableMap, target_key: &Map<String, Value>) -> String {
    let key: Vec<Value> = table
        .key
        .iter()
        .map(|c| target_key.get(&c.target).cloned().unwrap_or(Value::Null))
        .collect();
    format!("{}|{}", table.source, Value::from(key))
}

/// The keys logged in the source's change log after `since`, per mapped table (source key
/// values, in source key column order), and the position up to which the log was read
/// without a hole (a number missing below a visible one may still commit on PostgreSQL, so a
/// later read starts below it).
async fn changed_keys(
    source: &Db,
    mapping: &Mapping,
    since: i64,
) -> anyhow::Result<(Vec<Vec<Vec<Value>>>, i64)> {
    let mut keys: Vec<Vec<Vec<Value>>> = vec![Vec::new(); mapping.tables.len()];
    let mut seen = HashSet::new();
    let mut last = since;
    let mut select = source.statement("SELECT seq, tbl, pk FROM sync_changes WHERE seq > ");
    select.bind(since).push(" ORDER BY seq");
    let Ok(rows) = select.query()?.fetch_all(source.pool()).await else {
        // No change log: nothing was logged.
        return Ok((keys, last));
    };
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        if seq == last + 1 {
            last = seq;
        }
        let tbl: String = row.try_get("tbl")?;
        let pk: String = row.try_get("pk")?;
        let Some(index) = mapping.tables.iter().position(|t| t.source == tbl) else {
            continue;
        };
        let Value::Object(pk) = serde_json::from_str::<Value>(&pk)? else {
            anyhow::bail!("a change of {tbl} has a key that is not an object: {pk}");
        };
        let key: Vec<Value> = mapping.tables[index]
            .key
            .iter()
            .map(|c| pk.get(&c.source).cloned().unwrap_or(Value::Null))
            .collect();
        if seen.insert(format!("{tbl}|{}", Value::from(key.clone()))) {
            keys[index].push(key);
        }
    }
    Ok((keys, last))
}

/// Keys in flight: logged after a position, named as [`flight_key`] does. Topped up with
/// [`InFlight::refresh`], which reads only the part of the log it has not read whole yet.
struct InFlight {
    keys: HashSet<String>,
    read_to: i64,
}

impl InFlight {
    /// None yet; [`InFlight::refresh`] reads the changes after `since`.
    fn after(since: i64) -> InFlight {
        InFlight {
            keys: HashSet::new(),
            read_to: since,
        }
    }

    async fn since(source: &Db, mapping: &Mapping, since: i64) -> anyhow::Result<InFlight> {
        let mut in_flight = InFlight::after(since);
        in_flight.refresh(source, mapping).await?;
        Ok(in_flight)
    }

    /// Adds the keys logged since the last read.
    async fn refresh(&mut self, source: &Db, mapping: &Mapping) -> anyhow::Result<()> {
        let (changed, last) = changed_keys(source, mapping, self.read_to).await?;
        for (table, keys) in mapping.tables.iter().zip(changed) {
            for key in keys {
                let mapped: Option<Vec<Value>> = table
                    .key
                    .iter()
                    .zip(&key)
                    .map(|(c, v)| c.transform.apply(v).ok())
                    .collect();
                if let Some(mapped) = mapped {
                    self.keys
                        .insert(format!("{}|{}", table.source, Value::from(mapped)));
                }
            }
        }
        self.read_to = last;
        Ok(())
    }
}

/// Compares every mapped table, strictly: every difference is drift (use it when no change is
/// in flight, e.g. under a write fence with the relay drained).
pub async fn verify(source: &Db, target: &Db, mapping: &Mapping) -> anyhow::Result<Report> {
    verify_live(source, target, mapping, None).await
}

/// The outcome of the latest verify of a stream, kept with the stream's other state in its
/// target database, for `strangler status` and the control plane's guards to show.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LastVerify {
    /// When (RFC 3339).
    pub at: String,
    /// Rows were compared and none drifted.
    pub clean: bool,
    /// Source rows compared.
    pub rows_compared: i64,
    /// Drifted keys.
    pub drifted: i64,
    /// Parked keys at the time.
    pub parked: i64,
}

/// Remembers `report` as the latest verify of `stream` (in the target's sync tables).
pub async fn remember(target: &Db, stream: &str, report: &Report) -> Result<(), sqlx::Error> {
    crate::capture::ensure_target_tables(target).await?;
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut upsert = target.statement(
        "INSERT INTO sync_verifications (stream, at, clean, rows_compared, drifted, parked) VALUES (",
    );
    upsert
        .bind(stream.to_owned())
        .push(", ")
        .bind(sqlkit::now())
        .push(", ")
        .bind(i64::from(report.clean()))
        .push(", ")
        .bind(i64::try_from(report.rows_compared).unwrap_or(i64::MAX))
        .push(", ")
        .bind(count(report.drift.len()))
        .push(", ")
        .bind(count(report.parked.len()))
        .push(
            ") ON CONFLICT (stream) DO UPDATE SET at = excluded.at, clean = excluded.clean, \
             rows_compared = excluded.rows_compared, drifted = excluded.drifted, \
             parked = excluded.parked",
        );
    upsert.query()?.execute(target.pool()).await?;
    Ok(())
}

/// The latest verify of `stream` remembered in `target`, if any.
pub async fn last(target: &Db, stream: &str) -> Result<Option<LastVerify>, sqlx::Error> {
    crate::capture::ensure_target_tables(target).await?;
    let mut select = target.statement(
        "SELECT at, clean, rows_compared, drifted, parked FROM sync_verifications WHERE stream = ",
    );
    select.bind(stream.to_owned());
    let Some(row) = select.query()?.fetch_optional(target.pool()).await? else {
        return Ok(None);
    };
    Ok(Some(LastVerify {
        at: row.try_get(0)?,
        clean: row.try_get::<i64, _>(1)? != 0,
        rows_compared: row.try_get(2)?,
        drifted: row.try_get(3)?,
        parked: row.try_get(4)?,
    }))
}

/// Compares every mapped table while changes may be flowing: keys whose change sits between
/// the relay's checkpoint (read with the target) and the log's end (read with the source) are
/// counted as in flight, not as drift. `stream` names the relay (`catalog:forward`); without it
/// the comparison is strict.
pub async fn verify_live(
    source: &Db,
    target: &Db,
    mapping: &Mapping,
    stream: Option<&str>,
) -> anyhow::Result<Report> {
    let mut plans = Vec::with_capacity(mapping.tables.len());
    for table in &mapping.tables {
        plans.push(plan(source, target, table).await?);
    }
    // Both sides at once, each in its own snapshot.
    let ((source_scans, watermark), (target_scans, cursor)) = tokio::try_join!(
        scan_side(source, mapping, &plans, Side::Source, None),
        scan_side(target, mapping, &plans, Side::Target, stream),
    )?;
    let covered_to = match stream {
        Some(_) => watermark.map(|w| w.min(cursor.unwrap_or(0))),
        None => watermark,
    };
    let mut in_flight = match (stream, covered_to) {
        (Some(_), Some(since)) => Some(InFlight::since(source, mapping, since).await?),
        _ => None,
    };
    let none = HashSet::new();
    let mut report = Report {
        carveout: mapping.carveout.clone(),
        rows_compared: 0,
        in_flight: 0,
        covered_to,
        tables: Vec::new(),
        drift: Vec::new(),
        parked: crate::parked::of_carveout(target, &mapping.carveout).await?,
        pending: Vec::new(),
    };
    for (((table, plan), source_scan), target_scan) in mapping
        .tables
        .iter()
        .zip(&plans)
        .zip(source_scans)
        .zip(target_scans)
    {
        let mut counts = TableReport::of(table);
        let (drift, flying) = match (source_scan, target_scan, *plan) {
            (Scan::Rows(source_rows), Scan::Rows(target_rows), _) => {
                counts.source_rows = source_rows.len() as u64;
                counts.target_rows = target_rows.len() as u64;
                let keys = in_flight.as_ref().map_or(&none, |f| &f.keys);
                compare_rows(table, source_rows, target_rows, keys)?
            }
            (Scan::Chunks(s), Scan::Chunks(t), Plan::Chunked { width, .. }) => {
                counts.source_rows = s.values().map(|(n, _)| n).sum();
                counts.target_rows = t.values().map(|(n, _)| n).sum();
                let ids: std::collections::BTreeSet<i64> =
                    s.keys().chain(t.keys()).copied().collect();
                counts.chunks = ids.len() as u64;
                let differing: Vec<i64> =
                    ids.into_iter().filter(|c| s.get(c) != t.get(c)).collect();
                counts.chunks_differing = differing.len() as u64;
                let mut drift = Vec::new();
                let mut flying = Vec::new();
                // Runs of adjacent differing chunks are read together, a few at a time.
                let mut runs: Vec<(i64, i64)> = Vec::new();
                for c in differing {
                    match runs.last_mut() {
                        Some((first, last)) if *last + 1 == c && c - *first < RANGE_CHUNKS => {
                            *last = c;
                        }
                        _ => runs.push((c, c)),
                    }
                }
                for (first, last) in runs {
                    let (a, b) = (chunk_span(first, width), chunk_span(last, width));
                    let span = (a.0.min(b.0), a.1.max(b.1));
                    let (source_rows, target_rows) = tokio::try_join!(
                        rows_in_range(source, table, Side::Source, span),
                        rows_in_range(target, table, Side::Target, span),
                    )?;
                    // Read after the snapshots: the keys changed meanwhile are in flight too.
                    if let Some(in_flight) = &mut in_flight {
                        in_flight.refresh(source, mapping).await?;
                    }
                    let keys = in_flight.as_ref().map_or(&none, |f| &f.keys);
                    let (d, f) = compare_rows(table, source_rows, target_rows, keys)?;
                    drift.extend(d);
                    flying.extend(f);
                }
                (drift, flying)
            }
            _ => anyhow::bail!("{}: the two sides were read differently", table.source),
        };
        counts.drifted = drift.len() as u64;
        report.rows_compared += counts.source_rows;
        report.in_flight += flying.len() as u64;
        report.tables.push(counts);
        report.drift.extend(drift);
        report.pending.extend(flying);
    }
    Ok(report)
}

/// Compares, strictly, only the rows whose key the source's change log holds after `since`
/// (a [`Report::covered_to`] of an earlier verification): the keys that may have changed since
/// it. `rows_compared` counts the keys checked; none is not a failure here, as nothing
/// changed.
pub async fn verify_changed(
    source: &Db,
    target: &Db,
    mapping: &Mapping,
    since: i64,
) -> anyhow::Result<Report> {
    let (changed, _) = changed_keys(source, mapping, since).await?;
    let mut report = Report {
        carveout: mapping.carveout.clone(),
        rows_compared: 0,
        in_flight: 0,
        covered_to: None,
        tables: Vec::new(),
        drift: Vec::new(),
        parked: crate::parked::of_carveout(target, &mapping.carveout).await?,
        pending: Vec::new(),
    };
    let none = HashSet::new();
    for (table, keys) in mapping.tables.iter().zip(changed) {
        let mut counts = TableReport::of(table);
        for keys in keys.chunks(KEYS_PER_STATEMENT) {
            let (source_rows, target_rows) = read_keys(source, target, table, keys).await?;
            counts.source_rows += source_rows.len() as u64;
            counts.target_rows += target_rows.len() as u64;
            let (drift, _) = compare_rows(table, source_rows, target_rows, &none)?;
            counts.drifted += drift.len() as u64;
            report.drift.extend(drift);
        }
        report.rows_compared += u64::try_from(keys.len()).unwrap_or(u64::MAX);
        report.tables.push(counts);
    }
    Ok(report)
}

/// The rows of both sides with one of `keys` (source key values).
async fn read_keys(
    source: &Db,
    target: &Db,
    table: &TableMap,
    keys: &[Vec<Value>],
) -> anyhow::Result<(Vec<Vec<Value>>, Vec<Vec<Value>>)> {
    let mapped: Vec<Vec<Value>> = keys
        .iter()
        .map(|key| {
            table
                .key
                .iter()
                .zip(key)
                .map(|(c, v)| c.transform.apply(v))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", table.source))?;
    tokio::try_join!(
        rows_with_keys(source, table, Side::Source, keys),
        rows_with_keys(target, table, Side::Target, &mapped),
    )
}

/// The last stage of a live verification: the keys that were in flight during the comparison
/// (`report.pending`), compared again once the relay of `stream` has applied their changes.
/// Each round reads the relay's checkpoint, then both sides' rows of those keys, then the
/// changes logged after the checkpoint: a key with none of those differs for no reason in
/// flight, and is drift; the others are still in flight. Rounds repeat until no key is in
/// flight or `within` has passed (what is left is reported as in flight).
pub async fn settle(
    source: &Db,
    target: &Db,
    mapping: &Mapping,
    stream: &str,
    report: &mut Report,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    while !report.pending.is_empty() {
        if std::time::Instant::now() >= deadline {
            break;
        }
        let pending = std::mem::take(&mut report.pending);
        let mut checkpoint = target.statement("SELECT seq FROM sync_checkpoints WHERE stream = ");
        checkpoint.bind(stream.to_owned());
        let applied: i64 = match checkpoint.query()?.fetch_optional(target.pool()).await? {
            Some(row) => row.try_get(0)?,
            None => 0,
        };
        let mut in_flight = InFlight::after(applied);
        for table in &mapping.tables {
            let keys: Vec<Vec<Value>> = pending
                .iter()
                .filter(|d| d.table == table.target)
                .map(|d| {
                    table
                        .key
                        .iter()
                        .map(|c| d.source_key.get(&c.source).cloned().unwrap_or(Value::Null))
                        .collect()
                })
                .collect();
            for keys in keys.chunks(KEYS_PER_STATEMENT) {
                let (source_rows, target_rows) = read_keys(source, target, table, keys).await?;
                in_flight.refresh(source, mapping).await?;
                let (drift, flying) =
                    compare_rows(table, source_rows, target_rows, &in_flight.keys)?;
                report.drift.extend(drift);
                report.pending.extend(flying);
            }
        }
        report.in_flight = report.pending.len() as u64;
        for t in &mut report.tables {
            t.drifted = report.drift.iter().filter(|d| d.table == t.target).count() as u64;
        }
        if !report.pending.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The rows of one side with one of `keys` (this side's key values).
async fn rows_with_keys(
    db: &Db,
    table: &TableMap,
    side: Side,
    keys: &[Vec<Value>],
) -> anyhow::Result<Vec<Vec<Value>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (columns, select) = select_columns(side, table);
    let mut statement = db.statement(select);
    statement.push(" WHERE ");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            statement.push(" OR ");
        }
        statement.push("(");
        for (j, (c, v)) in table.key.iter().zip(key).enumerate() {
            let (name, kind) = side.column(c);
            if j > 0 {
                statement.push(" AND ");
            }
            statement.push(&format!("{name} = "));
            bind(&mut statement, kind, v).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        statement.push(")");
    }
    let rows = statement.query()?.fetch_all(db.pool()).await?;
    Ok(rows
        .iter()
        .map(|r| decode(r, &columns))
        .collect::<Result<_, _>>()?)
}

/// Re-copies every drifted key of `report` from the source (and removes extra target rows),
/// in one target transaction marked as a sync write. Returns how many rows it fixed.
pub async fn repair(target: &Db, mapping: &Mapping, report: &Report) -> anyhow::Result<usize> {
    if let Some(unmappable) = report
        .drift
        .iter()
        .find(|d| d.kind == DriftKind::Unmappable)
    {
        anyhow::bail!(
            "{} key {}: {}; no copy can mend it: change the source's data or the mapping, then repair",
            unmappable.table,
            Value::Object(unmappable.key.clone()),
            unmappable.reason.as_deref().unwrap_or("it cannot be mapped")
        );
    }
    let mut sync = crate::txn::SyncTx::begin_unlocked(target, "repair").await?;
    let tx = sync.tx();
    for drift in &report.drift {
        let table = mapping
            .tables
            .iter()
            .find(|t| t.target == drift.table)
            .ok_or_else(|| anyhow::anyhow!("the mapping has no target table {}", drift.table))?;
        let mut statement = match &drift.source_image {
            Some(image) => upsert(target, table, image),
            None => delete(target, table, &drift.source_key),
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", drift.table))?;
        statement.query()?.execute(&mut **tx).await?;
    }
    sync.commit().await?;
    Ok(report.drift.len())
}
