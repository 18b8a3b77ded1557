//! Assembling the shop: modules wired through their facades, the router, and the server.
//!
//! [`Services::new`] is the composition root: the only place that chooses which implementation
//! stands behind each facade (today every module in-process; a carve-out swaps one for an HTTP
//! client). [`router`] merges each module's routes with the operational ones, and
//! [`Application`] binds the listener first (so tests can use port 0) and serves until a
//! shutdown signal, draining in-flight requests within a bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::accounts::{self, Accounts, AccountsApi};
use crate::catalog::{self, Catalog, CatalogApi};
use crate::config::ServeConfig;
use crate::db::{Db, DbOptions};
use crate::http::{ops, states};
use crate::inventory::{self, Inventory, InventoryApi};
use crate::orders::{self, Messages, Orders, OrdersApi, SagaTiming};
use crate::payments::{FakeProvider, PaymentProvider, Payments, PaymentsApi};
use telemetry::metrics;

/// Every module of the shop, behind its facade.
#[derive(Clone)]
pub struct Services {
    /// Customers.
    pub accounts: Arc<dyn AccountsApi>,
    /// Products.
    pub catalog: Arc<dyn CatalogApi>,
    /// Stock and reservations.
    pub inventory: Arc<dyn InventoryApi>,
    /// Card charges.
    pub payments: Arc<dyn PaymentsApi>,
    /// Orders (concrete, for start-up recovery).
    pub orders: Arc<Orders>,
}

impl Services {
    /// Wires the in-process modules over `db`, charging through `provider`.
    pub fn new(db: &Db, provider: Arc<dyn PaymentProvider>, payment_timeout: Duration) -> Self {
        let catalog: Arc<dyn CatalogApi> = Arc::new(Catalog::new(db.clone()));
        Self::with_catalog(db, provider, payment_timeout, catalog)
    }

    /// [`Services::new`] with the catalog of the caller's choice (the extracted catalog
    /// service over HTTP, once the catalog runs outside the monolith).
    pub fn with_catalog(
        db: &Db,
        provider: Arc<dyn PaymentProvider>,
        payment_timeout: Duration,
        catalog: Arc<dyn CatalogApi>,
    ) -> Self {
        let accounts: Arc<dyn AccountsApi> = Arc::new(Accounts::new(db.clone()));
        let inventory: Arc<dyn InventoryApi> =
            Arc::new(Inventory::new(db.clone(), catalog.clone()));
        let payments: Arc<dyn PaymentsApi> =
            Arc::new(Payments::new(db.clone(), provider, payment_timeout));
        let orders = Arc::new(Orders::new(
            db.clone(),
            accounts.clone(),
            catalog.clone(),
            inventory.clone(),
            payments.clone(),
        ));
        Services {
            accounts,
            catalog,
            inventory,
            payments,
            orders,
        }
    }

    /// The same modules with the orders saga reaching the inventory by `messages` (when the
    /// inventory's service owns its writes) and waiting as `timing` says.
    pub fn with_saga(mut self, db: &Db, messages: Option<Messages>, timing: SagaTiming) -> Self {
        let mut orders = Orders::new(
            db.clone(),
            self.accounts.clone(),
            self.catalog.clone(),
            self.inventory.clone(),
            self.payments.clone(),
        )
        .with_timing(timing);
        if let Some(messages) = messages {
            orders = orders.with_messages(messages);
        }
        self.orders = Arc::new(orders);
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Shop monolith", description = "The modular monolith shop: accounts, catalog, inventory, orders, payments."),
    tags(
        (name = "accounts", description = "Customers"),
        (name = "catalog", description = "Products"),
        (name = "inventory", description = "Stock"),
        (name = "orders", description = "Orders, placed as a saga"),
        (name = "ops", description = "Health and metadata"),
    )
)]
struct ApiDoc;

/// The shop's HTTP router: every module's routes, the operational endpoints, metrics and
/// problem+json fallbacks, with a body size limit of `body_limit` bytes.
pub fn router(
    services: &Services,
    db: &Db,
    metrics: metrics::Metrics,
    body_limit: usize,
) -> Router {
    let orders: Arc<dyn OrdersApi> = services.orders.clone();
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(accounts::router(services.accounts.clone()))
        .merge(catalog::router(services.catalog.clone()))
        .merge(inventory::router(services.inventory.clone()))
        .merge(orders::router(orders, db.clone()))
        .merge(ops::router(db.clone()))
        .split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let document = Arc::new(api);
    let router = router
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json(document.as_ref().clone()) }
            }),
        )
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit));
    metrics::observe(router, metrics)
}

/// A shop bound to its listener, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    db: Db,
    services: Services,
    shutdown_timeout: Duration,
    recover_after: Duration,
    recover_interval: Duration,
}

impl Application {
    /// Connects the database, applies migrations, seeds if asked, settles orders left pending,
    /// and binds the listener; charges go through the fake provider.
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Application> {
        Self::build_with_provider(config, Arc::new(FakeProvider::new())).await
    }

