//! Dual-write data sync for carve-outs, driven by a mapping file (source tables and columns ↔
//! target tables and columns, with simple invertible transforms):
//!
//! - [`guard`]: triggers that refuse writes on the side that does not own them;
//! - [`capture`]: triggers write every change of the source tables into a change log in the
//!   writer's own transaction (SQLite and PostgreSQL), skipping the writes sync itself makes;
//! - [`relay`]: applies the log to the target in order, each batch with its checkpoint in one
//!   transaction, never past a change that may still commit;
//! - [`parked`]: the changes the target refused, parked by key while the rest flows on;
//! - [`verify`]: compares both sides on the mapped form of every row;
//! - [`sides`]: a carve-out's mapping and databases, opened and checked for one direction;
//! - `txn`: the one transaction every write to a target goes through (the stream's lock, the
//!   mark that keeps the sync's writes from being captured again, the checkpoint).
//!
//! The same mapping runs forward (monolith → service) and, reversed, backward.

pub mod backfill;
pub mod capture;
pub mod guard;
pub mod mapping;
pub mod metrics;
pub mod parked;
pub mod relay;
pub mod schema;
pub mod sides;
mod txn;
pub mod verify;
