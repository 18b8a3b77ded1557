//! End-to-end tests: the real applications served on 127.0.0.1 port 0, driven over HTTP.

// A panic is how a test reports an unexpected error.
#![allow(clippy::unwrap_used)]

#[macro_use]
extern crate e2e;

mod catalog_sync;
mod inventory_saga;
mod inventory_shop;
mod shop;
