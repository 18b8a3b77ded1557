//! Serving: the accept loop (HTTP/1.1 with keep-alive, and HTTP/2 from clients that speak it),
//! one per worker thread ([`Server::run_until`]), its limits, and graceful shutdown (stop
//! accepting, let in-flight requests finish, bounded by a timeout).
//!
//! Limits that keep slow or hostile clients from exhausting the process:
//! - **Header timeout**: a connection must deliver a complete request head within
//!   `header_timeout` of opening (whatever protocol it turns out to speak), and an HTTP/1
//!   connection the same time after each response: that is also how long an idle keep-alive
//!   connection is kept (as HAProxy does when `timeout http-keep-alive` is unset).
//! - **Connection bound**: at most `max_connections` client connections at once. When all are
//!   taken the loop stops accepting (the kernel's backlog holds newcomers) until one closes, so
//!   the process never runs out of file descriptors and its admin API, on its own listener,
//!   stays reachable. [`raise_fd_limit`] lifts the soft descriptor limit at start.
//! - Body idle timeouts and the body size limit are the request path's ([`crate::body`]).
//! - **Strict framing**: a request with both `Content-Length` and `Transfer-Encoding` is answered
//!   400 and the connection closed ([`crate::framing`] reads the heads beside hyper).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::body::ProxyBody;
use crate::config::Config;
use crate::framing::Inspected;
use crate::problem::Problem;
use crate::proxy::Proxy;

/// The data plane bound to its listener.
pub struct Server {
    listener: TcpListener,
    proxy: Arc<Proxy>,
    max_header_bytes: usize,
    header_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
    workers: usize,
}

/// Raises this process's soft limit on open files as far as its hard limit allows, and warns
/// when `max_connections` client connections (each with an upstream connection) may not fit.
pub fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = 2 * max_connections as u64 + 256;
            if limit < needed {
                tracing::warn!(
                    open_files = limit,
                    max_connections,
                    "the open-file limit is below what max_connections needs (2 per connection + 256); lower max_connections or raise the limit"
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot read or raise the open-file limit"),
    }
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
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
            shutdown_timeout: config.shutdown_timeout,
            workers: config.workers.unwrap_or(1).max(1),
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

    /// Serves until `shutdown` completes, then drains. With `workers` above 1, as many
    /// threads accept and serve, each with a single-threaded runtime of its own (the calling
    /// thread is the first): a connection, its requests and their upstream connections stay
    /// on one thread, as in nginx's workers, with no work stealing or cross-thread wake-ups.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Accepting {
            proxy: Arc::clone(&self.proxy),
            slots: Arc::new(tokio::sync::Semaphore::new(self.max_connections)),
            max_header_bytes: self.max_header_bytes,
            header_timeout: self.header_timeout,
            shutdown_timeout: self.shutdown_timeout,
        });
        let mut others = Vec::new();
        let here = if self.workers > 1 {
            let listener = self.listener.into_std()?;
            for index in 1..self.workers {
                let listener = listener.try_clone()?;
                let shared = Arc::clone(&shared);
                let stopped = stopped.clone();
                let (done, finished) = tokio::sync::oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("proxy-worker-{index}"))
                    .spawn(move || {
                        WORKER.set(index);
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build();
                        match runtime {
                            Ok(runtime) => runtime.block_on(async {
                                match TcpListener::from_std(listener) {
                                    Ok(listener) => shared.serve(listener, stopped).await,
                                    Err(err) => {
                                        tracing::error!(error = %err, "a worker cannot listen")
                                    }
                                }
                            }),
                            Err(err) => tracing::error!(error = %err, "cannot start a worker"),
                        }
                        let _ = done.send(());
                    })?;
                others.push(finished);
            }
            TcpListener::from_std(listener)?
        } else {
            self.listener
        };
        let serving = shared.serve(here, stopped);
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => {}
            () = shutdown => {
                let _ = stop.send(true);
                serving.await;
            }
        }
        for finished in others {
            let _ = finished.await;
        }
        Ok(())
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The data-plane worker this thread is (0: the thread that called [`Server::run_until`], and
/// every thread that is no worker).
pub fn worker() -> usize {
    WORKER.get()
}

/// What every worker's accept loop shares.
struct Accepting {
    proxy: Arc<Proxy>,
    /// The connection bound, over all workers.
    slots: Arc<tokio::sync::Semaphore>,
    max_header_bytes: usize,
    header_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Accepting {
    /// Accepts and serves on this thread's runtime until `stopped` turns true, then drains
    /// this worker's connections (bounded by the shutdown timeout).
    async fn serve(&self, listener: TcpListener, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .max_buf_size(self.max_header_bytes)
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        let graceful = GracefulShutdown::new();
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        loop {
            // Back-pressure: no accept until a connection slot is free.
            let slot = tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = &mut stop => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut stop => break,
            };
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
            let (stream, verdicts) = Inspected::new(stream, self.max_header_bytes);
            let proxy = Arc::clone(&self.proxy);
            let asked = Arc::new(AtomicBool::new(false));
            let first = Arc::clone(&asked);
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                first.store(true, Ordering::Relaxed);
                let proxy = Arc::clone(&proxy);
                let span = request_span(&request, peer);
                // Each HTTP/1 request takes its verdict, in order (HTTP/2 has no such header).
                let ambiguous =
                    request.version() != http::Version::HTTP_2 && verdicts.next_is_ambiguous();
                async move {
                    if ambiguous {
                        return Ok::<_, Infallible>(ambiguous_framing());
                    }
                    Ok(proxy.handle(request, peer).await)
                }
                .instrument(span)
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            let header_timeout = self.header_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                tokio::pin!(connection);
                // Until its first request a connection is bounded here: hyper's own header
                // timer starts only once the protocol is known, after the first bytes.
                let ended = tokio::select! {
                    ended = &mut connection => Some(ended),
                    () = tokio::time::sleep(header_timeout) => None,
                };
                let ended = match ended {
                    Some(ended) => ended,
                    None if !asked.load(Ordering::Relaxed) => {
                        tracing::debug!(client = %peer, "no request head within the header timeout; closing");
                        return;
                    }
                    None => connection.await,
                };
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!(
            worker = worker(),
            "shutting down: draining in-flight requests"
        );
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.shutdown_timeout) => {
                tracing::warn!("in-flight requests did not finish in time; stopping anyway");
            }
        }
    }
}

