//! A carve-out's mapping: which source tables and columns correspond to which target tables and
//! columns, with simple invertible transforms, so the same file drives forward sync (monolith →
//! service) and reverse sync (service → monolith). A mapping is checked against both databases
//! before anything runs: a table or column it names that does not exist is refused, by name.

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlkit::Db;

use crate::schema::{self, is_identifier, Kind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    carveout: String,
    tables: Vec<TableFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    source: String,
    target: String,
    key: Vec<ColumnFile>,
    #[serde(default)]
    columns: Vec<ColumnFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    source: String,
    target: String,
    #[serde(default)]
    transform: Option<String>,
}

/// How a value changes on its way from source to target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Unchanged.
    Identity,
    /// Multiplied by a factor (`multiply:10`: cents to mills).
    Multiply(i64),
    /// Divided by a factor, refused when it would lose precision.
    Divide(i64),
}

impl Transform {
    fn parse(text: &str) -> anyhow::Result<Transform> {
        let factor = |n: &str| -> anyhow::Result<i64> {
            let n: i64 = n
                .trim()
                .parse()
                .with_context(|| format!("transform {text:?}: {n:?} is not an integer"))?;
            anyhow::ensure!(n > 0, "transform {text:?}: the factor must be positive");
            Ok(n)
        };
        match text.split_once(':') {
            None if text == "identity" => Ok(Transform::Identity),
            Some(("multiply", n)) => Ok(Transform::Multiply(factor(n)?)),
            Some(("divide", n)) => Ok(Transform::Divide(factor(n)?)),
            _ => anyhow::bail!("unknown transform {text:?} (identity, multiply:N, divide:N)"),
        }
    }

    /// The transform of the opposite direction.
    pub fn inverse(self) -> Transform {
        match self {
            Transform::Identity => Transform::Identity,
            Transform::Multiply(n) => Transform::Divide(n),
            Transform::Divide(n) => Transform::Multiply(n),
        }
    }

    /// Applies it to a value.
    pub fn apply(self, value: &Value) -> Result<Value, String> {
        match (self, value) {
            (Transform::Identity, v) | (_, v @ Value::Null) => Ok(v.clone()),
            (Transform::Multiply(n), Value::Number(x)) => match x.as_i64() {
                Some(i) => i
                    .checked_mul(n)
                    .map(Value::from)
                    .ok_or_else(|| format!("{i} × {n} overflows")),
                None => Ok(Value::from(x.as_f64().unwrap_or_default() * n as f64)),
            },
            (Transform::Divide(n), Value::Number(x)) => match x.as_i64() {
                Some(i) if i % n == 0 => Ok(Value::from(i / n)),
                Some(i) => Err(format!("{i} ÷ {n} would lose precision")),
                None => Ok(Value::from(x.as_f64().unwrap_or_default() / n as f64)),
            },
            (t, v) => Err(format!("{t:?} needs a number, not {v}")),
        }
    }
}

/// One column's correspondence.
#[derive(Debug, Clone)]
pub struct ColumnMap {
    /// The source column.
    pub source: String,
    /// The target column.
    pub target: String,
    /// Source → target.
    pub transform: Transform,
    /// The target column's kind (known after [`Mapping::check`]).
    pub target_kind: Kind,
    /// The source column's kind (known after [`Mapping::check`]).
    pub source_kind: Kind,
}

/// One table's correspondence.
#[derive(Debug, Clone)]
pub struct TableMap {
    /// The source table.
    pub source: String,
    /// The target table.
    pub target: String,
    /// The key columns (identify a row on both sides).
    pub key: Vec<ColumnMap>,
    /// The other mapped columns.
    pub columns: Vec<ColumnMap>,
}

impl TableMap {
    /// Key columns, then the others.
    pub fn all(&self) -> impl Iterator<Item = &ColumnMap> {
        self.key.iter().chain(&self.columns)
    }

    /// The target row of a source row image (source column → value), in [`TableMap::all`]
    /// order.
    pub fn to_target(&self, image: &Map<String, Value>) -> Result<Vec<Value>, String> {
        self.all()
            .map(|c| {
                let value = image.get(&c.source).ok_or_else(|| {
                    format!("{}.{} is missing from the change", self.source, c.source)
                })?;
                c.transform
                    .apply(value)
                    .map_err(|e| format!("{}.{}: {e}", self.source, c.source))
            })
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Target,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Source => "the source",
            Side::Target => "the target",
        }
    }
}

/// A checked carve-out mapping in one direction.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The carve-out.
    pub carveout: String,
    /// The tables.
    pub tables: Vec<TableMap>,
}

