//! Configuration: flags, each also from an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// The inventory service.
#[derive(Debug, Clone, Parser)]
#[command(name = "inventory-service", version)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "INVENTORY_LISTEN", default_value = "127.0.0.1:8084")]
    pub listen: SocketAddr,
    /// Database: an SQLite file path (created if missing) or a postgres:// URL.
    #[arg(long, env = "INVENTORY_DATABASE_URL", default_value = "inventory.db")]
    pub database_url: String,
    /// The saga's message transport: `embedded` (in process: only when the orders saga runs
    /// in the same process) or a NATS URL (`nats://127.0.0.1:4222`, JetStream).
    #[arg(
        long,
        env = "INVENTORY_TRANSPORT",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub transport: String,
    /// How long a command may stay unacknowledged before the transport delivers it again (ms).
    #[arg(long, env = "INVENTORY_ACK_WAIT_MS", default_value_t = 5000)]
    pub ack_wait_ms: u64,
    /// Where products are looked up (the catalog's base URL: the proxy, the monolith or the
    /// catalog service); without it, a product with no stock record is answered 404.
    #[arg(long, env = "INVENTORY_CATALOG_URL")]
    pub catalog_url: Option<String>,
    /// Serve the provider-state hook for contract verification
    /// (`POST /_contracts/provider-states`). It rewrites data: test environments only.
    #[arg(long, env = "INVENTORY_PROVIDER_STATES", default_value_t = false)]
    pub provider_states: bool,
    /// How often reservations past their expiry are released (ms).
    #[arg(long, env = "INVENTORY_EXPIRE_EVERY_MS", default_value_t = 1000)]
    pub expire_every_ms: u64,
}

impl Config {
    /// The defaults, as if no flag or variable were given.
    pub fn defaults() -> Self {
        Config::parse_from(["inventory-service"])
    }

    /// The acknowledgement wait.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms.max(100))
    }
}