/// The answer to a request with both `Content-Length` and `Transfer-Encoding` (see
/// [`crate::framing`]); the connection closes after it, as hyper closes it after any such head.
fn ambiguous_framing() -> hyper::Response<ProxyBody> {
    Problem::new(
        http::StatusCode::BAD_REQUEST,
        "bad-framing",
        "a request with both Content-Length and Transfer-Encoding is refused",
    )
    .with_header(http::header::CONNECTION, "close")
    .into_proxy_response()
}

/// A span per request. When traces are exported it is an info span, a child of the caller's
/// `traceparent`, whose context the forwarded request carries on. Otherwise it is a debug
/// span, which costs nothing unless enabled (`RUST_LOG=strangler_proxy=debug`).
fn request_span<B>(request: &hyper::Request<B>, peer: std::net::SocketAddr) -> tracing::Span {
    use tracing::field::Empty;
    if telemetry::traces_on() {
        let span = tracing::info_span!(
            "request",
            otel.name = "proxy",
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %request.method(),
            url.path = %request.uri().path(),
            client.address = %peer.ip(),
            strangler.carveout = Empty,
            strangler.phase = Empty,
            strangler.target = Empty,
            strangler.shadow = Empty,
            strangler.fallback = Empty,
            http.response.status_code = Empty,
            trace_id = Empty,
        );
        telemetry::http::set_parent(&span, request.headers());
        span
    } else {
        tracing::debug_span!(
            "request",
            http.request.method = %request.method(),
            url.path = %request.uri().path(),
            client.address = %peer,
            strangler.carveout = Empty,
            strangler.phase = Empty,
            strangler.target = Empty,
            strangler.shadow = Empty,
            strangler.fallback = Empty,
            http.response.status_code = Empty,
            trace_id = Empty,
        )
    }
}