impl Mapping {
    /// Reads a mapping file (TOML).
    pub fn load(path: &Path) -> anyhow::Result<Mapping> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Mapping::parse(&text).with_context(|| format!("{} is not a valid mapping", path.display()))
    }

    /// Reads a mapping from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Mapping> {
        let file: MappingFile = toml::from_str(text)?;
        anyhow::ensure!(!file.tables.is_empty(), "the mapping has no tables");
        let column = |c: ColumnFile| -> anyhow::Result<ColumnMap> {
            for name in [&c.source, &c.target] {
                anyhow::ensure!(is_identifier(name), "{name:?} is not a plain column name");
            }
            Ok(ColumnMap {
                transform: match c.transform.as_deref() {
                    None => Transform::Identity,
                    Some(t) => Transform::parse(t)?,
                },
                source: c.source,
                target: c.target,
                target_kind: Kind::Text,
                source_kind: Kind::Text,
            })
        };
        let mut tables = Vec::new();
        for t in file.tables {
            for name in [&t.source, &t.target] {
                anyhow::ensure!(is_identifier(name), "{name:?} is not a plain table name");
            }
            anyhow::ensure!(!t.key.is_empty(), "table {} has no key columns", t.source);
            // Each column maps to one column: the mapping must run both ways.
            for side in [Side::Source, Side::Target] {
                let mut seen = std::collections::HashSet::new();
                for c in t.key.iter().chain(&t.columns) {
                    let name = match side {
                        Side::Source => &c.source,
                        Side::Target => &c.target,
                    };
                    anyhow::ensure!(
                        seen.insert(name.as_str()),
                        "table {}: {} column {name} is mapped twice (each column maps to exactly one)",
                        t.source,
                        side.name()
                    );
                }
            }
            tables.push(TableMap {
                key: t
                    .key
                    .into_iter()
                    .map(column)
                    .collect::<anyhow::Result<_>>()?,
                columns: t
                    .columns
                    .into_iter()
                    .map(column)
                    .collect::<anyhow::Result<_>>()?,
                source: t.source,
                target: t.target,
            });
        }
        Ok(Mapping {
            carveout: file.carveout,
            tables,
        })
    }

    /// Checks every table and column against the two databases and learns the column kinds.
    /// Nothing runs with a mapping that names something missing.
    pub async fn check(&mut self, source: &Db, target: &Db) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        for table in &mut self.tables {
            let source_columns = schema::columns(source, &table.source).await?;
            let target_columns = schema::columns(target, &table.target).await?;
            if source_columns.is_empty() {
                problems.push(format!("the source has no table {}", table.source));
            }
            if target_columns.is_empty() {
                problems.push(format!("the target has no table {}", table.target));
            }
            if source_columns.is_empty() || target_columns.is_empty() {
                continue;
            }
            let (source_name, target_name) = (table.source.clone(), table.target.clone());
            for column in table.key.iter_mut().chain(table.columns.iter_mut()) {
                let source_kind = source_columns.iter().find(|(n, _)| *n == column.source);
                let target_kind = target_columns.iter().find(|(n, _)| *n == column.target);
                match source_kind {
                    Some((_, kind)) => column.source_kind = *kind,
                    None => problems.push(format!(
                        "the source table {source_name} has no column {}",
                        column.source
                    )),
                }
                match target_kind {
                    Some((_, kind)) => column.target_kind = *kind,
                    None => problems.push(format!(
                        "the target table {target_name} has no column {}",
                        column.target
                    )),
                }
                let numeric = |kind: Kind| matches!(kind, Kind::Integer | Kind::Real);
                if column.transform != Transform::Identity
                    && (source_kind.is_some() && !numeric(column.source_kind)
                        || target_kind.is_some() && !numeric(column.target_kind))
                {
                    problems.push(format!(
                        "{source_name}.{} → {target_name}.{}: {:?} needs numbers on both sides",
                        column.source, column.target, column.transform
                    ));
                }
            }
            // A row written to the target must fill every column the target requires.
            for required in schema::required_columns(target, &target_name).await? {
                if !table.all().any(|c| c.target == required) {
                    problems.push(format!(
                        "the target column {target_name}.{required} is NOT NULL without a default and nothing maps to it"
                    ));
                }
            }
        }
        anyhow::ensure!(
            problems.is_empty(),
            "the mapping of {} does not fit the databases: {}",
            self.carveout,
            problems.join("; ")
        );
        Ok(())
    }

    /// The mapping of the opposite direction (target tables become sources).
    pub fn reversed(&self) -> Mapping {
        let flip = |c: &ColumnMap| ColumnMap {
            source: c.target.clone(),
            target: c.source.clone(),
            transform: c.transform.inverse(),
            target_kind: c.source_kind,
            source_kind: c.target_kind,
        };
        Mapping {
            carveout: self.carveout.clone(),
            tables: self
                .tables
                .iter()
                .map(|t| TableMap {
                    source: t.target.clone(),
                    target: t.source.clone(),
                    key: t.key.iter().map(flip).collect(),
                    columns: t.columns.iter().map(flip).collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transforms_invert_and_refuse_precision_loss() {
        let t = Transform::parse("multiply:10").unwrap();
        assert_eq!(t.apply(&json!(125)).unwrap(), json!(1250));
        assert_eq!(t.inverse().apply(&json!(1250)).unwrap(), json!(125));
        assert!(t
            .inverse()
            .apply(&json!(1255))
            .unwrap_err()
            .contains("precision"));
        assert_eq!(t.apply(&Value::Null).unwrap(), Value::Null);
        assert!(t.apply(&json!("x")).is_err());
        assert!(Transform::parse("multiply:0").is_err());
        assert!(Transform::parse("uppercase").is_err());
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Mapping::parse("carveout = \"c\"\ntables = []").is_err());
        let err = Mapping::parse(
            "carveout = \"c\"\n[[tables]]\nsource = \"a; drop\"\ntarget = \"b\"\nkey = [{ source = \"id\", target = \"id\" }]",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("plain table name"), "{err:#}");
    }
}
