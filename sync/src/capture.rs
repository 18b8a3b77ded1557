//! Capture: triggers on the source tables write every insert, update and delete into the
//! change log (`sync_changes`) in the writer's own transaction, on SQLite and PostgreSQL.
//!
//! Loop prevention: a writer that applies synced changes (the relay, the backfill) first inserts
//! a row into `sync_applying` inside its own transaction and deletes it before committing. The
//! triggers skip capture while that row is visible, which is only inside that transaction:
//! SQLite has one writer at a time, and PostgreSQL never shows another transaction's
//! uncommitted row. So synced writes are never captured again, and forward and reverse sync can
//! run at once without echoing.

use sqlkit::{Backend, Db};

use crate::mapping::{Mapping, TableMap};

fn sqlite_ddl() -> Vec<String> {
    vec![
        "CREATE TABLE IF NOT EXISTS sync_changes (\
            seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, op TEXT NOT NULL, \
            pk TEXT NOT NULL, image TEXT, xid BIGINT NOT NULL DEFAULT 0, at TEXT NOT NULL)"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS sync_applying (origin TEXT NOT NULL)".to_owned(),
    ]
}

fn postgres_ddl() -> Vec<String> {
    vec![
        "CREATE TABLE IF NOT EXISTS sync_changes (\
            seq BIGSERIAL PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, \
            pk TEXT NOT NULL, image TEXT, xid BIGINT NOT NULL DEFAULT 0, at TEXT NOT NULL)"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS sync_applying (origin TEXT NOT NULL)".to_owned(),
    ]
}

