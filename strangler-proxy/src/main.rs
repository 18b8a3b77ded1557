//! The `strangler-proxy` binary: parses the configuration and serves.

use clap::Parser;
use strangler_proxy::config::ProxyArgs;

// Many small, short-lived allocations per request (headers, futures): mimalloc serves them
// faster than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The `strangler-proxy` command line: the proxy's flags and the log format.
#[derive(Debug, Parser)]
#[command(name = "strangler-proxy", version, about = "The strangler-fig proxy")]
struct Args {
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    log: telemetry::LogArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init("strangler-proxy", args.log.log_format, "info");
    match strangler_proxy::cli::main(&args.proxy) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            telemetry.report(&err);
            std::process::ExitCode::FAILURE
        }
    }
}
