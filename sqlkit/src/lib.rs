//! One code path over SQLite (the embedded default) and PostgreSQL, through `sqlx::Any`.
//!
//! Code runs the same SQL on both: the common dialect (`$n` parameters, `RETURNING`, `BIGINT`
//! integers, timestamps as RFC 3339 text). Only DDL differs, so each database of the project has
//! one migration folder per backend, embedded by its crate and handed over as [`Migrations`].
//!
//! SQLite rule for write transactions: the first statement of a transaction that writes is a
//! write. A deferred transaction that reads first and writes later can fail with `SQLITE_BUSY`
//! without waiting; one that writes first waits on the busy timeout like any other writer.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

/// The embedded migrations of one database, per backend.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// What the database is called in errors (`monolith`, `control`, ...).
    pub name: &'static str,
    /// The SQLite flavour.
    pub sqlite: &'static Migrator,
    /// The PostgreSQL flavour.
    pub postgres: &'static Migrator,
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The database system's name as OpenTelemetry spells it (`db.system.name`).
    pub fn system_name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// A pooled connection to a database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    relaxed: Option<AnyPool>,
    backend: Backend,
    /// The normalized URL (PostgreSQL only: for native connections).
    pg_url: Option<String>,
}

/// Options for [`Db::connect`].
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Maximum pool size.
    pub max_connections: u32,
    /// How long to wait for a free connection.
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl Db {
    /// Connects to `url` (`sqlite:` path or `postgres://` URL) and applies the migrations.
    pub async fn connect(
        url: &str,
        options: &DbOptions,
        migrations: &Migrations,
    ) -> anyhow::Result<Db> {
        let db = Db::connect_unmigrated(url, options).await?;
        let migrator = match db.backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        };
        migrator.run(&db.pool).await.with_context(|| {
            format!("cannot apply the {} database's migrations", migrations.name)
        })?;
        Ok(db)
    }

    /// Connects to `url` without applying any migration (a database another program owns).
    pub async fn connect_unmigrated(url: &str, options: &DbOptions) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let (url, backend) = normalize_url(url)?;
        let connect_options = AnyConnectOptions::from_str(&url)
            .with_context(|| format!("invalid database URL {}", redact(&url)))?;
        if backend == Backend::Postgres {
            // One direct connection first: a pool reports an unreachable server only as a
            // timeout, after it, without the cause.
            use sqlx::Connection as _;
            match sqlx::AnyConnection::connect_with(&connect_options).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                }
                Err(err) => anyhow::bail!(
                    "cannot connect to {}: {err} (is PostgreSQL running and reachable there? check the URL)",
                    redact(&url)
                ),
            }
        }
        let pool = pool_options(options, backend, false)
            .connect_with(connect_options.clone())
            .await
            .with_context(|| format!("cannot connect to {}", redact(&url)))?;
        let relaxed = match backend {
            Backend::Sqlite => None,
            // Lazy: a database that never uses it opens no connection for it.
            Backend::Postgres => {
                Some(pool_options(options, backend, true).connect_lazy_with(connect_options))
            }
        };
        Ok(Db {
            pool,
            relaxed,
            backend,
            pg_url: (backend == Backend::Postgres).then_some(url),
        })
    }

    /// The pool, for running queries; every commit is durable before it returns.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that will write: on SQLite `BEGIN IMMEDIATE`, which takes the
    /// writer's lock at once (waiting for it like any write), instead of on its first write,
    /// where a transaction that read first fails with "database is locked" when another writer
    /// committed meanwhile (DDL reads the schema before it writes). On PostgreSQL a plain
    /// `BEGIN`.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// [`Db::begin_write`] on the [`Db::relaxed_pool`]: for an intermediate step whose loss in a
    /// database crash a later durable step (or recovery) makes good.
    pub async fn begin_relaxed_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.begin_write().await,
            Backend::Postgres => self.relaxed_pool().begin().await,
        }
    }

    /// A pool whose commits return before they are flushed to disk (PostgreSQL's
    /// `synchronous_commit = off`; on SQLite the same pool as [`Db::pool`]). For intermediate
    /// steps of a multi-step operation whose final step commits through [`Db::pool`]: the
    /// write-ahead log is sequential, so that durable commit flushes every earlier relaxed one
    /// too. A database crash can lose relaxed commits only when no durable commit followed
    /// them yet, and never leaves a later change without the earlier ones; what a caller was
    /// told about (after the durable step) is never lost.
    pub fn relaxed_pool(&self) -> &AnyPool {
        self.relaxed.as_ref().unwrap_or(&self.pool)
    }

    /// A native PostgreSQL connection to the same database, outside the pool, for what `Any`
    /// cannot do (`COPY`); `None` on SQLite.
    pub async fn pg_connection(&self) -> anyhow::Result<Option<sqlx::PgConnection>> {
        use sqlx::Connection as _;
        let Some(url) = &self.pg_url else {
            return Ok(None);
        };
        let options = sqlx::postgres::PgConnectOptions::from_str(url)
            .with_context(|| format!("invalid database URL {}", redact(url)))?;
        let conn = sqlx::PgConnection::connect_with(&options)
            .await
            .with_context(|| format!("cannot connect to {}", redact(url)))?;
        Ok(Some(conn))
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// A statement for this backend, starting with `sql`, to be extended with bound values.
    pub fn statement(&self, sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            placeholder: match self.backend {
                Backend::Sqlite => '?',
                Backend::Postgres => '$',
            },
            ..Statement::default()
        }
    }

    /// Closes every connection of the pools.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(relaxed) = &self.relaxed {
            relaxed.close().await;
        }
    }
}

