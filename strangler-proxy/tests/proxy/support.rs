//! Stub upstreams and a proxy served on port 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use strangler_proxy::config::{Config, ProxyArgs};
use strangler_proxy::proxy::Proxy;
use strangler_proxy::server::Server;
use tokio::net::TcpListener;

/// How a stub answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with a JSON description of the request.
    Ok = 0,
    /// 500.
    Fail = 1,
    /// Never answers.
    Hang = 2,
    /// Answers like `Ok` after 500 ms.
    Slow = 3,
    /// Every fifth request 500, the others like `Ok`.
    FailFifth = 4,
    /// Answers like `Ok` after 30 ms.
    Slower = 5,
}

/// A stub upstream on port 0.
#[derive(Clone)]
pub struct Stub {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    /// Extra JSON fields merged into every answer (to make two stubs differ).
    extra: Arc<std::sync::Mutex<Value>>,
    /// Every write received (method other than GET and HEAD): when, and its `x-write-id`.
    pub writes: Arc<std::sync::Mutex<Vec<(std::time::SystemTime, String)>>>,
    stop: Arc<tokio::sync::Notify>,
}

impl Stub {
    pub async fn start(name: &'static str) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stub = Stub {
            name,
            addr,
            hits: Arc::default(),
            mode: Arc::default(),
            extra: Arc::new(std::sync::Mutex::new(json!({}))),
            writes: Arc::default(),
            stop: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(stub.clone());
        let stop = stub.stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
                .ok();
        });
        stub
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn set_extra(&self, extra: Value) {
        *self.extra.lock().unwrap() = extra;
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting connections (the port is closed).
    pub fn stop(&self) {
        // notify_one keeps the signal if the server task is not waiting yet.
        self.stop.notify_one();
    }
}

async fn answer(State(stub): State<Stub>, request: Request) -> Response {
    let seen = stub.hits.fetch_add(1, Ordering::SeqCst);
    if !matches!(request.method().as_str(), "GET" | "HEAD") {
        let id = request
            .headers()
            .get("x-write-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        stub.writes
            .lock()
            .unwrap()
            .push((std::time::SystemTime::now(), id));
    }
    match stub.mode.load(Ordering::SeqCst) {
        1 => return (StatusCode::INTERNAL_SERVER_ERROR, "stub failure").into_response(),
        2 => std::future::pending::<()>().await,
        3 => tokio::time::sleep(Duration::from_millis(500)).await,
        4 if seen % 5 == 4 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "stub failure").into_response()
        }
        5 => tokio::time::sleep(Duration::from_millis(30)).await,
        _ => {}
    }
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let mut reply = json!({
        "served_by": stub.name,
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
    });
    if let (Some(reply), Some(extra)) = (
        reply.as_object_mut(),
        stub.extra.lock().unwrap().as_object(),
    ) {
        for (k, v) in extra {
            reply.insert(k.clone(), v.clone());
        }
    }
    axum::Json(reply).into_response()
}

/// A proxy served on port 0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestProxy {
    /// Serves `toml` (whose `{monolith}` and `{service}` are replaced by the stubs' URLs).
    pub async fn start(toml: &str, monolith: &Stub, service: &Stub) -> TestProxy {
        TestProxy::start_with_workers(toml, monolith, service, None).await
    }

    /// As [`TestProxy::start`], with `workers` data-plane worker threads.
    pub async fn start_with_workers(
        toml: &str,
        monolith: &Stub,
        service: &Stub,
        workers: Option<usize>,
    ) -> TestProxy {
        let text = toml
            .replace("{monolith}", &monolith.url())
            .replace("{service}", &service.url());
        let args = ProxyArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_timeout: 5,
            workers,
            ..ProxyArgs::defaults()
        };
        let config = Config::from_toml(&text, &args).unwrap();
        let server = Server::bind(&config).await.unwrap();
        let addr = server.local_addr();
        let proxy = server.proxy();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        TestProxy {
            addr,
            proxy,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` with extra headers; returns (status, JSON body or null).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method` to `path` with a small JSON body; returns (status, JSON body or null).
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .json(&json!({"x": 1}));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Starts the graceful shutdown and returns the server task's result.
    pub async fn shutdown_and_wait(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A configuration with one carve-out `catalog` owning `/catalog/*` (every method), in `phase`.
pub fn catalog_config(phase: &str, extra: &str) -> String {
    format!(
        r#"
        [proxy]
        override_header = true
        [upstreams.monolith]
        instances = ["{{monolith}}"]
        [upstreams.catalog]
        instances = ["{{service}}"]
        request_timeout_ms = 1000
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        {phase}
        sticky = {{ header = "X-User-Id" }}
        routes = [{{ path = "/catalog/*" }}]
        {extra}
        "#
    )
}

/// A monolith stub, a service stub, and a proxy with the `catalog` carve-out in `phase`.
pub async fn catalog_proxy(phase: &str) -> (Stub, Stub, TestProxy) {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let proxy = TestProxy::start(&catalog_config(phase, ""), &monolith, &service).await;
    (monolith, service, proxy)
}

pub use e2e::eventually;

/// A TCP link to `upstream` that a test can sever (every connection dropped, new ones refused)
/// and heal: fault injection between a replica and its control database.
#[derive(Clone)]
pub struct Link {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Link {
    pub async fn start(upstream: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = Link {
            addr: listener.local_addr().unwrap(),
            cut: Arc::default(),
            open: Arc::default(),
        };
        let accepting = link.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accepting.cut.load(Ordering::SeqCst) {
                    continue;
                }
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepting.open.lock().unwrap().push(pipe);
            }
        });
        link
    }

    /// Drops every connection through the link and refuses new ones.
    pub fn sever(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for pipe in self.open.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Sends raw bytes and returns everything the proxy answers until it closes the connection
/// (or 2 s pass, for a connection kept alive).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, bytes).await;
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer);
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of the first response in a raw answer (0 when there is none).
pub fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| answer.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