    /// [`Application::build`] with a payment provider of the caller's choice.
    pub async fn build_with_provider(
        config: &ServeConfig,
        provider: Arc<dyn PaymentProvider>,
    ) -> anyhow::Result<Application> {
        Self::build_with_parts(config, provider, None).await
    }

    /// [`Application::build_with_provider`] with the saga's message transport of the
    /// caller's choice (tests: one that delivers every message twice) instead of the one
    /// `config.inventory_transport` names.
    pub async fn build_with_parts(
        config: &ServeConfig,
        provider: Arc<dyn PaymentProvider>,
        transport: Option<Arc<dyn messaging::Transport>>,
    ) -> anyhow::Result<Application> {
        let options = DbOptions {
            max_connections: config.db_max_connections,
            ..DbOptions::default()
        };
        let db = Db::connect(&config.database_url, &options).await?;
        let services = match &config.catalog_url {
            None => Services::new(&db, provider, config.payment_timeout()),
            Some(url) => {
                tracing::info!(%url, "the catalog runs outside the monolith");
                let catalog = catalog::HttpCatalog::new(
                    url,
                    Duration::from_millis(config.catalog_timeout_ms),
                    2,
                )?;
                Services::with_catalog(&db, provider, config.payment_timeout(), Arc::new(catalog))
            }
        };
        let transport = match (transport, &config.inventory_transport) {
            (Some(transport), _) => Some(transport),
            (None, Some(url)) => Some(
                messaging::connect(url, Duration::from_millis(config.message_ack_wait_ms))
                    .await
                    .context("cannot connect the saga's message transport")?,
            ),
            (None, None) => None,
        };
        let messages = match transport {
            None => None,
            Some(transport) => {
                tracing::info!(transport = %transport.describe(), "the saga reaches a carved-out inventory by message");
                Some(Messages {
                    transport,
                    outbox: orders::outbox(),
                })
            }
        };
        let services = services.with_saga(&db, messages, config.saga_timing());
        if config.seed_products > 0 || config.seed_customers > 0 {
            seed_if_empty(&db, &services, config).await?;
        }
        let recover_after = Duration::from_secs(config.recover_after);
        let recovered = services
            .orders
            .recover(recover_after)
            .await
            .context("cannot settle pending orders")?;
        if recovered != orders::RecoveryReport::default() {
            tracing::warn!(?recovered, "settled orders left pending by an earlier run");
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut router = router(&services, &db, metrics::Metrics::new(), config.body_limit);
        if config.provider_states {
            tracing::warn!(
                path = states::PATH,
                "the provider-state hook is on: it rewrites data"
            );
            router = router.merge(states::router(
                services.catalog.clone(),
                services.inventory.clone(),
            ));
        }
        Ok(Application {
            listener,
            router,
            db,
            services,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout),
            recover_after,
            recover_interval: Duration::from_millis(config.recover_interval_ms.max(10)),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The shop's modules.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish, waiting at most the configured shutdown timeout. Recovery of orders a crash
    /// left pending runs meanwhile.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            let _ = stopping_tx.send(true);
        };
        let recovery = tokio::spawn(
            self.services
                .orders
                .clone()
                .recover_forever(self.recover_after, self.recover_interval),
        );
        let (messages_stop, messages_stopped) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = messages_stopped.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut message_tasks = Vec::new();
        if let Some(messages) = self.services.orders.messages().cloned() {
            message_tasks.push(tokio::spawn(messages.outbox.clone().relay(
                (*self.db).clone(),
                messages.transport.clone(),
                Duration::from_millis(200),
                stopped(),
            )));
            message_tasks.push(tokio::spawn(
                self.services
                    .orders
                    .clone()
                    .consume_replies(messages.transport.clone(), stopped()),
            ));
        }
        let server = axum::serve(self.listener, self.router).with_graceful_shutdown(signal);
        let drain_limit = async move {
            let _ = stopping_rx.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(self.shutdown_timeout).await;
        };
        tokio::select! {
            served = server => served.context("the server failed")?,
            () = drain_limit => tracing::warn!("in-flight requests did not finish in time; stopping anyway"),
        }
        recovery.abort();
        let _ = messages_stop.send(true);
        for task in message_tasks {
            let _ = task.await;
        }
        self.db.close().await;
        Ok(())
    }
}

async fn seed_if_empty(db: &Db, services: &Services, config: &ServeConfig) -> anyhow::Result<()> {
    let has_products = !services
        .catalog
        .list_products(catalog::ProductQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .items
        .is_empty();
    let has_customers = services
        .accounts
        .customer(1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_some();
    let products = if has_products {
        0
    } else {
        config.seed_products
    };
    let customers = if has_customers {
        0
    } else {
        config.seed_customers
    };
    if products == 0 && customers == 0 {
        tracing::info!("the database already has data; not seeding");
        return Ok(());
    }
    let report = crate::seed::seed(db, products, customers, false).await?;
    tracing::info!(
        products = report.products,
        customers = report.customers,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "seeded the database"
    );
    Ok(())
}
