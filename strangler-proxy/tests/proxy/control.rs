//! The control plane: admin API auth, phase transitions and their audit, guards, and replicas
//! sharing one control database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use e2e::TestDb;
use serde_json::{json, Value};
use strangler_proxy::app::Replica;
use strangler_proxy::config::{Config, ProxyArgs};
use strangler_proxy::control::PhaseGuard;
use strangler_proxy::phase::Phase;

use crate::support::{catalog_config, eventually, Stub};

const TOKEN: &str = "test-token";

/// Each operator of the tests has a token of its own; `admin`'s is [`TOKEN`].
const OPERATORS: &str = "admin=test-token,ana=tok-ana,bo=tok-bo,ci=tok-ci";

/// The token of the operator a request body names as its actor (`admin` when none).
fn token_of(body: &Value) -> String {
    match body["actor"].as_str() {
        Some(actor) => format!("tok-{actor}"),
        None => TOKEN.to_owned(),
    }
}

/// A replica on port 0 (data plane and admin) with `control_db`, served in the background.
pub(crate) struct TestReplica {
    pub(crate) replica_addr: std::net::SocketAddr,
    pub(crate) admin: String,
    pub(crate) control: strangler_proxy::control::ControlPlane,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestReplica {
    async fn start(control_db: &str, monolith: &Stub, service: &Stub) -> TestReplica {
        TestReplica::start_with(control_db, monolith, service, "").await
    }

    /// A replica whose catalog carve-out has `extra` settings.
    pub(crate) async fn start_with(
        control_db: &str,
        monolith: &Stub,
        service: &Stub,
        extra: &str,
    ) -> TestReplica {
        let text = catalog_config("phase = \"monolith\"", extra)
            .replace("{monolith}", &monolith.url())
            .replace("{service}", &service.url());
        let args = ProxyArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            admin_tokens: Some(OPERATORS.to_owned()),
            control_db: control_db.to_owned(),
            sync_interval_ms: 100,
            ..ProxyArgs::defaults()
        };
        let config = Config::from_toml(&text, &args).unwrap();
        let replica = Replica::build(&config).await.unwrap();
        let replica_addr = replica.local_addr();
        let admin = format!("http://{}", replica.admin_addr());
        let control = replica.control();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(replica.run_until(async {
            let _ = stopped.await;
        }));
        TestReplica {
            replica_addr,
            admin,
            control,
            http: reqwest::Client::new(),
            stop: Some(stop),
        }
    }

