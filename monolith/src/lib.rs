//! The modular monolith shop that the strangler toolkit carves services out of.
//!
//! Reading order: the schema (`migrations/monolith/`), then [`app`] (how the modules are wired
//! and served), then each module. A module owns the tables that carry its name as prefix and
//! exposes a facade trait; other modules call only the facade:
//!
//! - [`accounts`]: customers ([`accounts::AccountsApi`]);
//! - [`catalog`]: products ([`catalog::CatalogApi`]), the first carve-out candidate;
//! - [`inventory`]: stock and reservations ([`inventory::InventoryApi`]);
//! - [`payments`]: card charges through a provider ([`payments::PaymentsApi`]);
//! - [`orders`]: the order saga ([`orders::OrdersApi`]).
//!
//! The boundaries are checked by [`boundaries`]: a module's code may not name another module's
//! tables or reach into its private parts.

pub mod accounts;
pub mod app;
pub mod boundaries;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod seed;
