//! The `strangler` binary.

use clap::Parser;
use strangler::Command;

// `strangler proxy` serves as the `strangler-proxy` binary does, with its allocator (see
// BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = strangler::Cli::parse();
    // A server logs what it does (info and up); an operator command only its libraries'
    // warnings (a parked change, a failed relay step). RUST_LOG for more.
    let filter = if cli.command.serves() {
        "info,sqlx=warn"
    } else {
        "warn"
    };
    let telemetry = telemetry::init(cli.command.service_name(), cli.log.log_format, filter);
    let result = match cli.command {
        // The proxy builds the runtime its configuration asks for.
        Command::Proxy(args) => strangler_proxy::cli::main(&args).map(|()| String::new()),
        command => {
            let runtime = if command.serves() {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            };
            match runtime {
                Ok(runtime) => runtime.block_on(strangler::run(strangler::Cli {
                    command,
                    log: cli.log,
                })),
                Err(err) => Err(err.into()),
            }
        }
    };
    match result {
        Ok(output) => {
            print!("{output}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) if err.downcast_ref::<strangler::Failed>().is_some() => {
            print!("{err}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            telemetry.report(&err);
            std::process::ExitCode::FAILURE
        }
    }
}
