//! Test support: monoliths on port 0 with the provider-state hook, and a provider that
//! answers like the monolith except for one injected defect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use e2e::TestDb;
use monolith::app::Application;
use monolith::config::ServeConfig;
use serde_json::Value;

/// The committed catalog contracts and their script.
pub fn catalog_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../extracted/catalog/contracts")
}

/// The committed inventory contracts and their script.
pub fn inventory_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../extracted/inventory/contracts")
}

/// Hand-written pacts that exercise what recording does not produce (generators).
pub fn pacts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pacts")
}

/// A monolith serving the provider-state hook on a fresh database.
pub struct Monolith {
    /// Its base URL.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _db: TestDb,
}

impl Monolith {
    /// Starts one on a fresh SQLite database.
    pub async fn start() -> Monolith {
        Self::start_on(TestDb::sqlite().await).await
    }

    /// Starts one on `db`.
    pub async fn start_on(db: TestDb) -> Monolith {
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: db.url.clone(),
            provider_states: true,
            ..ServeConfig::defaults()
        };
        let app = Application::build(&config)
            .await
            .expect("the monolith starts");
        let url = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Monolith {
            url,
            stop: Some(stop),
            _db: db,
        }
    }

    /// Its provider-state hook.
    pub fn state_url(&self) -> String {
        format!("{}{}", self.url, monolith::http::states::PATH)
    }
}

impl Drop for Monolith {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The extracted catalog service with its provider-state hook, on a fresh database.
pub struct CatalogService {
    /// Its base URL.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _db: TestDb,
}

impl CatalogService {
    /// Starts one on a fresh SQLite database.
    pub async fn start() -> CatalogService {
        let db = TestDb::sqlite().await;
        let config = catalog_service::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: db.url.clone(),
            provider_states: true,
            fault_injection: false,
        };
        let service = catalog_service::Service::build(&config).await.unwrap();
        let url = format!("http://{}", service.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(service.run_until(async {
            let _ = stopped.await;
        }));
        CatalogService {
            url,
            stop: Some(stop),
            _db: db,
        }
    }

    /// Its provider-state hook.
    pub fn state_url(&self) -> String {
        format!("{}{}", self.url, catalog_service::states::PATH)
    }
}

impl Drop for CatalogService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An inventory service with its provider-state hook on a fresh database, asking `catalog`
/// which products exist.
pub struct InventoryService {
    /// Its base URL.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _db: TestDb,
}

impl InventoryService {
    /// Starts one on a fresh SQLite database.
    pub async fn start(catalog: &str) -> InventoryService {
        let db = TestDb::sqlite().await;
        let config = inventory_service::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: db.url.clone(),
            catalog_url: Some(catalog.to_owned()),
            provider_states: true,
            ..inventory_service::config::Config::defaults()
        };
        let transport = messaging::embedded::Embedded::new(std::time::Duration::from_secs(5));
        let service = inventory_service::Service::build_with(&config, transport)
            .await
            .unwrap();
        let url = format!("http://{}", service.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(service.run_until(async {
            let _ = stopped.await;
        }));
        InventoryService {
            url,
            stop: Some(stop),
            _db: db,
        }
    }

    /// Its provider-state hook.
    pub fn state_url(&self) -> String {
        format!("{}{}", self.url, inventory_service::states::PATH)
    }
}

impl Drop for InventoryService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A defect a provider can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// Answers like the monolith.
    None,
    /// 200 becomes 203 on reads of one product.
    WrongStatus,
    /// `name` is called `title`.
    RenamedField,
    /// `price_cents` is a string.
    ChangedType,
    /// No `Location` on a created product.
    MissingHeader,
    /// A different `detail` in problem bodies.
    DifferentErrorBody,
    /// Pages hold one product too few.
    PaginationOffByOne,
    /// Pages list products in descending order.
    ChangedOrdering,
    /// Only what the contracts learned as noise differs: other timestamps, other new ids.
    NoiseOnly,
}

