//! What a table looks like in the database: its columns and their kinds, read from SQLite's
//! `PRAGMA table_info` or PostgreSQL's `information_schema`.

use sqlkit::{Backend, Db};
use sqlx::Row;

/// How a column's values are bound and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Integers.
    Integer,
    /// Floating point and numeric.
    Real,
    /// Booleans.
    Bool,
    /// Text, and anything else (dates, JSON) as its text form.
    Text,
}

/// A table's columns, in order.
pub type Columns = Vec<(String, Kind)>;

fn kind_of(declared: &str) -> Kind {
    let t = declared.to_ascii_lowercase();
    if t.contains("int") || t == "serial" || t == "bigserial" {
        Kind::Integer
    } else if t.contains("bool") {
        Kind::Bool
    } else if t.contains("real")
        || t.contains("floa")
        || t.contains("doub")
        || t.contains("numeric")
        || t.contains("decimal")
    {
        Kind::Real
    } else {
        Kind::Text
    }
}

/// The columns of `table`; empty when the table does not exist.
pub async fn columns(db: &Db, table: &str) -> Result<Columns, sqlx::Error> {
    match db.backend() {
        Backend::Sqlite => {
            // PRAGMA arguments cannot be bound; the name is checked to be an identifier.
            if !is_identifier(table) {
                return Ok(Vec::new());
            }
            let rows = sqlx::query(&format!(
                "SELECT name, type FROM pragma_table_info('{table}')"
            ))
            .fetch_all(db.pool())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>("name")?,
                        kind_of(&r.try_get::<String, _>("type")?),
                    ))
                })
                .collect()
        }
        Backend::Postgres => {
            let rows = sqlx::query(
                "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS type \
                 FROM information_schema.columns \
                 WHERE table_name = $1 AND table_schema = ANY (current_schemas(false)) \
                 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(db.pool())
            .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>("name")?,
                        kind_of(&r.try_get::<String, _>("type")?),
                    ))
                })
                .collect()
        }
    }
}

/// The columns of `table` a row cannot go without: NOT NULL, with no default, not generated.
pub async fn required_columns(db: &Db, table: &str) -> Result<Vec<String>, sqlx::Error> {
    match db.backend() {
        Backend::Sqlite => {
            if !is_identifier(table) {
                return Ok(Vec::new());
            }
            // An INTEGER PRIMARY KEY is the rowid: SQLite fills it in.
            sqlx::query_scalar(&format!(
                "SELECT name FROM pragma_table_info('{table}') \
                 WHERE \"notnull\" = 1 AND dflt_value IS NULL \
                 AND NOT (pk = 1 AND lower(type) = 'integer')"
            ))
            .fetch_all(db.pool())
            .await
        }
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_name = $1 AND table_schema = ANY (current_schemas(false)) \
                 AND is_nullable = 'NO' AND column_default IS NULL \
                 AND is_identity = 'NO' AND is_generated = 'NEVER' \
                 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(db.pool())
            .await
        }
    }
}

/// Whether `name` is a plain SQL identifier (letters, digits, `_`; not starting with a digit).
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
