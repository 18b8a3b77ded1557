//! The `strangler` binary.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    // The libraries' warnings (a parked change, a failed relay step) on stderr; RUST_LOG for
    // more. Colour only on a terminal.
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // A closed stderr must not take the process down (the default reports the failed
        // write with eprintln!, which panics).
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = strangler::Cli::parse();
    match strangler::run(cli).await {
        Ok(output) => {
            print!("{output}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) if err.downcast_ref::<strangler::Failed>().is_some() => {
            print!("{err}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
