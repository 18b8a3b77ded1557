//! One proxy replica: the data plane, its control plane (control database, sync loop) and the
//! admin API, bound to their listeners (port 0 allowed) and served together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::control::store::ControlStore;
use crate::control::{admin, ControlPlane, ReplicaIdentity};
use crate::proxy::Proxy;
use crate::server::Server;

/// A replica, bound and ready to serve.
pub struct Replica {
    server: Server,
    admin: TcpListener,
    control: ControlPlane,
    config: Config,
}

impl Replica {
    /// Connects the control database (seeding it and applying its phases) and binds both
    /// listeners.
    pub async fn build(config: &Config) -> anyhow::Result<Replica> {
        let server = Server::bind(config).await?;
        let admin = TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin API)", config.admin_listen))?;
        let store = ControlStore::connect(&config.control_db)
            .await
            .context("cannot open the control database")?;
        let identity = ReplicaIdentity {
            address: server.local_addr(),
            admin_address: admin.local_addr()?,
            lease: config.routing_lease,
        };
        let control = ControlPlane::start(store, server.proxy(), &identity).await?;
        Ok(Replica {
            server,
            admin,
            control,
            config: config.clone(),
        })
    }

    /// The data plane's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The data plane.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.server.proxy()
    }

    /// The control plane.
    pub fn control(&self) -> ControlPlane {
        self.control.clone()
    }

    /// Serves until `shutdown`: the data plane drains its in-flight requests, then the admin API
    /// and the sync loop stop.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let sync = tokio::spawn(self.control.clone().sync_forever(self.config.sync_interval));
        // Measurements for rollouts, and the rollout controller while this replica holds its
        // lease.
        let rollouts = tokio::spawn(self.control.clone().rollouts_forever());
        let router = admin::router(self.control.clone(), self.config.admin_tokens.clone());
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(async move {
            axum::serve(self.admin, router)
                .with_graceful_shutdown(async {
                    let _ = admin_stopped.await;
                })
                .await
        });
        let served = self.server.run_until(shutdown).await;
        sync.abort();
        rollouts.abort();
        if let Err(err) = self.control.deregister().await {
            tracing::warn!(error = %err, "could not leave the list of replicas; it expires with its lease");
        }
        let _ = admin_stop.send(());
        if let Ok(Err(err)) = admin.await {
            tracing::warn!(error = %err, "the admin API ended with an error");
        }
        served
    }
}
