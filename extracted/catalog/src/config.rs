//! Configuration: flags, each also from an environment variable.

use std::net::SocketAddr;

use clap::Parser;

/// The catalog service.
#[derive(Debug, Clone, Parser)]
#[command(name = "catalog-service", version)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CATALOG_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Database: an SQLite file path (created if missing) or a postgres:// URL.
    #[arg(long, env = "CATALOG_DATABASE_URL", default_value = "catalog.db")]
    pub database_url: String,
    /// Serve the provider-state hook for contract verification
    /// (`POST /_contracts/provider-states`). It rewrites data: test environments only.
    #[arg(long, env = "CATALOG_PROVIDER_STATES", default_value_t = false)]
    pub provider_states: bool,
    /// Serve the fault-injection hook (`PUT /_faults {"fail_percent": N, "delay_ms": M}`),
    /// to watch a rollout roll itself back. Demonstrations and tests only.
    #[arg(long, env = "CATALOG_FAULT_INJECTION", default_value_t = false)]
    pub fault_injection: bool,
}

impl Config {
    /// The defaults, as if no flag or variable were given.
    pub fn defaults() -> Self {
        Config::parse_from(["catalog-service"])
    }
}
