//! The `catalog-service` binary.

use clap::Parser;

/// The `catalog-service` command line: the service's configuration and the log format.
#[derive(Debug, Parser)]
#[command(name = "catalog-service", version)]
struct Args {
    #[command(flatten)]
    config: catalog_service::config::Config,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init("catalog-service", args.log.log_format, "info,sqlx=warn");
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(catalog_service::cli::run(args.config)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            telemetry.report(&err);
            std::process::ExitCode::FAILURE
        }
    }
}