    pub(crate) async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn set_phase(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/carveouts/catalog/phase", self.admin))
            .bearer_auth(token_of(&body))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn report_verification(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/carveouts/catalog/verifications", self.admin))
            .bearer_auth(token_of(&body))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub(crate) async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Sends `method path` through the data plane; returns the status and a header's value.
    async fn through(&self, method: &str, path: &str, header: &str) -> (u16, Option<String>) {
        let r = self
            .http
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", self.replica_addr),
            )
            .json(&json!({"x": 1}))
            .send()
            .await
            .unwrap();
        let value = r
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (r.status().as_u16(), value)
    }

    async fn served_by(&self, path: &str) -> String {
        let r = self
            .http
            .get(format!("http://{}{path}", self.replica_addr))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        body["served_by"].as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for TestReplica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test]
async fn the_admin_api_refuses_a_missing_or_wrong_token() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let db = TestDb::sqlite().await;
    let replica = TestReplica::start(&db.url, &monolith, &service).await;
    let url = format!("{}/carveouts", replica.admin);
    let none = replica.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["content-type"], "application/problem+json");
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = replica
        .http
        .get(&url)
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let flip = replica
        .http
        .post(format!("{}/carveouts/catalog/phase", replica.admin))
        .json(&json!({"phase": "shadow", "reason": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(flip.status(), 401);
    assert_eq!(
        replica.served_by("/catalog/x").await,
        "monolith",
        "nothing changed"
    );
    let (status, list) = replica.admin_get("/carveouts").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "catalog");
    assert_eq!(list[0]["phase"], "monolith");
    assert_eq!(list[0]["routes"], json!(["* /catalog/*"]));
    let live = replica
        .http
        .get(format!("{}/livez", replica.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "liveness needs no token");
}

#[tokio::test]
async fn a_deleted_control_file_fails_readiness_and_refuses_changes() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let db = TestDb::sqlite().await;
    let replica = TestReplica::start(&db.url, &monolith, &service).await;
    let ready = |replica: &TestReplica| {
        let request = replica.http.get(format!("{}/readyz", replica.admin));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&replica).await, 200);
    let file = sqlkit::sqlite_file(&db.url).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    eventually(Duration::from_secs(5), "readiness to fail", || async {
        ready(&replica).await == 503
    })
    .await;
    let (status, body) = replica
        .set_phase(json!({"phase": "shadow", "reason": "lost?"}))
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (503, Some("/problems/control-database-unavailable")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("was deleted"),
        "{body}"
    );
    assert_eq!(replica.admin_get("/carveouts").await.0, 503);
    // The data plane keeps routing with the phases it last applied.
    assert_eq!(replica.served_by("/catalog/x").await, "monolith");
}

#[tokio::test]
async fn the_audit_log_records_the_operator_of_the_token() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let db = TestDb::sqlite().await;
    let replica = TestReplica::start(&db.url, &monolith, &service).await;
    let post = |token: &'static str, body: Value| {
        let request = replica
            .http
            .post(format!("{}/carveouts/catalog/phase", replica.admin))
            .bearer_auth(token)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    // Ana's token claiming to be Bo: refused, nothing changes.
    let (status, body) = post(
        "tok-ana",
        json!({"phase": "shadow", "reason": "r", "actor": "bo"}),
    )
    .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (403, Some("/problems/actor-mismatch")),
        "{body}"
    );
    // A reason past the bound: refused.
    let long = "x".repeat(strangler_proxy::control::MAX_REASON + 1);
    let (status, body) = post("tok-ana", json!({"phase": "shadow", "reason": long})).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (422, Some("/problems/invalid-request")),
        "{body}"
    );
    let (_, audit) = replica.admin_get("/audit?carveout=catalog").await;
    assert_eq!(audit, json!([]), "nothing was recorded");
    // Without an actor, or naming its own operator, the token's operator is recorded.
    assert_eq!(
        post("tok-ana", json!({"phase": "shadow", "reason": "r"}))
            .await
            .0,
        200
    );
    let (status, _) = post(
        "tok-bo",
        json!({"phase": "monolith", "reason": "r", "actor": "bo"}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, audit) = replica.admin_get("/audit?carveout=catalog").await;
    let actors: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["bo", "ana"]);
}

