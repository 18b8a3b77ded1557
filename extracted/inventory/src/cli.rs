//! What the `inventory-service` binary does (and `strangler inventory-service`, the same command in
//! the one CLI).

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(config: crate::config::Config) -> anyhow::Result<()> {
    let service = crate::Service::build(&config).await?;
    tracing::info!(listen = %service.local_addr(), "inventory service ready");
    service.run_until(shutdown_signal()).await
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
