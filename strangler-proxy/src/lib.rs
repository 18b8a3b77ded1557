//! The strangler-fig proxy: sends the routes of carved-out pieces of a monolith to their new
//! services, phase by phase, and everything else to the monolith.
//!
//! Reading order:
//! - [`config`]: flags and the TOML file, validated into a [`config::Config`];
//! - [`routes`]: route patterns and the most-specific-wins table;
//! - [`phase`]: phases, the per-request decision, and the sticky monotone canary buckets;
//! - [`proxy`]: the request path (hygiene, target choice, fallback, shadow), over an immutable
//!   routing snapshot that phase changes swap atomically;
//! - [`upstream`], [`resilience`]: pooled clients, breakers, retries within a budget;
//! - [`body`], [`hygiene`]: streamed bodies, header rules;
//! - [`shadow`] and [`compare`]: shadow reads and the response comparator;
//! - [`server`]: the accept loop and graceful shutdown;
//! - [`control`]: phases in a shared control database, the audit log, the admin API;
//! - [`app`]: one replica, all of the above served together.

pub mod analysis;
pub mod app;
pub mod body;
pub mod capture;
pub mod cli;
pub mod compare;
pub mod config;
pub mod control;
pub mod framing;
pub mod hygiene;
pub mod metrics;
pub mod phase;
mod problem;
pub mod proxy;
pub mod resilience;
pub mod rollout;
pub mod routes;
pub mod server;
pub mod shadow;
pub mod upstream;