fn pool_options(options: &DbOptions, backend: Backend, relaxed: bool) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        // No ping before each checkout: it doubles the round trips of every query. A connection
        // that died is found on its next use, fails that one query, and is dropped.
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => {
                        // WAL lets readers run beside the single writer; NORMAL sync is durable
                        // across application crashes, which is what WAL mode documents for it.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Backend::Postgres if relaxed => {
                        conn.execute("SET synchronous_commit = off").await?;
                    }
                    Backend::Postgres => {}
                }
                Ok(())
            })
        })
}

/// The file behind an SQLite URL or path (`None` for PostgreSQL and in-memory databases).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let (normal, backend) = normalize_url(url).ok()?;
    if backend != Backend::Sqlite {
        return None;
    }
    let path = normal.strip_prefix("sqlite://")?;
    let path = path.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// Turns a user-supplied URL into one sqlx accepts and names its backend. A bare path or
/// `sqlite:` URL becomes a file that is created when missing.
fn normalize_url(url: &str) -> anyhow::Result<(String, Backend)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((url.to_owned(), Backend::Postgres));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.trim_start_matches("//");
        let with_mode = if rest.contains("mode=") {
            rest.to_owned()
        } else if rest.contains('?') {
            format!("{rest}&mode=rwc")
        } else {
            format!("{rest}?mode=rwc")
        };
        return Ok((format!("sqlite://{with_mode}"), Backend::Sqlite));
    }
    if url.contains("://") {
        anyhow::bail!(
            "unsupported database URL {}: use a sqlite: path or a postgres:// URL",
            redact(url)
        );
    }
    Ok((format!("sqlite://{url}?mode=rwc"), Backend::Sqlite))
}

/// A URL with any password replaced, safe to print.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether `err` is a unique-constraint violation (on either backend).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// The current time in milliseconds since the Unix epoch (how leases and fences are stored).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The current time as RFC 3339 UTC text with millisecond precision, so that text order is
/// time order on both backends.
pub fn now() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

