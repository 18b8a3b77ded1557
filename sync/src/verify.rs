//! Verification: source and target compared on the mapped form of every row (the source row
//! put through the mapping, against the target row), with a report of every drifted key.
//! A verification that compared zero rows is not clean. Repair re-copies the drifted keys.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};
use sqlkit::Db;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::mapping::{ColumnMap, Mapping, TableMap};
use crate::relay::{delete, upsert};
use crate::schema::Kind;

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
    /// Drifted keys.
    pub drifted: u64,
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
    /// Per table.
    pub tables: Vec<TableReport>,
    /// Every drifted key.
    pub drift: Vec<Drift>,
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
            let _ = writeln!(
                out,
                "{} → {}: {} source rows, {} target rows, {} drifted",
                t.source, t.target, t.source_rows, t.target_rows, t.drifted
            );
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
                "{} row(s) differ only by changes in flight (the relay settles them)",
                self.in_flight
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

async fn rows(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[(&str, Kind)],
) -> Result<Vec<Vec<Value>>, sqlx::Error> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let sql = format!("SELECT {} FROM {table}", names.join(", "));
    let fetched = sqlx::query(&sql).fetch_all(conn).await?;
    fetched
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| read_value(row, i, *kind))
                .collect()
        })
        .collect()
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

/// Reads every mapped table of one side in one snapshot, with a mark read in the same snapshot.
async fn read_side(
    db: &Db,
    mapping: &Mapping,
    source_side: bool,
    mark_sql: Option<(String, String)>,
) -> anyhow::Result<(Vec<Vec<Vec<Value>>>, Option<i64>)> {
    // The mark's table may not exist (capture not installed, no relay yet): no mark then.
    let mark_sql = match mark_sql {
        Some((sql, stream)) => {
            let table = if source_side {
                "sync_changes"
            } else {
                "sync_checkpoints"
            };
            let exists = sqlx::query(&format!("SELECT 1 FROM {table} LIMIT 1"))
                .fetch_optional(db.pool())
                .await
                .is_ok();
            exists.then_some((sql, stream))
        }
        None => None,
    };
    let mut tx = db.pool().begin().await?;
    if db.backend() == sqlkit::Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
    }
    let mut mark = None;
    if let Some((sql, stream)) = mark_sql {
        let mut statement = db.statement(sql);
        if !stream.is_empty() {
            statement.bind(stream);
        }
        let row = statement.query()?.fetch_optional(&mut *tx).await?;
        mark = row.and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten());
    }
    let mut all = Vec::new();
    for table in &mapping.tables {
        let columns: Vec<(&str, Kind)> = table
            .all()
            .map(|c| {
                if source_side {
                    (c.source.as_str(), c.source_kind)
                } else {
                    (c.target.as_str(), c.target_kind)
                }
            })
            .collect();
        let name = if source_side {
            &table.source
        } else {
            &table.target
        };
        all.push(rows(&mut tx, name, &columns).await?);
    }
    tx.commit().await?;
    Ok((all, mark))
}

