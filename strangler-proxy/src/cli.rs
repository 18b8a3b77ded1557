//! What the `strangler-proxy` binary does (and `strangler proxy`, the same command in the one
//! CLI).

use crate::app::Replica;
use crate::config::{Config, ProxyArgs};
use crate::control::ControlPlane;

/// Serves with the runtime the configuration asks for (`workers`), until SIGINT or SIGTERM;
/// SIGHUP reloads the configuration file.
pub fn main(args: &ProxyArgs) -> anyhow::Result<()> {
    // As many data-plane workers as CPUs this process may use (1 when pinned to one core),
    // each a thread with a single-threaded runtime (see `Server::run_until`): a request, its
    // client connection and its upstream connection stay on one thread. This thread is the
    // first worker, and runs the control plane and the admin API too.
    let mut args = args.clone();
    args.workers = Some(
        args.workers
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1),
    );
    let config = Config::load(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    crate::server::raise_fd_limit(config.max_connections);
    runtime.block_on(serve_config(&args, &config))
}

/// Serves on the current runtime, until SIGINT or SIGTERM; SIGHUP reloads the configuration.
pub async fn serve(args: &ProxyArgs) -> anyhow::Result<()> {
    let config = Config::load(args)?;
    crate::server::raise_fd_limit(config.max_connections);
    serve_config(args, &config).await
}

async fn serve_config(args: &ProxyArgs, config: &Config) -> anyhow::Result<()> {
    let replica = Replica::build(config).await?;
    // Printed on stdout so scripts and tests can find the ports when listening on port 0.
    println!(
        "listening on http://{} (admin http://{})",
        replica.local_addr(),
        replica.admin_addr()
    );
    tokio::spawn(reload_on_sighup(args.clone(), replica.control()));
    replica.run_until(telemetry::shutdown_signal()).await
}

/// SIGHUP reloads the configuration file; an invalid file keeps the running configuration.
async fn reload_on_sighup(args: ProxyArgs, control: ControlPlane) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; reloading is off");
        return;
    };
    while hangups.recv().await.is_some() {
        match Config::load(&args) {
            Ok(config) => match control.reload(&config).await {
                Ok(()) => tracing::info!("reloaded the configuration"),
                Err(err) => {
                    tracing::error!(error = %err, "reloaded the routes, but the control database failed")
                }
            },
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    "the new configuration is invalid; keeping the running one"
                );
            }
        }
    }
}
