//! The `monolith` binary: parses the configuration and hands over to the library.

use clap::Parser;
use monolith::app::{shutdown_signal, Application};
use monolith::config::{Cli, Command};
use monolith::db::{Db, DbOptions};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not take the process down (the default reports the failed
        // write with eprintln!, which panics).
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Seed(config)) => seed(config).await,
        Some(Command::Serve(config)) => serve(config).await,
        None => serve(cli.serve).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: monolith::config::ServeConfig) -> anyhow::Result<()> {
    let app = Application::build(&config).await?;
    // Printed on stdout so scripts and tests can find the port when listening on port 0.
    println!("listening on http://{}", app.local_addr());
    app.run_until(shutdown_signal()).await
}

async fn seed(config: monolith::config::SeedConfig) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url, &DbOptions::default()).await?;
    let report =
        monolith::seed::seed(&db, config.products, config.customers, !config.quiet).await?;
    println!(
        "seeded {} products (with stock) and {} customers into {} in {:.2?}",
        report.products,
        report.customers,
        monolith::db::redact(&config.database_url),
        report.elapsed
    );
    db.close().await;
    Ok(())
}
