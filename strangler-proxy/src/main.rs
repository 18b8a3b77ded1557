//! The `strangler-proxy` binary: parses the configuration and serves.

use clap::Parser;
use strangler_proxy::config::ProxyArgs;
use tracing_subscriber::EnvFilter;

// Many small, short-lived allocations per request (headers, futures): mimalloc serves them
// faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not take the process down (the default reports the failed
        // write with eprintln!, which panics).
        .log_internal_errors(false)
        .init();
    let args = ProxyArgs::parse();
    match strangler_proxy::cli::main(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
