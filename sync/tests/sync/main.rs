//! The sync engine against real databases: every test runs on SQLite and (ignored unless
//! TEST_DATABASE_URL is set) on PostgreSQL, with a source and a target database of its own.

// A panic is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]
// Helpers are `pub` for the test modules of this one binary.
#![allow(unreachable_pub)]

#[macro_use]
extern crate e2e;

mod engine;
