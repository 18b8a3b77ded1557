//! What the `monolith` binary does (and `strangler monolith`, the same command in the one CLI).

use crate::app::Application;
use crate::config::{Cli, Command, SeedConfig, ServeConfig};
use crate::db::{Db, DbOptions};

/// Runs a parsed command line: serve (the default) or seed.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Seed(config)) => seed(config).await,
        Some(Command::Serve(config)) => serve(config).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let app = Application::build(&config).await?;
    // Printed on stdout so scripts and tests can find the port when listening on port 0.
    println!("listening on http://{}", app.local_addr());
    app.run_until(telemetry::shutdown_signal()).await
}

async fn seed(config: SeedConfig) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url, &DbOptions::default()).await?;
    let report = crate::seed::seed(&db, config.products, config.customers, !config.quiet).await?;
    println!(
        "seeded {} products (with stock) and {} customers into {} in {:.2?}",
        report.products,
        report.customers,
        crate::db::redact(&config.database_url),
        report.elapsed
    );
    db.close().await;
    Ok(())
}
