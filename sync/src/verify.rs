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
    db: &Db,
    table: &str,
    columns: &[(&str, Kind)],
) -> Result<Vec<Vec<Value>>, sqlx::Error> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let sql = format!("SELECT {} FROM {table}", names.join(", "));
    let fetched = sqlx::query(&sql).fetch_all(db.pool()).await?;
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

async fn verify_table(
    source: &Db,
    target: &Db,
    table: &TableMap,
) -> anyhow::Result<(TableReport, Vec<Drift>)> {
    let all: Vec<&ColumnMap> = table.all().collect();
    let keys = table.key.len();
    let source_rows = rows(
        source,
        &table.source,
        &all.iter()
            .map(|c| (c.source.as_str(), c.source_kind))
            .collect::<Vec<_>>(),
    )
    .await?;
    let target_rows = rows(
        target,
        &table.target,
        &all.iter()
            .map(|c| (c.target.as_str(), c.target_kind))
            .collect::<Vec<_>>(),
    )
    .await?;
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::with_capacity(target_rows.len());
    for row in &target_rows {
        by_key.insert(Value::from(row[..keys].to_vec()).to_string(), row.clone());
    }
    let mut drift = Vec::new();
    for row in &source_rows {
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
    Ok((
        TableReport {
            source: table.source.clone(),
            target: table.target.clone(),
            source_rows: source_rows.len() as u64,
            target_rows: target_rows.len() as u64,
            drifted: drift.len() as u64,
        },
        drift,
    ))
}

/// Compares every mapped table.
pub async fn verify(source: &Db, target: &Db, mapping: &Mapping) -> anyhow::Result<Report> {
    let mut report = Report {
        carveout: mapping.carveout.clone(),
        rows_compared: 0,
        tables: Vec::new(),
        drift: Vec::new(),
    };
    for table in &mapping.tables {
        let (counts, drift) = verify_table(source, target, table).await?;
        report.rows_compared += counts.source_rows;
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