/// The tables a relay and a backfill need in their target: the checkpoints, the backfill
/// progress, and the loop-prevention flag.
pub(crate) async fn ensure_target_tables(db: &Db) -> Result<(), sqlx::Error> {
    // Already there (the usual case): a read, no DDL. A write transaction here would contend
    // with a running relay's batches (on SQLite, fail at once as "database is locked").
    let newest = match db.backend() {
        Backend::Sqlite => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sqlite_master WHERE type = 'table' AND name = 'sync_verifications'"
        }
        Backend::Postgres => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_tables WHERE tablename = 'sync_verifications' \
             AND schemaname = ANY (current_schemas(false))"
        }
    };
    let found: i64 = sqlx::query_scalar(newest).fetch_one(db.pool()).await?;
    if found > 0 {
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    lock_ddl(db, &mut tx).await?;
    for sql in [
        "CREATE TABLE IF NOT EXISTS sync_applying (origin TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS sync_checkpoints (stream TEXT PRIMARY KEY, seq BIGINT NOT NULL, at TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS sync_backfill (stream TEXT NOT NULL, tbl TEXT NOT NULL, \
         last_key TEXT, read_rows BIGINT NOT NULL, skipped BIGINT NOT NULL, done BIGINT NOT NULL, \
         PRIMARY KEY (stream, tbl))",
        "CREATE TABLE IF NOT EXISTS sync_leases (stream TEXT PRIMARY KEY, holder TEXT NOT NULL, \
         expires_ms BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS sync_parked (stream TEXT NOT NULL, tbl TEXT NOT NULL, \
         pk_key TEXT NOT NULL, first_seq BIGINT NOT NULL, seq BIGINT NOT NULL, op TEXT NOT NULL, \
         pk TEXT NOT NULL, image TEXT, error TEXT NOT NULL, parked_at TEXT NOT NULL, \
         attempts BIGINT NOT NULL, PRIMARY KEY (stream, tbl, pk_key))",
        "CREATE TABLE IF NOT EXISTS sync_verifications (stream TEXT PRIMARY KEY, at TEXT NOT NULL, \
         clean BIGINT NOT NULL, rows_compared BIGINT NOT NULL, drifted BIGINT NOT NULL, \
         parked BIGINT NOT NULL)",
    ] {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Serialises the sync tool's DDL: PostgreSQL's `CREATE ... IF NOT EXISTS` is not safe against
/// a concurrent twin (SQLite's single writer already is).
async fn lock_ddl(db: &Db, tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), sqlx::Error> {
    if db.backend() == Backend::Postgres {
        sqlx::query("SELECT CAST(pg_advisory_xact_lock(7271001) AS TEXT)")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn json_pairs(table: &TableMap, row: &str, key_only: bool, postgres: bool) -> String {
    let columns: Vec<&str> = if key_only {
        table.key.iter().map(|c| c.source.as_str()).collect()
    } else {
        table.all().map(|c| c.source.as_str()).collect()
    };
    let pairs: Vec<String> = columns
        .iter()
        .map(|c| format!("'{c}', {row}.{c}"))
        .collect();
    if postgres {
        format!("jsonb_build_object({})::text", pairs.join(", "))
    } else {
        format!("json_object({})", pairs.join(", "))
    }
}

fn sqlite_triggers(table: &TableMap) -> Vec<String> {
    let t = &table.source;
    let skip = "NOT EXISTS (SELECT 1 FROM sync_applying)";
    let now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    let key_changed = table
        .key
        .iter()
        .map(|c| format!("OLD.{0} IS NOT NEW.{0}", c.source))
        .collect::<Vec<_>>()
        .join(" OR ");
    let insert = |op: &str, row: &str, image: bool| {
        format!(
            "INSERT INTO sync_changes (tbl, op, pk, image, at) VALUES ('{t}', '{op}', {}, {}, {now});",
            json_pairs(table, row, true, false),
            if image { json_pairs(table, row, false, false) } else { "NULL".to_owned() }
        )
    };
    vec![
        format!(
            "CREATE TRIGGER sync_{t}_i AFTER INSERT ON {t} WHEN {skip} BEGIN {} END",
            insert("I", "NEW", true)
        ),
        format!(
            "CREATE TRIGGER sync_{t}_u AFTER UPDATE ON {t} WHEN {skip} BEGIN {} {} END",
            // A changed key: the old row is gone.
            format!(
                "INSERT INTO sync_changes (tbl, op, pk, image, at) SELECT '{t}', 'D', {}, NULL, {now} WHERE {key_changed};",
                json_pairs(table, "OLD", true, false)
            ),
            insert("U", "NEW", true)
        ),
        format!(
            "CREATE TRIGGER sync_{t}_d AFTER DELETE ON {t} WHEN {skip} BEGIN {} END",
            insert("D", "OLD", false)
        ),
    ]
}

fn postgres_triggers(table: &TableMap) -> Vec<String> {
    let t = &table.source;
    let now = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";
    let old_key = table
        .key
        .iter()
        .map(|c| format!("OLD.{}", c.source))
        .collect::<Vec<_>>()
        .join(", ");
    let new_key = old_key.replace("OLD.", "NEW.");
    let insert = |op: &str, row: &str, image: bool| {
        format!(
            "INSERT INTO sync_changes (tbl, op, pk, image, xid, at) VALUES ('{t}', '{op}', {}, {}, txid_current(), {now});",
            json_pairs(table, row, true, true),
            if image { json_pairs(table, row, false, true) } else { "NULL".to_owned() }
        )
    };
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION sync_capture_{t}() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
             BEGIN \
               IF EXISTS (SELECT 1 FROM sync_applying) THEN RETURN NULL; END IF; \
               IF TG_OP = 'DELETE' THEN {del} \
               ELSE \
                 IF TG_OP = 'UPDATE' AND ROW({old_key}) IS DISTINCT FROM ROW({new_key}) THEN {del} END IF; \
                 IF TG_OP = 'INSERT' THEN {ins} ELSE {upd} END IF; \
               END IF; \
               RETURN NULL; \
             END $fn$",
            del = insert("D", "OLD", false),
            ins = insert("I", "NEW", true),
            upd = insert("U", "NEW", true),
        ),
        format!(
            "CREATE TRIGGER sync_{t} AFTER INSERT OR UPDATE OR DELETE ON {t} \
             FOR EACH ROW EXECUTE FUNCTION sync_capture_{t}()"
        ),
    ]
}

/// Installs the change log and the capture triggers of every source table of `mapping` (one
/// transaction: all or nothing). Installing twice is refused by the database (the triggers
/// exist); remove first.
pub async fn install(db: &Db, mapping: &Mapping) -> anyhow::Result<()> {
    let postgres = db.backend() == Backend::Postgres;
    let mut statements = if postgres {
        postgres_ddl()
    } else {
        sqlite_ddl()
    };
    for table in &mapping.tables {
        statements.extend(if postgres {
            postgres_triggers(table)
        } else {
            sqlite_triggers(table)
        });
    }
    let mut tx = db.begin_write().await?;
    lock_ddl(db, &mut tx).await?;
    for sql in &statements {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| anyhow::anyhow!("installing capture for {}: {e}", mapping.carveout))?;
    }
    tx.commit().await?;
    Ok(())
}

/// Whether capture is installed for every source table of `mapping`.
pub async fn installed(db: &Db, mapping: &Mapping) -> Result<bool, sqlx::Error> {
    for table in &mapping.tables {
        let found: i64 = match db.backend() {
            Backend::Sqlite => {
                sqlx::query_scalar(
                    "SELECT CAST(COUNT(*) AS BIGINT) FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                )
                .bind(format!("sync_{}_i", table.source))
                .fetch_one(db.pool())
                .await?
            }
            Backend::Postgres => {
                sqlx::query_scalar(
                    "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_trigger WHERE tgname = $1 AND NOT tgisinternal \
                     AND tgrelid = to_regclass($2)",
                )
                .bind(format!("sync_{}", table.source))
                .bind(table.source.clone())
                .fetch_one(db.pool())
                .await?
            }
        };
        if found == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the mapping's triggers and its changes from the log (what was not relayed yet is
/// dropped with them); the log itself goes with the last carve-out that captures into it.
pub async fn uninstall(db: &Db, mapping: &Mapping) -> anyhow::Result<()> {
    let mut statements = Vec::new();
    for table in &mapping.tables {
        let t = &table.source;
        match db.backend() {
            Backend::Sqlite => {
                for op in ["i", "u", "d"] {
                    statements.push(format!("DROP TRIGGER IF EXISTS sync_{t}_{op}"));
                }
            }
            Backend::Postgres => {
                statements.push(format!("DROP TRIGGER IF EXISTS sync_{t} ON {t}"));
                statements.push(format!("DROP FUNCTION IF EXISTS sync_capture_{t}()"));
            }
        }
    }
    let mut tx = db.begin_write().await?;
    for sql in &statements {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
    }
    // Capture triggers of other carve-outs left in this database (the guard's are not).
    let others: i64 = match db.backend() {
        Backend::Sqlite => sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sqlite_master WHERE type = 'trigger' \
             AND name LIKE 'sync\\_%' ESCAPE '\\' AND name NOT LIKE 'sync\\_guard\\_%' ESCAPE '\\'",
        )
        .fetch_one(&mut *tx)
        .await?,
        Backend::Postgres => sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT t.tgisinternal AND n.nspname = ANY (current_schemas(false)) \
             AND t.tgname LIKE 'sync\\_%' AND t.tgname NOT LIKE 'sync\\_guard\\_%'",
        )
        .fetch_one(&mut *tx)
        .await?,
    };
    if others == 0 {
        sqlx::raw_sql("DROP TABLE IF EXISTS sync_changes")
            .execute(&mut *tx)
            .await?;
    } else {
        let mut delete = db.statement("DELETE FROM sync_changes WHERE tbl IN (");
        delete.bind_list(mapping.tables.iter().map(|t| t.source.clone()));
        delete.push(")");
        delete.query()?.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Moves the key sequences of `mapping`'s source tables past their largest key, so the side
/// that takes the writes next does not hand out ids that synced rows already use (PostgreSQL
/// sequences do not advance when rows arrive with explicit ids; SQLite's AUTOINCREMENT does).
pub async fn align_sequences(db: &Db, mapping: &Mapping) -> anyhow::Result<()> {
    if db.backend() != Backend::Postgres {
        return Ok(());
    }
    for table in &mapping.tables {
        let [key] = table.key.as_slice() else {
            continue;
        };
        let (t, k) = (&table.source, &key.source);
        let sequence: Option<String> =
            sqlx::query_scalar("SELECT CAST(pg_get_serial_sequence($1, $2) AS TEXT)")
                .bind(t.clone())
                .bind(k.clone())
                .fetch_one(db.pool())
                .await?;
        if let Some(sequence) = sequence {
            sqlx::query(&format!(
                "SELECT CAST(setval('{sequence}', GREATEST((SELECT COALESCE(MAX({k}), 0) FROM {t}), 1)) AS TEXT)"
            ))
            .execute(db.pool())
            .await?;
        }
    }
    Ok(())
}