/// `at` as RFC 3339 UTC text with millisecond precision (the format of every stored time).
pub fn timestamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("shop.db").unwrap(),
            ("sqlite://shop.db?mode=rwc".to_owned(), Backend::Sqlite)
        );
        assert_eq!(
            normalize_url("sqlite:///tmp/x.db").unwrap().0,
            "sqlite:///tmp/x.db?mode=rwc"
        );
        assert_eq!(
            normalize_url("sqlite://x.db?mode=ro").unwrap().0,
            "sqlite://x.db?mode=ro"
        );
        assert_eq!(
            normalize_url("postgres://u@h/db").unwrap().1,
            Backend::Postgres
        );
        assert!(normalize_url("mysql://h/db").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("shop.db"), "shop.db");
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_named_with_its_cause() {
        let err = Db::connect_unmigrated(
            "postgres://someone:secret@127.0.0.1:1/shop",
            &DbOptions::default(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("cannot connect to postgres://someone:"),
            "{text}"
        );
        assert!(
            !text.contains("secret"),
            "the password is not printed: {text}"
        );
        assert!(
            text.to_lowercase().contains("refused"),
            "the cause is named: {text}"
        );
        assert!(!text.contains("timed out"), "{text}");
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(sqlite_file("shop.db"), Some("shop.db".into()));
        assert_eq!(
            sqlite_file("sqlite:///tmp/x.db?mode=rwc"),
            Some("/tmp/x.db".into())
        );
        assert_eq!(sqlite_file("sqlite://x.db"), Some("x.db".into()));
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }

    #[test]
    fn timestamps_sort_as_text() {
        let a = now();
        assert_eq!(a.len(), "2026-01-01T00:00:00.000Z".len(), "{a}");
        assert!(a.ends_with('Z'));
    }
}

/// A statement assembled at run time (see [`Db::statement`]). Placeholders are `$n` on
/// PostgreSQL and anonymous `?` on SQLite. (sqlx's `QueryBuilder<Any>` writes `?` everywhere,
/// which PostgreSQL rejects. On SQLite, sqlx asks `sqlite3_bind_parameter_name` for every
/// parameter, which scans the statement's named parameters: with `$n` or `?n` a bulk insert of
/// thousands of values is quadratic, 14 s instead of 0.5 s for the 100,000-product seed.)
#[derive(Default)]
pub struct Statement {
    sql: String,
    placeholder: char,
    args: sqlx::any::AnyArguments<'static>,
    binds: usize,
    error: Option<sqlx::error::BoxDynError>,
}

impl Statement {
    /// Appends SQL text.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'static + sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        use sqlx::Arguments;
        if let Err(err) = self.args.add(value) {
            self.error.get_or_insert(err);
        }
        self.binds += 1;
        self.sql.push(self.placeholder);
        if self.placeholder == '$' {
            self.sql.push_str(&self.binds.to_string());
        }
        self
    }

    /// Appends `v1, v2, ...` as placeholders.
    pub fn bind_list<T, I>(&mut self, values: I) -> &mut Self
    where
        I: IntoIterator<Item = T>,
        T: 'static + sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self
    }

    /// Appends `VALUES (...), (...)`, one tuple per item, each filled by `row`.
    pub fn values<I, F>(&mut self, items: I, mut row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(&mut Tuple<'_>, I::Item),
    {
        self.push(" VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { "), (" });
            row(
                &mut Tuple {
                    statement: self,
                    first: true,
                },
                item,
            );
        }
        self.push(")")
    }

    /// The query, ready to execute; the arguments move into it.
    pub fn query(
        &mut self,
    ) -> Result<sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>>, sqlx::Error> {
        if let Some(err) = self.error.take() {
            return Err(sqlx::Error::Encode(err));
        }
        // Owned values: the 'static arguments shorten to the statement's borrow.
        let args: sqlx::any::AnyArguments<'_> = std::mem::take(&mut self.args);
        Ok(sqlx::query_with(&self.sql, args))
    }
}

/// One `(...)` tuple of [`Statement::values`].
pub struct Tuple<'s> {
    statement: &'s mut Statement,
    first: bool,
}

impl Tuple<'_> {
    /// Appends a bound value to the tuple.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'static + sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        if !self.first {
            self.statement.push(", ");
        }
        self.first = false;
        self.statement.bind(value);
        self
    }
}