#[tokio::test]
async fn transitions_follow_the_order_and_are_audited() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let db = TestDb::sqlite().await;
    let replica = TestReplica::start(&db.url, &monolith, &service).await;

    let (status, body) = replica
        .set_phase(json!({"phase": "extracted", "reason": "yolo"}))
        .await;
    assert_eq!(
        (status, body["type"].as_str()),
        (409, Some("/problems/transition-refused")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("one step at a time"),
        "{body}"
    );
    assert_eq!(replica.served_by("/catalog/x").await, "monolith");

    for (request, phase) in [
        (
            json!({"phase": "shadow", "reason": "compare first", "actor": "ana"}),
            "shadow",
        ),
        (
            json!({"phase": "canary", "percent": 100, "reason": "all in", "actor": "ana"}),
            "canary",
        ),
    ] {
        let (status, body) = replica.set_phase(request).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["phase"], phase);
    }
    assert_eq!(
        replica.served_by("/catalog/x").await,
        "service",
        "applied at once on this replica"
    );

    let (status, body) = replica
        .set_phase(json!({"phase": "monolith", "reason": "rollback", "force": true, "actor": "bo"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(replica.served_by("/catalog/x").await, "monolith");

    for (request, status, slug) in [
        (
            json!({"phase": "shadow", "reason": ""}),
            422,
            "invalid-request",
        ),
        (
            json!({"phase": "canary", "percent": 150, "reason": "x"}),
            422,
            "invalid-phase",
        ),
        (
            json!({"phase": "live", "reason": "x"}),
            422,
            "invalid-phase",
        ),
        (json!({"phase": "shadow"}), 422, "invalid-body"),
    ] {
        let (got, body) = replica.set_phase(request.clone()).await;
        assert_eq!(
            (got, body["type"].as_str()),
            (status, Some(format!("/problems/{slug}").as_str())),
            "{request}: {body}"
        );
    }
    let unknown = replica
        .http
        .post(format!("{}/carveouts/nope/phase", replica.admin))
        .bearer_auth(TOKEN)
        .json(&json!({"phase": "shadow", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let (status, audit) = replica.admin_get("/audit?carveout=catalog").await;
    assert_eq!(status, 200);
    let entries: Vec<(String, String, String, bool)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["forced"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (
                "canary 100.00%".to_owned(),
                "monolith".to_owned(),
                "bo".to_owned(),
                true
            ),
            (
                "shadow".to_owned(),
                "canary 100.00%".to_owned(),
                "ana".to_owned(),
                false
            ),
            (
                "monolith".to_owned(),
                "shadow".to_owned(),
                "ana".to_owned(),
                false
            ),
        ]
    );
    assert_eq!(audit[0]["reason"], "rollback");
    let (_, shown) = replica.admin_get("/carveouts/catalog").await;
    assert_eq!(
        (shown["phase"].as_str(), shown["updated_by"].as_str()),
        (Some("monolith"), Some("bo"))
    );
    let (status, mismatches) = replica.admin_get("/carveouts/catalog/mismatches").await;
    assert_eq!(status, 200, "{mismatches}");
    assert_eq!(
        (
            mismatches["compared"].clone(),
            mismatches["samples"].clone()
        ),
        (json!(0), json!([])),
        "{mismatches}"
    );
    let (status, _) = replica.admin_get("/carveouts/nope/mismatches").await;
    assert_eq!(status, 404);
    let metrics = replica
        .http
        .get(format!("{}/metrics", replica.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"strangler_proxy_carveout_phase{carveout="catalog",phase="monolith"} 1"#),
        "{text}"
    );
}

struct Refuse;

#[async_trait]
impl PhaseGuard for Refuse {
    async fn check(&self, _carveout: &str, _from: Phase, to: Phase) -> Result<(), String> {
        if to == Phase::Shadow {
            Err("sync lag is 42 s (limit 5 s)".to_owned())
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_failing_guard_changes_nothing_and_says_why() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let db = TestDb::sqlite().await;
    let replica = TestReplica::start(&db.url, &monolith, &service).await;
    let control = replica.control.clone().with_guard(Arc::new(Refuse));
    let change = strangler_proxy::control::PhaseChange {
        to: Phase::Shadow,
        actor: "ana".to_owned(),
        reason: "try".to_owned(),
        force: true,
    };
    let err = control.transition("catalog", change).await.unwrap_err();
    assert!(err.to_string().contains("sync lag is 42 s"), "{err}");
    assert_eq!(
        control
            .store()
            .state("catalog")
            .await
            .unwrap()
            .unwrap()
            .phase,
        Phase::Monolith
    );
    assert!(control
        .store()
        .audit(Some("catalog"), 10)
        .await
        .unwrap()
        .is_empty());

    // A change decided on a stale version is refused, not applied over the newer one.
    let stale = control.store().state("catalog").await.unwrap().unwrap();
    let newer = control
        .store()
        .change(&stale, Phase::Shadow, "bo", "first", false)
        .await
        .unwrap();
    assert!(newer.is_some());
    assert!(control
        .store()
        .change(&stale, Phase::Monolith, "cy", "second", false)
        .await
        .unwrap()
        .is_none());
}

db_test!(two_replicas_converge_within_a_second);

async fn two_replicas_converge_within_a_second(db: TestDb) {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let a = TestReplica::start(&db.url, &monolith, &service).await;
    let b = TestReplica::start(&db.url, &monolith, &service).await;
    let (status, body) = a
        .report_verification(json!({"provider": "http://svc", "interactions": 3, "failures": 0}))
        .await;
    assert_eq!(status, 201, "{body}");
    for (phase, expected) in [
        (json!({"phase": "shadow", "reason": "r"}), "monolith"),
        (
            json!({"phase": "canary", "percent": 100, "reason": "r"}),
            "service",
        ),
        (json!({"phase": "extracted", "reason": "r"}), "service"),
        (
            json!({"phase": "canary", "percent": 0, "reason": "r"}),
            "monolith",
        ),
    ] {
        let (status, body) = a.set_phase(phase).await;
        assert_eq!(status, 200, "{body}");
        let flipped = Instant::now();
        eventually(
            Duration::from_secs(1),
            "replica b to apply the change",
            || async { b.served_by("/catalog/x").await == expected },
        )
        .await;
        assert!(flipped.elapsed() < Duration::from_secs(1));
        let (_, shown) = b.admin_get("/carveouts/catalog").await;
        assert_eq!(shown["version"], body["version"], "b reads the same state");
    }
}

db_test!(replicas_register_and_acknowledge_every_change);

async fn replicas_register_and_acknowledge_every_change(db: TestDb) {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let a = TestReplica::start(&db.url, &monolith, &service).await;
    let b = TestReplica::start(&db.url, &monolith, &service).await;
    let (status, listed) = a.admin_get("/replicas").await;
    assert_eq!(status, 200);
    let addresses: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses.len(), 2, "{listed}");
    for replica in [&a, &b] {
        assert!(
            addresses.contains(&replica.replica_addr.to_string().as_str()),
            "{listed}"
        );
    }
    assert!(
        listed.as_array().unwrap().iter().all(|r| r["live"] == true),
        "{listed}"
    );

    let (status, changed) = a.set_phase(json!({"phase": "shadow", "reason": "r"})).await;
    assert_eq!(status, 200, "{changed}");
    let epoch = changed["epoch"].as_i64().unwrap();
    assert!(epoch > 1, "a change bumps the epoch: {changed}");
    let (status, fenced) = a
        .admin_post("/carveouts/catalog/fence", json!({"hold_ms": 50}))
        .await;
    assert_eq!(status, 200, "{fenced}");
    assert!(
        fenced["epoch"].as_i64() > Some(epoch),
        "a fence bumps it too: {fenced}"
    );
    let epoch = fenced["epoch"].as_i64().unwrap();
    let (status, applied) = a
        .admin_post(
            "/control/await",
            json!({"epoch": epoch, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(
        (status, applied["replicas"].as_i64()),
        (200, Some(2)),
        "{applied}"
    );
    let (_, listed) = b.admin_get("/replicas").await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["applied_epoch"].as_i64() >= Some(epoch)),
        "{listed}"
    );

    // A replica that is live but never applies the change holds the wait up, by name ...
    let control = sqlkit::Db::connect_unmigrated(&db.url, &sqlkit::DbOptions::default())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO control_replicas (id, address, admin_address, version, started_at, heartbeat_ms, lease_ms, applied_epoch) \
         VALUES ('stuck', '10.9.9.9:1', '10.9.9.9:2', 'x', 'x', $1, 60000, 0)",
    )
    .bind(sqlkit::now_ms())
    .execute(control.pool())
    .await
    .unwrap();
    let (status, refused) = a
        .admin_post("/control/await", json!({"epoch": epoch, "timeout_ms": 300}))
        .await;
    assert_eq!(
        (status, refused["type"].as_str()),
        (409, Some("/problems/not-applied")),
        "{refused}"
    );
    assert_eq!(refused["laggards"][0]["id"], "stuck", "{refused}");
    // ... until its heartbeat is older than its lease: then it forwards no write anyway.
    sqlx::query("UPDATE control_replicas SET heartbeat_ms = $1 WHERE id = 'stuck'")
        .bind(sqlkit::now_ms() - 62_000)
        .execute(control.pool())
        .await
        .unwrap();
    let (status, _) = a
        .admin_post("/control/await", json!({"epoch": epoch, "timeout_ms": 300}))
        .await;
    assert_eq!(status, 200);
    // A replica that stops cleanly leaves the list.
    drop(b);
    eventually(Duration::from_secs(10), "b to leave the list", || async {
        a.admin_get("/replicas").await.1.as_array().map(Vec::len) == Some(2)
    })
    .await;
}

#[tokio::test]
async fn a_replica_that_cannot_read_the_control_database_refuses_carve_out_writes() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let db = TestDb::sqlite().await;
    let replica = TestReplica::start(&db.url, &monolith, &service).await;
    assert_eq!(
        replica.through("POST", "/catalog/x", "retry-after").await.0,
        200
    );
    let file = sqlkit::sqlite_file(&db.url).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    // Within the lease (2 s) writes still go; past it, a carve-out's writes are refused.
    eventually(
        Duration::from_secs(10),
        "carve-out writes to be refused",
        || async { replica.through("POST", "/catalog/x", "retry-after").await.0 == 503 },
    )
    .await;
    assert_eq!(
        replica.through("PUT", "/catalog/x", "retry-after").await,
        (503, Some("1".to_owned()))
    );
    // Reads keep going to the owner it last knew, and routes of no carve-out are untouched.
    assert_eq!(replica.served_by("/catalog/x").await, "monolith");
    assert_eq!(
        replica.through("POST", "/orders", "retry-after").await.0,
        200
    );
}

db_test!(extracted_needs_a_green_contract_verification);

async fn extracted_needs_a_green_contract_verification(db: TestDb) {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let replica = TestReplica::start(&db.url, &monolith, &service).await;
    for phase in [
        json!({"phase": "shadow", "reason": "r"}),
        json!({"phase": "canary", "percent": 100, "reason": "r"}),
    ] {
        assert_eq!(replica.set_phase(phase).await.0, 200);
    }
    let extract = json!({"phase": "extracted", "reason": "cut over", "actor": "ana"});

    // Nothing on record: refused, naming the missing verification.
    let (status, body) = replica.set_phase(extract.clone()).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (409, Some("/problems/precheck-failed")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no contract verification"),
        "{body}"
    );

    // A red one, and one that verified nothing: still refused.
    for report in [
        json!({"provider": "http://svc", "interactions": 12, "failures": 2, "actor": "ci"}),
        json!({"provider": "http://svc", "interactions": 0, "failures": 0, "actor": "ci"}),
    ] {
        let (status, recorded) = replica.report_verification(report).await;
        assert_eq!(status, 201, "{recorded}");
        assert_eq!(recorded["passed"], false, "{recorded}");
        let (status, body) = replica.set_phase(extract.clone()).await;
        assert_eq!(status, 409, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("is red"),
            "{body}"
        );
    }
    assert_eq!(
        replica.served_by("/catalog/x").await,
        "service",
        "still canary"
    );
    let (status, _) = replica
        .report_verification(json!({"provider": "x", "interactions": 1, "failures": 2}))
        .await;
    assert_eq!(status, 422, "more failures than interactions");

    // Green: allowed.
    let (status, _) = replica
        .report_verification(json!({"provider": "http://svc", "interactions": 12, "failures": 0}))
        .await;
    assert_eq!(status, 201);
    let (status, body) = replica.set_phase(extract.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["phase"], "extracted");
    let (_, list) = replica.admin_get("/carveouts/catalog/verifications").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "the refused report is not stored"
    );
    assert_eq!(list[0]["passed"], true, "newest first");

    // A red one again, back to canary, and forward only with force, which the audit log shows.
    replica
        .report_verification(json!({"provider": "http://svc", "interactions": 12, "failures": 1}))
        .await;
    let back = json!({"phase": "canary", "percent": 100, "reason": "back"});
    assert_eq!(replica.set_phase(back).await.0, 200);
    assert_eq!(replica.set_phase(extract.clone()).await.0, 409);
    let (status, body) = replica
        .set_phase(json!({"phase": "extracted", "reason": "hotfix", "force": true, "actor": "bo"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, audit) = replica.admin_get("/audit?carveout=catalog&limit=1").await;
    assert_eq!(audit[0]["forced"], true, "{audit}");
    let reason = audit[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("hotfix [forced past:") && reason.contains("is red"),
        "{reason}"
    );
}

db_test!(a_write_fence_holds_writes_and_lets_them_go_to_the_new_owner);

async fn a_write_fence_holds_writes_and_lets_them_go_to_the_new_owner(db: TestDb) {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let a = TestReplica::start(&db.url, &monolith, &service).await;
    let b = TestReplica::start(&db.url, &monolith, &service).await;
    for phase in [
        json!({"phase": "shadow", "reason": "r"}),
        json!({"phase": "canary", "percent": 100, "reason": "r"}),
    ] {
        assert_eq!(a.set_phase(phase).await.0, 200);
    }
    a.report_verification(json!({"provider": "svc", "interactions": 3, "failures": 0}))
        .await;

    let fence = a
        .http
        .post(format!("{}/carveouts/catalog/fence", a.admin))
        .bearer_auth(TOKEN)
        .json(&json!({"hold_ms": 10_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(fence.status(), 200);
    // Replica b learns of the fence from the control database.
    eventually(
        Duration::from_secs(1),
        "replica b to raise the fence",
        || async { b.control.proxy().fenced("catalog") },
    )
    .await;

    let writes_before = monolith.hits() + service.hits();
    let mut writes = Vec::new();
    for (i, replica) in [&a, &b].iter().cycle().take(20).enumerate() {
        let url = format!("http://{}/catalog/items/{i}", replica.replica_addr);
        let http = replica.http.clone();
        writes.push(tokio::spawn(async move {
            let response = http.post(url).json(&json!({"i": i})).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    eventually(
        Duration::from_secs(2),
        "the fence to hold all 20 writes",
        || async { a.control.proxy().held_writes() + b.control.proxy().held_writes() == 20 },
    )
    .await;
    // Reads are not held.
    let (status, read) = {
        let r = a
            .http
            .get(format!("http://{}/catalog/x", a.replica_addr))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((status, read["served_by"].as_str()), (200, Some("service")));
    // The held writes reached no upstream (the one read did).
    assert_eq!(monolith.hits() + service.hits(), writes_before + 1);
    assert!(writes.iter().all(|w| !w.is_finished()));

    // Ownership flips while they wait; then the fence comes down.
    let (status, body) = a
        .set_phase(json!({"phase": "extracted", "reason": "cut over"}))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(1),
        "replica b to apply the phase",
        || async { b.served_by("/catalog/x").await == "service" },
    )
    .await;
    let down = a
        .http
        .delete(format!("{}/carveouts/catalog/fence", a.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 204);
    for write in writes {
        let (status, body) = write.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["served_by"], "service",
            "a held write goes to the new owner"
        );
    }

    // A fence nobody lifts lapses on its own: writes are delayed, never failed.
    let fence = a
        .http
        .post(format!("{}/carveouts/catalog/fence", a.admin))
        .bearer_auth(TOKEN)
        .json(&json!({"hold_ms": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(fence.status(), 200);
    let started = Instant::now();
    let held = a
        .http
        .post(format!("http://{}/catalog/late", a.replica_addr))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let too_long = a
        .http
        .post(format!("{}/carveouts/catalog/fence", a.admin))
        .bearer_auth(TOKEN)
        .json(&json!({"hold_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 422);
}
