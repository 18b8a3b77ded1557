//! Command line and environment configuration of the `monolith` binary.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The modular monolith shop.
#[derive(Debug, Parser)]
#[command(
    name = "monolith",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the shop's HTTP API (the default).
    Serve(ServeConfig),
    /// Fill a database with generated customers, products and stock.
    Seed(SeedConfig),
}

/// Configuration of the HTTP server.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Database: an SQLite file path (created if missing) or a postgres:// URL
    /// (SHOP_DATABASE_URL; the generic DATABASE_URL when that is unset).
    #[arg(long, env = "SHOP_DATABASE_URL", default_value_t = default_database_url())]
    pub database_url: String,
    /// Largest pool of database connections.
    #[arg(long, env = "SHOP_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How long the payment provider may take before a charge counts as timed out (ms).
    #[arg(long, env = "SHOP_PAYMENT_TIMEOUT_MS", default_value_t = 2000)]
    pub payment_timeout_ms: u64,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long, env = "SHOP_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// How long shutdown waits for in-flight requests (seconds).
    #[arg(long, env = "SHOP_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Settle orders a crash left pending for longer than this (seconds): at start, then every
    /// `--recover-interval-ms`. Orders whose saga runs in this process are never touched; the
    /// age protects the sagas of other processes sharing the database, so keep it well above
    /// the payment timeout when several monoliths share one.
    #[arg(long, env = "SHOP_RECOVER_AFTER", default_value_t = 60)]
    pub recover_after: u64,
    /// How often recovery looks for orders a crash left pending (ms).
    #[arg(long, env = "SHOP_RECOVER_INTERVAL_MS", default_value_t = 5000)]
    pub recover_interval_ms: u64,
    /// Seed this many products (with stock) before serving, if the catalog is empty.
    #[arg(long, env = "SHOP_SEED_PRODUCTS", default_value_t = 0)]
    pub seed_products: u64,
    /// Seed this many customers before serving, if there are none.
    #[arg(long, env = "SHOP_SEED_CUSTOMERS", default_value_t = 0)]
    pub seed_customers: u64,
    /// Reach the catalog over HTTP at this URL (the extracted catalog service) instead of
    /// in process; the monolith's own catalog routes and its other modules use it.
    #[arg(long, env = "SHOP_CATALOG_URL")]
    pub catalog_url: Option<String>,
    /// Timeout of each call to an HTTP catalog (ms).
    #[arg(long, env = "SHOP_CATALOG_TIMEOUT_MS", default_value_t = 2000)]
    pub catalog_timeout_ms: u64,
    /// The message transport of the orders saga once the inventory is carved out: `embedded`
    /// (in process, for a stack that runs everything in one process) or a NATS URL
    /// (`nats://127.0.0.1:4222`, JetStream). Unset: the inventory is reached in process only.
    /// With one, the saga sends its commands by message whenever the data sync's write guard
    /// says the inventory's service owns the writes.
    #[arg(long, env = "SHOP_INVENTORY_TRANSPORT")]
    pub inventory_transport: Option<String>,
    /// How long a message may stay unacknowledged before the transport delivers it again (ms).
    #[arg(long, env = "SHOP_MESSAGE_ACK_WAIT_MS", default_value_t = 5000)]
    pub message_ack_wait_ms: u64,
    /// How long `POST /orders` waits for an order to settle before answering 202 with the order
    /// still pending (ms).
    #[arg(long, env = "SHOP_SETTLE_WAIT_MS", default_value_t = 10_000)]
    pub settle_wait_ms: u64,
    /// How long a reservation holds stock before it expires unless committed (seconds).
    #[arg(long, env = "SHOP_RESERVATION_TTL_S", default_value_t = 600)]
    pub reservation_ttl_s: u64,
    /// Serve the provider-state hook for contract verification
    /// (`POST /_contracts/provider-states`). It rewrites data: test environments only.
    #[arg(long, env = "SHOP_PROVIDER_STATES", default_value_t = false)]
    pub provider_states: bool,
}

/// The database when neither `--database-url` nor `SHOP_DATABASE_URL` names one: the generic
/// `DATABASE_URL`, else `shop.db`.
fn default_database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "shop.db".to_owned())
}

impl ServeConfig {
    /// The defaults, as if no flag or variable were given.
    pub fn defaults() -> Self {
        Cli::parse_from(["monolith"]).serve
    }

    /// The payment timeout as a duration.
    pub fn payment_timeout(&self) -> Duration {
        Duration::from_millis(self.payment_timeout_ms)
    }

    /// The saga's waits.
    pub fn saga_timing(&self) -> crate::orders::SagaTiming {
        crate::orders::SagaTiming {
            settle_wait: Duration::from_millis(self.settle_wait_ms),
            reservation_ttl: Duration::from_secs(self.reservation_ttl_s.max(1)),
        }
    }
}

/// Configuration of `monolith seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedConfig {
    /// How many products (each with stock) to add.
    #[arg(long, default_value_t = 1000)]
    pub products: u64,
    /// How many customers to add.
    #[arg(long, default_value_t = 100)]
    pub customers: u64,
    /// Database: an SQLite file path (created if missing) or a postgres:// URL
    /// (SHOP_DATABASE_URL; the generic DATABASE_URL when that is unset).
    #[arg(long, env = "SHOP_DATABASE_URL", default_value_t = default_database_url())]
    pub database_url: String,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
}
