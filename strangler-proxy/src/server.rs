//! Serving: the accept loop (HTTP/1.1 with keep-alive, and HTTP/2 from clients that speak it),
//! header size limits, and graceful shutdown (stop accepting, let in-flight requests finish,
//! bounded by a timeout).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Config;
use crate::proxy::Proxy;

/// The data plane bound to its listener.
pub struct Server {
    listener: TcpListener,
    proxy: Arc<Proxy>,
    max_header_bytes: usize,
    shutdown_timeout: Duration,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port).
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Server {
            listener,
            proxy: Arc::new(Proxy::new(config)),
            max_header_bytes: config.max_header_bytes,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The data plane, for the control plane to drive.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.proxy)
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .max_buf_size(self.max_header_bytes);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let proxy = Arc::clone(&self.proxy);
                    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                        let proxy = Arc::clone(&proxy);
                        // A span per request; debug level, so it costs nothing unless enabled
                        // (RUST_LOG=strangler_proxy=debug).
                        let span = tracing::debug_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            client = %peer,
                            carveout = tracing::field::Empty,
                            target = tracing::field::Empty,
                            status = tracing::field::Empty,
                        );
                        async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }.instrument(span)
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!("shutting down: draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.shutdown_timeout) => {
                tracing::warn!("in-flight requests did not finish in time; stopping anyway");
            }
        }
        Ok(())
    }
}
