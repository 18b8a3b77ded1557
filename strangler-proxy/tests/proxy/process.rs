//! The `strangler-proxy` binary as a process: SIGHUP reloads a valid file and keeps the running
//! configuration when the new file is invalid.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, Stub};

const BIN: &str = env!("CARGO_BIN_EXE_strangler-proxy");

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn config(monolith: &Stub, service: &Stub, route: &str) -> String {
    format!(
        r#"
        [upstreams.monolith]
        instances = ["{}"]
        [upstreams.catalog]
        instances = ["{}"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "extracted"
        routes = [{{ path = "{route}" }}]
        "#,
        monolith.url(),
        service.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_valid_files_and_keeps_the_old_one_otherwise() {
    let (monolith, service) = (Stub::start("monolith").await, Stub::start("service").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strangler.toml");
    std::fs::write(&file, config(&monolith, &service, "/catalog/*")).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&file)
        .arg("--control-db")
        .arg(dir.path().join("control.db"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut process = Process(child);
    let base = line.split_whitespace().nth(2).unwrap().to_owned();
    let http = reqwest::Client::new();
    let served_by = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let body: serde_json::Value = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["served_by"].as_str().unwrap_or_default().to_owned()
        }
    };
    assert_eq!(served_by("/catalog/1").await, "service");

    // An invalid file: the proxy says so in its log and keeps serving the running configuration.
    std::fs::write(&file, "this is [not valid toml").unwrap();
    signal(&process.0, "-HUP");
    let log = dir.path().join("proxy.log");
    eventually(Duration::from_secs(5), "the refusal in the log", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("the new configuration is invalid")
    })
    .await;
    assert_eq!(
        served_by("/catalog/1").await,
        "service",
        "the running configuration stays"
    );
    assert!(
        process.0.try_wait().unwrap().is_none(),
        "the proxy is still running"
    );

    std::fs::write(&file, config(&monolith, &service, "/other/*")).unwrap();
    signal(&process.0, "-HUP");
    eventually(Duration::from_secs(5), "the new routes", || async {
        served_by("/catalog/1").await == "monolith"
    })
    .await;
    assert_eq!(served_by("/other/1").await, "service");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "a log file gets no colour codes: {log}"
    );
}
