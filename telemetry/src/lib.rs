//! Logs and traces for every binary, set up in one place.
//!
//! - **Logs** go to stderr, as human text (the default) or, with `--log-format json` or
//!   `STRANGLER_LOG_FORMAT=json`, as one JSON object a line: `timestamp`, `level`, `target`,
//!   `message`, `fields`, `spans`, and inside a request `trace_id` (and `span_id` when traces are
//!   exported). `RUST_LOG` filters both.
//! - **Traces** are exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, configured by the standard variables
//!   (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//!   `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`...);
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns them off. With nothing
//!   configured no exporter, no OpenTelemetry layer and no per-request span of the proxy exist:
//!   [`traces_on`] is one relaxed atomic load.
//! - **Context** travels in W3C `traceparent` headers ([`http`]).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub mod http;
mod json;
pub mod metrics;

pub use opentelemetry::Context;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured): code that builds spans only for
/// traces asks this first.
pub fn traces_on() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// Links `span` to `to`: a follow-up of `to` that is not part of it (a shadow copy).
pub fn link(span: &tracing::Span, to: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    if traces_on() {
        let context = to.context();
        span.add_link(context.span().span_context().clone());
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human text (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// The logging flag every binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// How to write log lines (to stderr): human text or one JSON object a line.
    #[arg(
        long,
        env = "STRANGLER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// Flushes the spans not exported yet when dropped: keep it until the process ends.
#[must_use = "dropping the guard stops the trace export"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    format: LogFormat,
}

impl Telemetry {
    /// Reports the error a command ends with: `error: ...` on stderr, or one JSON log line
    /// (level ERROR) when the logs are JSON, so that every line a collector reads parses.
    pub fn report(&self, err: &dyn std::fmt::Display) {
        match self.format {
            LogFormat::Text => eprintln!("error: {err:#}"),
            LogFormat::Json => tracing::error!("{err:#}"),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Exports what is queued; a collector that is down costs at most the export timeout.
            if let Err(err) = provider.shutdown() {
                eprintln!("warning: could not flush the last spans: {err}");
            }
        }
    }
}

/// Installs the global subscriber: logs in `format` (filtered by `RUST_LOG`, else by
/// `default_filter`) and, when an OTLP endpoint is configured, the trace export as `service`
/// (unless `OTEL_SERVICE_NAME` names it). Call it once, before starting a Tokio runtime.
pub fn init(service: &str, format: LogFormat, default_filter: &str) -> Telemetry {
    // Every layer is filtered: an unfiltered one would enable every callsite of every library
    // (hyper's trace spans on the proxy's hot path among them).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (provider, warning) = match exporter_wanted() {
        Ok(true) => match provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(err) => (None, Some(format!("traces are off: {err}"))),
        },
        Ok(false) => (None, None),
        Err(warning) => (None, Some(warning)),
    };
    let otel = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service.to_owned()))
            .with_tracked_inactivity(false)
            .with_threads(false)
            // Spans below info (a client library's internals) are not worth exporting.
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            // A closed stderr must not take the process down (the default reports the failed
            // write with eprintln!, which panics).
            .log_internal_errors(false)
            .boxed(),
        // The trace ids of requests, kept for the JSON lines, for the spans the logs see.
        LogFormat::Json => json::RequestTraceIds
            .and_then(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .log_internal_errors(false)
                    .event_format(json::JsonLines),
            )
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(logs.with_filter(filter))
        .try_init();
    if installed.is_ok() && provider.is_some() {
        TRACES_ON.store(true, Ordering::Relaxed);
    }
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Telemetry { provider, format }
}

/// Whether the environment asks for an exporter; a warning when it asks for one we do not have.
fn exporter_wanted() -> Result<bool, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(false),
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported (otlp or none); traces are off"
            ))
        }
    }
    if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(false);
    }
    let protocol =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("http/protobuf") => Ok(true),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (http/protobuf); traces are off"
        )),
    }
}

fn provider(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|err| err.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_in_attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .is_ok_and(|attributes| attributes.contains("service.name="));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !named_in_attributes {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Completes on SIGINT (ctrl-c) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
