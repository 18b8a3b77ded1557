//! What an operator's tooling sees of running processes: OTLP traces across the proxy, the
//! monolith and an extracted service, and JSON log lines from every binary.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::Value;

/// A span as the test collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    links: Vec<String>,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1, as a collector would be.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut kept = kept.lock().unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .map(|a| text(a.value.as_ref()))
                            .unwrap_or_default();
                        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                            kept.push(Received {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent: hex(&span.parent_span_id),
                                links: span.links.iter().map(|l| hex(&l.trace_id)).collect(),
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                            });
                        }
                    }
                    let answer = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::default();
                    (
                        [("content-type", "application/x-protobuf")],
                        answer.encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    /// Waits (up to 30 s) until `done` holds for the spans received so far.
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never came; received {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A `strangler` subcommand serving in a child process, its stderr (the log) in a file;
/// killed when dropped.
struct Served {
    child: Child,
    url: String,
    admin: Option<String>,
    log: std::path::PathBuf,
    /// Its stdout, kept open: a line it prints later must not meet a closed pipe.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Served {
    fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(super::BIN)
            .args(args)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .env_remove("STRANGLER_CONFIG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut urls = line
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .filter(|w| w.starts_with("http://"));
        let url = urls
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "{name} did not say where it listens: {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        let admin = urls.next().map(str::to_owned);
        Served {
            child,
            url,
            admin,
            log,
            _stdout: stdout,
        }
    }

    /// Stops it with SIGTERM (it flushes its spans) and returns its log lines, each parsed.
    fn stop(mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap();
        assert!(status.success(), "{status}: {log}");
        json_lines(&log)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every line of a log, parsed: a line that is not one JSON object fails the test.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line:?}"));
            for key in ["timestamp", "level", "target", "message", "fields"] {
                assert!(value.get(key).is_some(), "no {key}: {line}");
            }
            value
        })
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SHADOWED: &str = "5bf92f3577b34da6a3ce929d0e0e4737";

/// client → proxy → monolith → catalog service: one trace, each hop the child of the one
/// before, the routing decision on the proxy's span, the database on the service's; every
/// process logs JSON lines that carry the trace id inside the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_three_processes() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info,telemetry=debug,strangler_proxy=debug"),
    ];
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let catalog = Served::start(
        dir.path(),
        "catalog",
        &[
            "catalog-service",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &path("catalog.db"),
        ],
        &otel,
    );
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/catalog/products", catalog.url))
        .json(&serde_json::json!({"sku": "OTEL-1", "name": "Lamp", "price_cents": 1200, "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{created}"));
    let monolith = Served::start(
        dir.path(),
        "monolith",
        &[
            "monolith",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &path("shop.db"),
            "--catalog-url",
            &catalog.url,
        ],
        &otel,
    );
    let config = format!(
        r#"
        [upstreams.monolith]
        instances = ["{}"]
        [upstreams.catalog]
        instances = ["{}"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "monolith"
        routes = [{{ methods = ["GET"], path = "/catalog/products/{{id}}" }}]
        "#,
        monolith.url, catalog.url
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = Served::start(
        dir.path(),
        "proxy",
        &[
            "proxy",
            "--config",
            &path("proxy.toml"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-db",
            &path("control.db"),
            "--admin-token",
            "observe-token",
        ],
        &otel,
    );
    assert!(proxy.admin.is_some());

    let answer = http
        .get(format!("{}/catalog/products/{id}", proxy.url))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let spans = collector
        .until("a span from each hop", |spans| {
            [
                ("strangler-proxy", "proxy"),
                ("monolith", "GET /catalog/products/{id}"),
                ("catalog-service", "GET /catalog/products/{id}"),
                ("catalog-service", "SELECT products"),
            ]
            .iter()
            .all(|(service, name)| {
                spans
                    .iter()
                    .any(|s| s.trace_id == TRACE && s.service == *service && s.name == *name)
            })
        })
        .await;
    let trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == TRACE).collect();
    let one = |service: &str, name: &str| -> &Received {
        let found: Vec<_> = trace
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "{service} {name}: {trace:#?}");
        found[0]
    };
    let hop = one("strangler-proxy", "proxy");
    assert_eq!(
        hop.parent, CALLER_SPAN,
        "the caller's span is the proxy's parent"
    );
    for (key, value) in [
        ("strangler.carveout", "catalog"),
        ("strangler.phase", "monolith"),
        ("strangler.target", "monolith"),
        ("strangler.fallback", "false"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(
            hop.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}: {hop:#?}"
        );
    }
    let shop = one("monolith", "GET /catalog/products/{id}");
    assert_eq!(
        shop.parent, hop.span_id,
        "the monolith's span is the proxy's child"
    );
    let service = one("catalog-service", "GET /catalog/products/{id}");
    assert_eq!(
        service.parent, shop.span_id,
        "the service's span is the monolith's child"
    );
    let query = one("catalog-service", "SELECT products");
    assert_eq!(query.parent, service.span_id);
    assert!(
        ["sqlite", "postgresql"].contains(&query.attributes["db.system.name"].as_str()),
        "{query:#?}"
    );

    // In shadow, the copy sent to the service is a trace of its own, linked to the request.
    let flipped = http
        .post(format!(
            "{}/carveouts/catalog/phase",
            proxy.admin.as_deref().unwrap()
        ))
        .bearer_auth("observe-token")
        .json(&serde_json::json!({"phase": "shadow", "reason": "trace the shadow copy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(flipped.status(), 200, "{}", flipped.text().await.unwrap());
    let answer = http
        .get(format!("{}/catalog/products/{id}", proxy.url))
        .header("traceparent", format!("00-{SHADOWED}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let spans = collector
        .until("the shadow copy's span in the service", |spans| {
            let copies: Vec<_> = spans
                .iter()
                .filter(|s| s.name == "shadow" && s.links.iter().any(|l| l == SHADOWED))
                .collect();
            copies.iter().any(|copy| {
                spans
                    .iter()
                    .any(|s| s.service == "catalog-service" && s.parent == copy.span_id)
            })
        })
        .await;
    let copy = spans
        .iter()
        .find(|s| s.name == "shadow" && s.links.iter().any(|l| l == SHADOWED))
        .unwrap();
    assert_eq!(copy.service, "strangler-proxy");
    assert_ne!(
        copy.trace_id, SHADOWED,
        "the copy is not part of the request's trace"
    );
    assert_eq!(copy.attributes["strangler.carveout"], "catalog");
    let shadowed = spans
        .iter()
        .find(|s| s.trace_id == SHADOWED && s.service == "strangler-proxy")
        .unwrap();
    assert_eq!(shadowed.attributes["strangler.phase"], "shadow");
    assert_eq!(shadowed.attributes["strangler.shadow"], "true");

    // The logs: every line of every process is one JSON object; inside the request, the
    // lines carry its trace id and the span of the process's own hop.
    let expectations = [
        (proxy.stop(), hop.span_id.clone()),
        (monolith.stop(), shop.span_id.clone()),
        (catalog.stop(), service.span_id.clone()),
    ];
    for (lines, span_id) in expectations {
        let inside: Vec<&Value> = lines.iter().filter(|l| l["trace_id"] == TRACE).collect();
        assert!(!inside.is_empty(), "no line of the request: {lines:#?}");
        assert!(
            inside.iter().any(|l| l["span_id"] == span_id.as_str()),
            "{span_id}: {inside:#?}"
        );
    }
}

/// The binaries not in the trace above log JSON too: the inventory service from start to stop,
/// and an operator command, whose closing error is a JSON line like the rest
/// (`STRANGLER_LOG_FORMAT`, the flag's variable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inventory.db");
    let inventory = Served::start(
        dir.path(),
        "inventory",
        &[
            "inventory-service",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info,telemetry=debug")],
    );
    let ready = reqwest::Client::new()
        .get(format!("{}/readyz", inventory.url))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success());
    let lines = inventory.stop();
    assert!(
        lines.iter().any(|l| l["trace_id"] == TRACE),
        "no line of the request: {lines:#?}"
    );
    let output = Command::new(super::BIN)
        .args([
            "sync",
            "status",
            "catalog",
            "--config",
            "/nonexistent/strangler.toml",
        ])
        .env("STRANGLER_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let lines = json_lines(&String::from_utf8_lossy(&output.stderr));
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/strangler.toml"),
        "{last}"
    );
}
