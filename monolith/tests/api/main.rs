//! The shop's integration tests, one binary: in-process requests (`Router::oneshot`) against a
//! fresh database per test, plus process-level tests of the `monolith` binary.
//!
//! Tests declared with `db_test!` run twice: on SQLite, and on PostgreSQL. The PostgreSQL variant
//! needs `TEST_DATABASE_URL` and is marked ignored, so a plain `cargo test` lists it as
//! `ignored, PostgreSQL: ...`; `.ci/run` runs those with `-- --ignored`. Each gets its own schema.

// Helpers are `pub` for the test modules of this one binary.
#![allow(unreachable_pub)]
// A panic is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]

#[macro_use]
extern crate e2e;

mod accounts;
mod boundaries;
mod catalog;
mod cli;
mod errors;
mod helpers;
mod inventory;
mod ops;
mod orders;