fn verify_table(
    table: &TableMap,
    source_rows: &[Vec<Value>],
    target_rows: &[Vec<Value>],
    in_flight: &std::collections::HashSet<String>,
) -> anyhow::Result<(TableReport, Vec<Drift>, u64)> {
    let all: Vec<&ColumnMap> = table.all().collect();
    let keys = table.key.len();
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::with_capacity(target_rows.len());
    for row in target_rows {
        by_key.insert(Value::from(row[..keys].to_vec()).to_string(), row.clone());
    }
    let mut drift = Vec::new();
    for row in source_rows {
        let mapped: Vec<Value> = all
            .iter()
            .zip(row)
            .map(|(c, v)| c.transform.apply(v))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", table.source))?;
        let key = Value::from(mapped[..keys].to_vec()).to_string();
        let image = object(&all, row, false);
        let source_key = object(&all[..keys], &row[..keys], false);
        match by_key.remove(&key) {
            None => drift.push(Drift {
                table: table.target.clone(),
                key: object(&all[..keys], &mapped[..keys], true),
                kind: DriftKind::Missing,
                expected: Some(object(&all, &mapped, true)),
                actual: None,
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
            source_image: None,
            source_key,
        });
    }
    // Keys with a change in flight (logged, and applied on one side of the two snapshots but
    // not the other) are not drift: the relay settles them.
    let before = drift.len();
    drift.retain(|d| {
        let key: Vec<Value> = table
            .key
            .iter()
            .map(|c| d.key.get(&c.target).cloned().unwrap_or(Value::Null))
            .collect();
        !in_flight.contains(&format!("{}|{}", table.source, Value::from(key)))
    });
    let in_flight_count = (before - drift.len()) as u64;
    Ok((
        TableReport {
            source: table.source.clone(),
            target: table.target.clone(),
            source_rows: source_rows.len() as u64,
            target_rows: target_rows.len() as u64,
            drifted: drift.len() as u64,
        },
        drift,
        in_flight_count,
    ))
}

/// Compares every mapped table, strictly: every difference is drift (use it when no change is
/// in flight, e.g. under a write fence with the relay drained).
pub async fn verify(source: &Db, target: &Db, mapping: &Mapping) -> anyhow::Result<Report> {
    verify_live(source, target, mapping, None).await
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
    let live = stream.is_some();
    let (source_rows, watermark) = read_side(
        source,
        mapping,
        true,
        live.then(|| {
            (
                "SELECT CAST(MAX(seq) AS BIGINT) FROM sync_changes".to_owned(),
                String::new(),
            )
        }),
    )
    .await?;
    let (target_rows, cursor) = read_side(
        target,
        mapping,
        false,
        stream.map(|s| {
            (
                "SELECT seq FROM sync_checkpoints WHERE stream = ".to_owned(),
                s.to_owned(),
            )
        }),
    )
    .await?;
    let mut in_flight = std::collections::HashSet::new();
    if live {
        let since = watermark.unwrap_or(0).min(cursor.unwrap_or(0));
        let mut select = source.statement("SELECT tbl, pk FROM sync_changes WHERE seq > ");
        select.bind(since);
        if let Ok(rows) = select.query()?.fetch_all(source.pool()).await {
            for row in rows {
                let (Ok(tbl), Ok(pk)) = (
                    row.try_get::<String, _>("tbl"),
                    row.try_get::<String, _>("pk"),
                ) else {
                    continue;
                };
                let Some(table) = mapping.tables.iter().find(|t| t.source == tbl) else {
                    continue;
                };
                let Ok(Value::Object(pk)) = serde_json::from_str::<Value>(&pk) else {
                    continue;
                };
                let key: Option<Vec<Value>> = table
                    .key
                    .iter()
                    .map(|c| pk.get(&c.source).and_then(|v| c.transform.apply(v).ok()))
                    .collect();
                if let Some(key) = key {
                    in_flight.insert(format!("{tbl}|{}", Value::from(key)));
                }
            }
        }
    }
    let mut report = Report {
        carveout: mapping.carveout.clone(),
        rows_compared: 0,
        in_flight: 0,
        tables: Vec::new(),
        drift: Vec::new(),
    };
    for ((table, source_rows), target_rows) in
        mapping.tables.iter().zip(&source_rows).zip(&target_rows)
    {
        let (counts, drift, in_flight_count) =
            verify_table(table, source_rows, target_rows, &in_flight)?;
        report.rows_compared += counts.source_rows;
        report.in_flight += in_flight_count;
        report.tables.push(counts);
        report.drift.extend(drift);
    }
    Ok(report)
}

/// Re-copies every drifted key of `report` from the source (and removes extra target rows),
/// in one target transaction marked as a sync write. Returns how many rows it fixed.
pub async fn repair(target: &Db, mapping: &Mapping, report: &Report) -> anyhow::Result<usize> {
    let mut tx = target.pool().begin().await?;
    sqlx::query("INSERT INTO sync_applying (origin) VALUES ('repair')")
        .execute(&mut *tx)
        .await?;
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
        statement.query()?.execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM sync_applying")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(report.drift.len())
}
