//! Test support shared by every crate's integration tests, and (in `tests/`) the end-to-end
//! tests that serve the real applications on port 0 and talk HTTP to them.
//!
//! - [`TestDb`]: a database of its own per test, SQLite (a file in a temporary folder) or
//!   PostgreSQL (a fresh schema, dropped afterwards) on the server named by [`PG_ENV`].
//! - [`db_test!`]: declares the SQLite and the PostgreSQL variant of a test. The PostgreSQL one
//!   is `#[ignore]`d with the reason shown by `cargo test`, and `.ci/run` runs it with
//!   `-- --ignored`; run without [`PG_ENV`] it fails and says why, it never passes vacuously.
//! - [`eventually`]: polls a condition with a deadline, for timing-sensitive checks.

use std::time::{Duration, Instant};

use sqlx::Connection;

/// The env var naming the PostgreSQL server of the PostgreSQL test variants.
pub const PG_ENV: &str = "TEST_DATABASE_URL";

/// A database of its own for one test.
pub struct TestDb {
    /// The URL to connect to (sqlite path, or postgres URL with the schema as search path).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(String, String)>,
}

impl TestDb {
    /// A fresh SQLite file in a temporary folder.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        TestDb {
            url,
            _dir: Some(dir),
            schema: None,
        }
    }

    /// A fresh schema on the PostgreSQL server named by [`PG_ENV`].
    pub async fn postgres() -> TestDb {
        let base = std::env::var(PG_ENV).unwrap_or_else(|_| {
            panic!(
                "{PG_ENV} is not set: the PostgreSQL variants need a server, \
                 e.g. {PG_ENV}=postgres://postgres@127.0.0.1:5432/test"
            )
        });
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .expect("create schema");
        conn.close().await.ok();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        TestDb {
            url,
            _dir: None,
            schema: Some((base, schema)),
        }
    }
}

/// A fresh SQLite database, and a fresh PostgreSQL schema when [`PG_ENV`] is set (otherwise
/// it prints that PostgreSQL is skipped). For benchmarks, which measure whatever is available.
pub async fn available_backends() -> Vec<(&'static str, TestDb)> {
    let mut backends = vec![("sqlite", TestDb::sqlite().await)];
    if std::env::var(PG_ENV).is_ok() {
        backends.push(("postgres", TestDb::postgres().await));
    } else {
        println!("postgres: skipped ({PG_ENV} is not set)");
    }
    backends
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, schema)) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime: clean up from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&base)
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
    }
}

/// Declares the SQLite and PostgreSQL variants of each `async fn $name(db: TestDb)`.
#[macro_export]
macro_rules! db_test {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::TestDb::sqlite().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "PostgreSQL: set TEST_DATABASE_URL and run with --ignored"]
            async fn postgres() {
                super::$name($crate::TestDb::postgres().await).await
            }
        }
    )*};
}

/// The env var naming the NATS server (with JetStream) of the JetStream test variants.
pub const NATS_ENV: &str = "TEST_NATS_URL";

/// A message transport of its own for one test: a namespace no other test uses.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The transport's URL (`embedded?namespace=...` or `nats://...?namespace=...`).
    pub url: String,
    /// Whether it is JetStream.
    pub jetstream: bool,
}

impl Broker {
    fn namespace() -> String {
        format!("t_{}", uuid::Uuid::new_v4().simple())
    }

    /// The embedded (in-process) transport.
    pub fn embedded() -> Broker {
        Broker {
            url: format!("embedded?namespace={}", Self::namespace()),
            jetstream: false,
        }
    }

    /// NATS JetStream at [`NATS_ENV`]; panics (never passes vacuously) when it is not set.
    pub fn jetstream() -> Broker {
        let base = std::env::var(NATS_ENV).unwrap_or_else(|_| {
            panic!(
                "{NATS_ENV} is not set: the JetStream variants need a NATS server with JetStream, \
                 e.g. {NATS_ENV}=nats://127.0.0.1:4222"
            )
        });
        Broker {
            url: format!("{base}?namespace={}", Self::namespace()),
            jetstream: true,
        }
    }
}

/// Declares the variants of each `async fn $name(db: TestDb, broker: Broker)`: SQLite with the
/// embedded transport (run by default), SQLite and PostgreSQL with NATS JetStream (`#[ignore]`d
/// with the reason; `.ci/run` runs them with `-- --ignored`, [`NATS_ENV`] and [`PG_ENV`] set).
#[macro_export]
macro_rules! saga_test {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_embedded() {
                super::$name($crate::TestDb::sqlite().await, $crate::Broker::embedded()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "NATS JetStream: set TEST_NATS_URL and run with --ignored"]
            async fn sqlite_jetstream() {
                super::$name($crate::TestDb::sqlite().await, $crate::Broker::jetstream()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "PostgreSQL and NATS JetStream: set TEST_DATABASE_URL and TEST_NATS_URL and run with --ignored"]
            async fn postgres_jetstream() {
                super::$name($crate::TestDb::postgres().await, $crate::Broker::jetstream()).await
            }
        }
    )*};
}

/// Polls `check` every 10 ms until it holds; panics naming `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
