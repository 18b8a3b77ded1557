//! The write guard: triggers that refuse every write to a carve-out's tables on the side that
//! does not own them, except the data sync's own (the relay, the backfill, a repair).
//!
//! The proxy's fence holds the carve-out's writes that come through it; the guard covers the
//! writers it cannot see: a module of the monolith writing the tables in process (the orders
//! saga reserving stock), a job, a hand-typed `UPDATE`. A move sets it on the side giving up
//! the writes ([`Guard::Fenced`] while it drains and verifies, [`Guard::OwnedElsewhere`] once
//! the ownership flipped) and lifts it on the side taking them. A refused write fails with a
//! message that [`refusal`] reads, so a writer can wait out a fence or send its write to the
//! owner instead.
//!
//! `sync_write_guard (tbl, state, since)` holds one row per guarded table; no row, no guard.

use sqlkit::{Backend, Db};

/// Why a side refuses writes to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// A move is under way: the writes wait until it ends.
    Fenced,
    /// The other side owns the writes.
    OwnedElsewhere,
}

impl Guard {
    /// The word stored and raised.
    pub fn name(self) -> &'static str {
        match self {
            Guard::Fenced => "fenced",
            Guard::OwnedElsewhere => "owned-elsewhere",
        }
    }

    fn parse(text: &str) -> Option<Guard> {
        match text {
            "fenced" => Some(Guard::Fenced),
            "owned-elsewhere" => Some(Guard::OwnedElsewhere),
            _ => None,
        }
    }
}

/// The prefix of a refused write's error message.
const PREFIX: &str = "sync guard: ";

/// What a failed write says about the guard: `Some` when the guard refused it.
pub fn refusal(err: &sqlx::Error) -> Option<Guard> {
    let sqlx::Error::Database(e) = err else {
        return None;
    };
    let message = e.message();
    let at = message.find(PREFIX)?;
    let rest = &message[at + PREFIX.len()..];
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Guard::parse(&word)
}

fn sqlite_triggers(table: &str) -> Vec<String> {
    let mut statements = Vec::new();
    for (op, event) in [("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE")] {
        for guard in [Guard::Fenced, Guard::OwnedElsewhere] {
            let state = guard.name();
            statements.push(format!(
                "CREATE TRIGGER IF NOT EXISTS sync_guard_{table}_{op}_{short} BEFORE {event} ON {table} \
                 WHEN NOT EXISTS (SELECT 1 FROM sync_applying) \
                  AND EXISTS (SELECT 1 FROM sync_write_guard WHERE tbl = '{table}' AND state = '{state}') \
                 BEGIN SELECT RAISE(ABORT, '{PREFIX}{state}: {table} is not written on this side'); END",
                short = &state[..1],
            ));
        }
    }
    statements
}

fn postgres_triggers(table: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION sync_guard_{table}() RETURNS trigger LANGUAGE plpgsql AS $fn$ \
             DECLARE guard TEXT; \
             BEGIN \
               IF EXISTS (SELECT 1 FROM sync_applying) THEN \
                 IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; \
               END IF; \
               SELECT state INTO guard FROM sync_write_guard WHERE tbl = '{table}'; \
               IF guard IS NOT NULL THEN \
                 RAISE EXCEPTION '{PREFIX}%: {table} is not written on this side', guard \
                   USING ERRCODE = 'object_not_in_prerequisite_state'; \
               END IF; \
               IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; \
             END $fn$"
        ),
        format!("DROP TRIGGER IF EXISTS sync_guard_{table} ON {table}"),
        format!(
            "CREATE TRIGGER sync_guard_{table} BEFORE INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION sync_guard_{table}()"
        ),
    ]
}

/// Installs the guard's table and triggers on `tables` (idempotent), guarding nothing yet.
pub async fn install(db: &Db, tables: &[String]) -> anyhow::Result<()> {
    let mut statements = vec![
        "CREATE TABLE IF NOT EXISTS sync_applying (origin TEXT NOT NULL)".to_owned(),
        "CREATE TABLE IF NOT EXISTS sync_write_guard (tbl TEXT PRIMARY KEY, state TEXT NOT NULL, since TEXT NOT NULL)"
            .to_owned(),
    ];
    for table in tables {
        anyhow::ensure!(
            crate::schema::is_identifier(table),
            "{table:?} is not a table name"
        );
        statements.extend(match db.backend() {
            Backend::Sqlite => sqlite_triggers(table),
            Backend::Postgres => postgres_triggers(table),
        });
    }
    patiently(db, "installing the write guard", |mut tx| {
        let statements = &statements;
        async move {
            if db.backend() == Backend::Postgres {
                sqlx::query("SELECT CAST(pg_advisory_xact_lock(7271001) AS TEXT)")
                    .execute(&mut *tx)
                    .await?;
            }
            for sql in statements {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
            }
            tx.commit().await
        }
    })
    .await
}

