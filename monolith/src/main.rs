//! The `monolith` binary: parses the configuration and hands over to the library.

use clap::Parser;
use monolith::config::Cli;

/// The `monolith` command line: the shop's commands and the log format.
#[derive(Debug, Parser)]
#[command(name = "monolith", version)]
struct Args {
    #[command(flatten)]
    cli: Cli,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

fn main() -> std::process::ExitCode {
    let Args { cli, log } = Args::parse();
    let telemetry = telemetry::init("monolith", log.log_format, "info,sqlx=warn");
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(monolith::cli::run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            telemetry.report(&err);
            std::process::ExitCode::FAILURE
        }
    }
}