/// A provider in front of a monolith that injects a [`Defect`].
pub struct Mutant {
    /// Its base URL.
    pub url: String,
    defect: Arc<Mutex<Defect>>,
}

impl Mutant {
    /// Starts one in front of `upstream`.
    pub async fn start(upstream: &str) -> Mutant {
        let defect = Arc::new(Mutex::new(Defect::None));
        let state = (upstream.to_owned(), defect.clone(), reqwest::Client::new());
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Mutant {
            url: format!("http://{addr}"),
            defect,
        }
    }

    /// Switches the defect.
    pub fn set(&self, defect: Defect) {
        *self.defect.lock().unwrap() = defect;
    }

    /// The state hook, through the mutant (it forwards everything).
    pub fn state_url(&self) -> String {
        format!("{}{}", self.url, monolith::http::states::PATH)
    }
}

type MutantState = (String, Arc<Mutex<Defect>>, reqwest::Client);

async fn forward(
    State((upstream, defect, http)): State<MutantState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let defect = *defect.lock().unwrap();
    let path = uri.path().to_owned();
    let url = format!(
        "{upstream}{}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = http.request(method.clone(), url).body(body);
    for (name, value) in &headers {
        if name != "host" {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.unwrap();
    let mut status = response.status();
    let mut headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let mut body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let is_list = path == "/catalog/products" && method == Method::GET;
    let is_one = path.starts_with("/catalog/products/") && method == Method::GET;
    match (defect, body.as_mut()) {
        (Defect::WrongStatus, _) if is_one && status == StatusCode::OK => {
            status = StatusCode::NON_AUTHORITATIVE_INFORMATION;
        }
        (Defect::RenamedField, Some(b)) => each_product(b, |p| {
            if let Some(name) = p.remove("name") {
                p.insert("title".into(), name);
            }
        }),
        (Defect::ChangedType, Some(b)) => each_product(b, |p| {
            if let Some(price) = p.get("price_cents").cloned() {
                p.insert("price_cents".into(), Value::from(price.to_string()));
            }
        }),
        (Defect::MissingHeader, _) if status == StatusCode::CREATED => {
            headers.remove("location");
        }
        (Defect::DifferentErrorBody, Some(Value::Object(problem)))
            if problem.contains_key("detail") =>
        {
            problem.insert("detail".into(), Value::from("something went wrong"));
        }
        (Defect::PaginationOffByOne, Some(b)) if is_list => {
            if let Some(items) = b.get_mut("items").and_then(Value::as_array_mut) {
                items.pop();
            }
        }
        (Defect::ChangedOrdering, Some(b)) if is_list => {
            if let Some(items) = b.get_mut("items").and_then(Value::as_array_mut) {
                items.reverse();
            }
        }
        (Defect::NoiseOnly, Some(b)) => {
            each_product(b, |p| {
                p.insert("created_at".into(), Value::from("2031-02-03T04:05:06.789Z"));
                p.insert("updated_at".into(), Value::from("2031-02-03T04:05:07.000Z"));
            });
            if status == StatusCode::CREATED {
                if let Some(Value::Object(p)) = Some(&mut *b) {
                    p.insert("id".into(), Value::from(424_242));
                }
                headers.insert("location", "/catalog/products/424242".parse().unwrap());
            }
        }
        _ => {}
    }
    let bytes = match body {
        Some(b) => serde_json::to_vec(&b).unwrap(),
        None => bytes.to_vec(),
    };
    headers.remove("content-length");
    (status, headers, bytes).into_response()
}

fn each_product(body: &mut Value, mut f: impl FnMut(&mut serde_json::Map<String, Value>)) {
    match body {
        Value::Object(o) if o.contains_key("sku") => f(o),
        Value::Object(o) => {
            if let Some(Value::Array(items)) = o.get_mut("items") {
                for item in items {
                    if let Value::Object(p) = item {
                        f(p);
                    }
                }
            }
        }
        _ => {}
    }
}
