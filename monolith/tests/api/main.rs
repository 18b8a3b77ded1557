#![allow(unreachable_pub)] // helpers are `pub` to the test modules of this one binary
//! The shop's integration tests, one binary: in-process requests (`Router::oneshot`) against a
//! fresh database per test, plus process-level tests of the `monolith` binary.
//!
//! Tests declared with `db_test!` run twice: on SQLite, and on PostgreSQL. The PostgreSQL variant
//! needs `TEST_DATABASE_URL` and is marked ignored, so a plain `cargo test` lists it as
//! `ignored, PostgreSQL: ...`; `.ci/run` runs those with `-- --ignored`. Each gets its own schema.

/// Declares the SQLite and PostgreSQL variants of `async fn $name(db: TestDb)`.
macro_rules! db_test {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::TestDb::sqlite().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "PostgreSQL: set TEST_DATABASE_URL and run with --ignored"]
            async fn postgres() {
                super::$name($crate::helpers::TestDb::postgres().await).await
            }
        }
    )*};
}

mod accounts;
mod boundaries;
mod catalog;
mod cli;
mod errors;
mod helpers;
mod inventory;
mod ops;
mod orders;
