//! What the `inventory-service` binary does (and `strangler inventory-service`, the same command in
//! the one CLI).

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(config: crate::config::Config) -> anyhow::Result<()> {
    let service = crate::Service::build(&config).await?;
    // Printed on stdout so scripts and tests can find the port when listening on port 0.
    println!("listening on http://{}", service.local_addr());
    service.run_until(telemetry::shutdown_signal()).await
}
