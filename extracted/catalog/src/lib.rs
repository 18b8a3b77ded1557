//! The catalog service, carved out of the monolith: the same HTTP contract as the monolith's
//! `/catalog/...` routes (the same JSON, errors and pagination), on a schema of its own
//! (`products` with `product_id`, `title`, `summary`, `price_mills` and `price_currency`, and a
//! `product_search` table kept by triggers).

pub mod cli;
pub mod config;
pub mod faults;
pub mod http;
pub mod problem;
pub mod states;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

use crate::config::Config;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The service's migrations.
pub const MIGRATIONS: sqlkit::Migrations = sqlkit::Migrations {
    name: "catalog service",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// A catalog service bound to its listener.
pub struct Service {
    listener: TcpListener,
    router: axum::Router,
    db: sqlkit::Db,
}

impl Service {
    /// Connects the database (applying migrations) and binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Service> {
        let db = sqlkit::Db::connect(
            &config.database_url,
            &sqlkit::DbOptions::default(),
            &MIGRATIONS,
        )
        .await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut router = http::router(db.clone());
        if config.provider_states {
            tracing::warn!(
                path = states::PATH,
                "the provider-state hook is on: it rewrites data"
            );
            router = router.merge(states::router(db.clone()));
        }
        if config.fault_injection {
            tracing::warn!(path = faults::PATH, "the fault-injection hook is on");
            let injected = std::sync::Arc::new(faults::Faults::default());
            router = router
                .layer(axum::middleware::from_fn_with_state(
                    injected.clone(),
                    faults::inject,
                ))
                .merge(faults::router(injected));
        }
        let router = telemetry::metrics::observe(router, telemetry::metrics::Metrics::new());
        Ok(Service {
            listener,
            router,
            db,
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

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.db.close().await;
        Ok(())
    }
}
