//! Automatic rollouts under steady load through two replicas sharing a control database: a
//! healthy service is ramped to 100 %, a failing or slow one is rolled back by itself, silence
//! never promotes, and the controller survives the death of its replica.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::TestDb;
use serde_json::{json, Value};

use crate::control::TestReplica;
use crate::support::{eventually, Mode, Stub};

/// Short dwells and intervals, so a whole rollout takes seconds. The stubs' answers differ
/// only by who served them (and the headers each saw). The p99 floor is 100 ms: on two cores
/// shared with the whole PostgreSQL suite, one slow answer among an interval's few calls passed
/// the default 10 ms and rolled a healthy service back. The latency test lowers it again.
const PLAN: &str = r#"rollout = { steps = ["shadow 600ms", "canary 10% 600ms", "25% 600ms", "100% 600ms"], interval_ms = 200, failure_limit = 0, min_requests = 20, min_interval_requests = 5, p99_floor_ms = 100 }
shadow = { ignore = ["/served_by", "/headers"] }"#;

/// Steady reads through both replicas from 100 users; counts what clients saw fail.
struct Load {
    running: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(replicas: &[&TestReplica]) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let tasks = replicas
            .iter()
            .enumerate()
            .map(|(r, replica)| {
                let (running, sent, failed, http) =
                    (running.clone(), sent.clone(), failed.clone(), http.clone());
                let base = format!("http://{}", replica.replica_addr);
                tokio::spawn(async move {
                    let mut i: u64 = 0;
                    while running.load(Ordering::Relaxed) {
                        i += 1;
                        let user = (i * 7 + r as u64) % 100;
                        let answer = http
                            .get(format!("{base}/catalog/products/{i}"))
                            .header("x-user-id", format!("user-{user}"))
                            .send()
                            .await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if !answer.is_ok_and(|a| a.status().is_success()) {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                })
            })
            .collect();
        Load {
            running,
            sent,
            failed,
            tasks,
        }
    }

    /// Stops it; (sent, failed).
    async fn stop(self) -> (u64, u64) {
        self.running.store(false, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

struct Cluster {
    monolith: Stub,
    service: Stub,
    a: TestReplica,
    b: TestReplica,
    _db: TestDb,
}

async fn cluster(db: TestDb) -> Cluster {
    cluster_with(db, PLAN).await
}

async fn cluster_with(db: TestDb, plan: &str) -> Cluster {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    let a = TestReplica::start_with(&db.url, &monolith, &service, plan).await;
    let b = TestReplica::start_with(&db.url, &monolith, &service, plan).await;
    Cluster {
        monolith,
        service,
        a,
        b,
        _db: db,
    }
}

impl Cluster {
    async fn rollout(&self) -> Value {
        let (status, view) = self.a.admin_get("/carveouts/catalog/rollout").await;
        assert_eq!(status, 200, "{view}");
        view
    }

    async fn phase(&self) -> String {
        let (_, c) = self.b.admin_get("/carveouts/catalog").await;
        match c["percent"].as_f64() {
            Some(p) => format!("{} {p}", c["phase"].as_str().unwrap()),
            None => c["phase"].as_str().unwrap().to_owned(),
        }
    }

    async fn start(&self) {
        let (status, view) = self
            .a
            .admin_post("/carveouts/catalog/rollout", json!({}))
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["state"], "running", "{view}");
    }

    async fn wait_state(&self, state: &str, within: Duration) -> Value {
        let start = std::time::Instant::now();
        loop {
            let view = self.rollout().await;
            if view["state"] == state {
                return view;
            }
            assert!(
                start.elapsed() < within,
                "the rollout is not {state} after {within:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn audit(&self) -> Vec<Value> {
        let (_, audit) = self.a.admin_get("/audit?carveout=catalog&limit=50").await;
        audit.as_array().unwrap().clone()
    }
}

db_test!(a_healthy_service_is_ramped_to_every_step_with_no_failed_request);

async fn a_healthy_service_is_ramped_to_every_step_with_no_failed_request(db: TestDb) {
    let c = cluster(db).await;
    let load = Load::start(&[&c.a, &c.b]);
    c.start().await;
    let view = c.wait_state("done", Duration::from_secs(30)).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent} client requests failed");
    assert_eq!(c.phase().await, "canary 100", "{view}");
    // Every step, in order, by the controller, in the audit log.
    let steps: Vec<String> = c
        .audit()
        .await
        .iter()
        .rev()
        .filter(|e| e["actor"] == "rollout")
        .map(|e| e["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        steps,
        ["shadow", "canary 10.00%", "canary 25.00%", "canary 100.00%"],
        "{view}"
    );
    assert!(c.service.hits() > 20 && c.monolith.hits() > 20);
    let history = view["history"].to_string();
    assert!(history.contains("done"), "{history}");
}

db_test!(a_service_that_starts_failing_is_rolled_back_and_clients_see_no_failed_read);

async fn a_service_that_starts_failing_is_rolled_back_and_clients_see_no_failed_read(db: TestDb) {
    let c = cluster(db).await;
    let load = Load::start(&[&c.a, &c.b]);
    c.start().await;
    eventually(Duration::from_secs(20), "the rollout at 25 %", || async {
        c.rollout().await["step"] == 2
    })
    .await;
    c.service.set_mode(Mode::FailFifth);
    let view = c.wait_state("halted", Duration::from_secs(10)).await;
    assert_eq!(c.phase().await, "monolith", "{view}");
    let (sent, failed) = load.stop().await;
    // Every read the service failed was answered by the monolith.
    assert_eq!(failed, 0, "{failed} of {sent} client requests failed");
    let audit = c.audit().await;
    let back = &audit[0];
    assert_eq!(back["actor"], "rollout", "{back}");
    assert_eq!(back["to"], "monolith", "{back}");
    let reason = back["reason"].as_str().unwrap();
    assert!(
        reason.contains("error_rate check failed") && reason.contains("step 3"),
        "{reason}"
    );
    // The same figures for Prometheus, on the replica running the controller.
    let mut rendered = String::new();
    for replica in [&c.a, &c.b] {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", replica.admin))
            .bearer_auth("test-token")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        rendered.push_str(&text);
    }
    assert!(
        rendered.contains(
            r#"strangler_proxy_rollout_check_passed{carveout="catalog",check="error_rate"} 0"#
        ) && rendered.contains(
            r#"strangler_proxy_rollout_check_figure{carveout="catalog",check="error_rate"}"#
        ) && rendered.contains(r#"strangler_proxy_rollout_step{carveout="catalog"} 3"#),
        "{rendered}"
    );
    // Halted: it stays in the safe phase however long it waits.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.rollout().await["state"], "halted");
    assert_eq!(c.phase().await, "monolith");
    // An operator resumes it once the service is fixed: back to the step that failed.
    c.service.set_mode(Mode::Ok);
    let (status, resumed) =
        c.a.admin_post(
            "/carveouts/catalog/rollout/resume",
            json!({"reason": "fixed"}),
        )
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(c.phase().await, "canary 25");
    // What was measured before the resume (the failing service's last answers) does not count
    // against it: with traffic healthy again it goes on.
    let load = Load::start(&[&c.a, &c.b]);
    let view = c.wait_state("done", Duration::from_secs(20)).await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent}: {view}");
}

db_test!(a_slow_service_is_rolled_back_on_latency);

async fn a_slow_service_is_rolled_back_on_latency(db: TestDb) {
    // The stub's 30 ms against a 10 ms floor.
    let c = cluster_with(db, &PLAN.replace("p99_floor_ms = 100", "p99_floor_ms = 10")).await;
    c.service.set_mode(Mode::Slower);
    let load = Load::start(&[&c.a, &c.b]);
    c.start().await;
    c.wait_state("halted", Duration::from_secs(15)).await;
    load.stop().await;
    let audit = c.audit().await;
    let reason = audit[0]["reason"].as_str().unwrap();
    assert!(reason.contains("latency_p99 check failed"), "{reason}");
    assert_eq!(c.phase().await, "monolith");
}

db_test!(without_traffic_a_rollout_waits_and_never_promotes);

async fn without_traffic_a_rollout_waits_and_never_promotes(db: TestDb) {
    let c = cluster(db).await;
    c.start().await;
    // Five dwells of the first step with no request at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = c.rollout().await;
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["step"], 0, "{view}");
    assert_eq!(view["samples"][0], 0, "{view}");
    assert_eq!(view["time_left_ms"], 0, "the dwell is over, yet: {view}");
    assert_eq!(c.phase().await, "shadow");
    // It had a controller all along.
    assert!(view["controller"].is_string(), "{view}");
}

db_test!(the_controller_s_replica_dies_and_another_continues_from_the_same_step);

async fn the_controller_s_replica_dies_and_another_continues_from_the_same_step(db: TestDb) {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    // Long enough steps that the takeover happens inside one.
    let plan = PLAN.replace("600ms", "4s");
    let mut replicas = vec![
        Some(TestReplica::start_with(&db.url, &monolith, &service, &plan).await),
        Some(TestReplica::start_with(&db.url, &monolith, &service, &plan).await),
    ];
    let admin = |replicas: &[Option<TestReplica>]| -> String {
        replicas.iter().flatten().next().unwrap().admin.clone()
    };
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(url)
                .bearer_auth("test-token")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let both: Vec<&TestReplica> = replicas.iter().flatten().collect();
    let load = Load::start(&both);
    let (status, _) = both[0]
        .admin_post("/carveouts/catalog/rollout", json!({}))
        .await;
    assert_eq!(status, 200);
    // Wait for step 2, then kill the replica running the controller.
    // Deadlines, not waits: generous for two cores shared with the rest of the suite.
    eventually(Duration::from_secs(60), "step 2", || async {
        get(format!("{}/carveouts/catalog/rollout", admin(&replicas))).await["step"] == 1
    })
    .await;
    let view = get(format!("{}/carveouts/catalog/rollout", admin(&replicas))).await;
    let holder = view["controller"].as_str().unwrap().to_owned();
    let index = replicas
        .iter()
        .position(|r| {
            r.as_ref()
                .is_some_and(|r| holder.starts_with(&r.replica_addr.to_string()))
        })
        .expect("the controller is one of the two replicas");
    drop(load);
    drop(replicas[index].take());
    let survivor = admin(&replicas);
    let load = Load::start(&replicas.iter().flatten().collect::<Vec<_>>());
    // The survivor takes the lease over and goes on from step 2, not from the start.
    eventually(Duration::from_secs(60), "the rollout done", || async {
        let view = get(format!("{survivor}/carveouts/catalog/rollout")).await;
        assert!(view["step"].as_u64() >= Some(1), "went back: {view}");
        assert_ne!(view["state"], "halted", "rolled back: {view}");
        view["state"] == "done"
    })
    .await;
    let (sent, failed) = load.stop().await;
    assert_eq!(failed, 0, "{failed} of {sent}");
    let view = get(format!("{survivor}/carveouts/catalog/rollout")).await;
    assert_ne!(view["controller"].as_str(), Some(holder.as_str()), "{view}");
    let started = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"].as_str().unwrap().starts_with("started"))
        .count();
    assert_eq!(started, 1, "{view}");
}

#[tokio::test]
async fn rollout_commands_are_refused_where_they_do_not_apply() {
    let db = TestDb::sqlite().await;
    let c = cluster(db).await;
    // Nothing to act on yet.
    let (status, body) = c.a.admin_get("/carveouts/catalog/rollout").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        c.a.admin_post("/carveouts/catalog/rollout/pause", json!({}))
            .await;
    assert_eq!(status, 404, "{body}");
    // A body that is not JSON is a problem, like every refusal of the admin API.
    let answer = reqwest::Client::new()
        .post(format!("{}/carveouts/catalog/rollout", c.a.admin))
        .bearer_auth("test-token")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    // A bad plan is named.
    let (status, body) =
        c.a.admin_post(
            "/carveouts/catalog/rollout",
            json!({"plan": {"steps": ["canary 150%"]}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("150"), "{body}");
    c.start().await;
    // One at a time.
    let (status, body) =
        c.a.admin_post("/carveouts/catalog/rollout", json!({}))
            .await;
    assert_eq!(status, 409, "{body}");
    // Nothing to approve before a cut-over step.
    let (status, body) =
        c.a.admin_post("/carveouts/catalog/rollout/approve", json!({}))
            .await;
    assert_eq!(status, 409, "{body}");
    // Pause holds it; abort puts the carve-out back in the safe phase, audited.
    let (status, body) =
        c.a.admin_post(
            "/carveouts/catalog/rollout/pause",
            json!({"reason": "lunch"}),
        )
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("paused")),
        "{body}"
    );
    let (status, body) =
        c.a.admin_post(
            "/carveouts/catalog/rollout/abort",
            json!({"reason": "not today"}),
        )
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("aborted")),
        "{body}"
    );
    assert_eq!(c.phase().await, "monolith");
    let audit = c.audit().await;
    assert!(
        audit[0]["reason"].as_str().unwrap().contains("not today"),
        "{audit:?}"
    );
    let (status, _) =
        c.a.admin_post("/carveouts/catalog/rollout/resume", json!({}))
            .await;
    assert_eq!(status, 409);
    drop(c.monolith);
}

db_test!(mismatches_of_two_replicas_are_kept_for_the_cluster_across_restarts);

async fn mismatches_of_two_replicas_are_kept_for_the_cluster_across_restarts(db: TestDb) {
    let monolith = Stub::start("monolith").await;
    let service = Stub::start("service").await;
    monolith.set_extra(json!({"price_cents": 100, "email": "ana@example.com"}));
    service.set_extra(json!({"price_cents": 250, "email": "bo@example.com"}));
    let shadow = r#"shadow = { ignore = ["/served_by", "/headers"] }"#;
    let a = TestReplica::start_with(&db.url, &monolith, &service, shadow).await;
    let b = TestReplica::start_with(&db.url, &monolith, &service, shadow).await;
    let (status, body) = a
        .admin_post(
            "/carveouts/catalog/phase",
            json!({"phase": "shadow", "reason": "compare"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Both replicas compare once both applied the phase.
    let (status, body) = a
        .admin_post(
            "/control/await",
            json!({"epoch": body["epoch"], "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let http = reqwest::Client::new();
    for (replica, ids) in [(&a, 1..4), (&b, 4..6)] {
        for id in ids {
            let answer = http
                .get(format!(
                    "http://{}/catalog/products/{id}",
                    replica.replica_addr
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
        }
    }
    let report = |replica: &TestReplica| {
        let admin = replica.admin.clone();
        let http = http.clone();
        async move {
            http.get(format!("{admin}/carveouts/catalog/mismatches?limit=50"))
                .bearer_auth("test-token")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let start = std::time::Instant::now();
    loop {
        let seen = report(&b).await;
        if seen["samples"].as_array().map(Vec::len) == Some(5) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not both replicas' five mismatches: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = report(&a).await;
    drop((a, b));

    // Both restart: the cluster's mismatches are still there, grouped, with the rate.
    let c = TestReplica::start_with(&db.url, &monolith, &service, shadow).await;
    let after = report(&c).await;
    assert_eq!(after["samples"], before["samples"], "{after}");
    assert_eq!(after["mismatched"], 5, "{after}");
    assert_eq!(after["compared"], 5, "{after}");
    assert_eq!(after["rate"], 1.0, "{after}");
    let replicas: std::collections::BTreeSet<&str> = after["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["replica"].as_str().unwrap())
        .collect();
    assert_eq!(replicas.len(), 2, "{after}");
    assert!(
        after["by_field"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == &json!(["/price_cents", 5])),
        "{after}"
    );
    assert_eq!(after["by_route"], json!([["GET /catalog/products/{n}", 5]]));
    // Redacted as captures are: the emails were never kept.
    let text = after.to_string();
    assert!(!text.contains("example.com"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
}

db_test!(a_phase_changed_by_hand_halts_the_rollout_instead_of_being_fought_over);

async fn a_phase_changed_by_hand_halts_the_rollout_instead_of_being_fought_over(db: TestDb) {
    let c = cluster(db).await;
    c.start().await;
    assert_eq!(c.phase().await, "shadow");
    let (status, body) =
        c.b.admin_post(
            "/carveouts/catalog/phase",
            json!({"phase": "monolith", "reason": "by hand, at 3 a.m."}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let view = c.wait_state("halted", Duration::from_secs(5)).await;
    assert!(
        view["history"]
            .to_string()
            .contains("changed outside the rollout"),
        "{view}"
    );
    // The operator's phase stands.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.phase().await, "monolith");
}
