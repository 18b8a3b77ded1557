//! The inventory service, carved out of the monolith: the monolith's `/inventory/{product_id}`
//! routes (the same JSON and errors) on a schema of its own (`stock_levels`, `reservations`
//! that expire, and the `stock_movements` ledger), and the inventory's side of the orders saga:
//! the saga's commands consumed from the message transport, each applied once with its reply
//! ([`commands`]).

pub mod cli;
pub mod commands;
pub mod config;
pub mod http;
pub mod problem;
pub mod states;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use messaging::outbox::Outbox;
use messaging::Transport;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

use crate::config::Config;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The service's migrations.
pub const MIGRATIONS: sqlkit::Migrations = sqlkit::Migrations {
    name: "inventory service",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// The service's outbox (its replies to the saga).
pub fn outbox() -> Outbox {
    Outbox::new("outbox")
}

/// An inventory service bound to its listener and connected to its transport.
pub struct Service {
    listener: TcpListener,
    router: axum::Router,
    db: sqlkit::Db,
    transport: Arc<dyn Transport>,
    expire_every: Duration,
}

impl Service {
    /// Connects the database (applying migrations) and the transport, and binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Service> {
        let transport = messaging::connect(&config.transport, config.ack_wait()).await?;
        Self::build_with(config, transport).await
    }

    /// [`Service::build`] with a transport of the caller's choice (tests, the stack).
    pub async fn build_with(
        config: &Config,
        transport: Arc<dyn Transport>,
    ) -> anyhow::Result<Service> {
        let db = sqlkit::Db::connect(
            &config.database_url,
            &sqlkit::DbOptions::default(),
            &MIGRATIONS,
        )
        .await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut router = http::router(http::Http::new(db.clone(), config.catalog_url.as_deref())?);
        if config.provider_states {
            tracing::warn!(
                path = states::PATH,
                "the provider-state hook is on: it rewrites data"
            );
            router = router.merge(states::router(db.clone()));
        }
        let router = telemetry::metrics::observe(router, telemetry::metrics::Metrics::new());
        Ok(Service {
            listener,
            router,
            db,
            transport,
            expire_every: Duration::from_millis(config.expire_every_ms.max(10)),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Its database.
    pub fn db(&self) -> &sqlkit::Db {
        &self.db
    }

    /// Serves HTTP, consumes the saga's commands, relays its replies and expires reservations
    /// until `shutdown` completes; then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let outbox = outbox();
        let commands = commands::Commands::new(self.db.clone(), outbox.clone());
        let tasks = [
            tokio::spawn(commands.clone().run(self.transport.clone(), stopped())),
            tokio::spawn(commands.expire_forever(self.expire_every, stopped())),
            tokio::spawn(outbox.relay(
                self.db.clone(),
                self.transport.clone(),
                Duration::from_millis(200),
                stopped(),
            )),
        ];
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        self.db.close().await;
        served.context("the server failed")
    }
}