/// Most attempts [`patiently`] makes.
const ATTEMPTS: u32 = 100;

/// Runs `work` in a write transaction that never waits long for a table lock: on PostgreSQL,
/// DDL and the guard's table locks queue behind the writers of the tables, and a writer that
/// then waits behind them would deadlock with them, so each attempt gives up after 100 ms
/// (before the server's deadlock detector would abort a writer) and is tried again, up to
/// [`ATTEMPTS`] times.
async fn patiently<F, Fut>(db: &Db, what: &str, mut work: F) -> anyhow::Result<()>
where
    F: FnMut(sqlx::Transaction<'static, sqlx::Any>) -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = db.begin_write().await?;
        if db.backend() == Backend::Postgres {
            sqlx::query("SET LOCAL lock_timeout = '100ms'")
                .execute(&mut *tx)
                .await?;
        }
        match work(tx).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < ATTEMPTS && lock_contention(&err) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(err) => return Err(anyhow::anyhow!("{what}: {err}")),
        }
    }
}

/// A lock that timed out, or a deadlock: worth another attempt.
fn lock_contention(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("55P03" | "40P01")),
        _ => false,
    }
}

/// Guards `tables` with `guard` (replacing a guard they had). On PostgreSQL it waits for the
/// transactions already writing them: once it returns, no write that the guard refuses can
/// still commit.
pub async fn set(db: &Db, tables: &[String], guard: Guard) -> anyhow::Result<()> {
    patiently(db, "raising the write guard", |mut tx| async move {
        if db.backend() == Backend::Postgres {
            for table in tables {
                // SHARE ROW EXCLUSIVE waits for every writer of the table and lets none start.
                sqlx::raw_sql(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for table in tables {
            sqlx::query(
                "INSERT INTO sync_write_guard (tbl, state, since) VALUES ($1, $2, $3) \
                 ON CONFLICT (tbl) DO UPDATE SET state = excluded.state, since = excluded.since",
            )
            .bind(table.clone())
            .bind(guard.name())
            .bind(sqlkit::now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    })
    .await
}

/// Lifts the guard from `tables` (nothing happens where there is none).
pub async fn lift(db: &Db, tables: &[String]) -> anyhow::Result<()> {
    if !exists(db).await? {
        return Ok(());
    }
    let mut tx = db.begin_write().await?;
    for table in tables {
        sqlx::query("DELETE FROM sync_write_guard WHERE tbl = $1")
            .bind(table.clone())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The guard on `table` as `tx` sees it, for a writer that must know before it writes: a
/// statement that matches no row fires no trigger, so an `UPDATE ... WHERE` that finds nothing
/// on the side that does not own the rows would pass unrefused. On PostgreSQL it first takes
/// the table's ROW EXCLUSIVE lock (a writer's own), which [`set`] waits for: the answer holds
/// until `tx` ends.
pub async fn check(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    table: &str,
) -> Result<Option<Guard>, sqlx::Error> {
    if !crate::schema::is_identifier(table) {
        return Err(sqlx::Error::Protocol(format!(
            "{table:?} is not a table name"
        )));
    }
    let exists = match backend {
        Backend::Sqlite => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sqlite_master WHERE type = 'table' AND name = 'sync_write_guard'"
        }
        Backend::Postgres => {
            sqlx::query(&format!("LOCK TABLE {table} IN ROW EXCLUSIVE MODE"))
                .execute(&mut **tx)
                .await?;
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_tables WHERE tablename = 'sync_write_guard' \
             AND schemaname = ANY (current_schemas(false))"
        }
    };
    let found: i64 = sqlx::query_scalar(exists).fetch_one(&mut **tx).await?;
    if found == 0 {
        return Ok(None);
    }
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM sync_write_guard WHERE tbl = $1")
            .bind(table.to_owned())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(state.as_deref().and_then(Guard::parse))
}

/// The guard on `table`, if any.
pub async fn state(db: &Db, table: &str) -> Result<Option<Guard>, sqlx::Error> {
    if !exists(db).await? {
        return Ok(None);
    }
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM sync_write_guard WHERE tbl = $1")
            .bind(table.to_owned())
            .fetch_optional(db.pool())
            .await?;
    Ok(state.as_deref().and_then(Guard::parse))
}

async fn exists(db: &Db) -> Result<bool, sqlx::Error> {
    let sql = match db.backend() {
        Backend::Sqlite => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sqlite_master WHERE type = 'table' AND name = 'sync_write_guard'"
        }
        Backend::Postgres => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_tables WHERE tablename = 'sync_write_guard' \
             AND schemaname = ANY (current_schemas(false))"
        }
    };
    let found: i64 = sqlx::query_scalar(sql).fetch_one(db.pool()).await?;
    Ok(found > 0)
}
