//! The files under deploy/ against the code they configure: the Kubernetes ConfigMap's proxy
//! configuration loads, and every metric the Grafana dashboard queries is exported.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use strangler_proxy::config::{Config, ProxyArgs};

fn deploy_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_configmap_configuration_loads_in_the_proxy() {
    let text = deploy_file("kubernetes/base/strangler-proxy.toml");
    let config = Config::from_toml(&text, &ProxyArgs::defaults()).unwrap();
    let names: Vec<&str> = config.carveouts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["catalog", "inventory"]);
    for carveout in &config.carveouts {
        assert!(
            carveout.rollout.is_some(),
            "{} has no rollout",
            carveout.name
        );
    }
    // The kustomization generates the ConfigMap from this very file, and the Deployment mounts
    // it where the proxy is told to read it.
    let kustomization = deploy_file("kubernetes/base/kustomization.yaml");
    assert!(
        kustomization.contains("- strangler-proxy.toml"),
        "{kustomization}"
    );
    let deployment = deploy_file("kubernetes/base/proxy-deployment.yaml");
    assert!(deployment.contains("/etc/strangler/strangler-proxy.toml"));
    assert!(deployment.contains("mountPath: /etc/strangler"));
    let compose = deploy_file("compose.yaml");
    assert!(compose
        .contains("./kubernetes/base/strangler-proxy.toml:/etc/strangler/strangler-proxy.toml:ro"));
}

/// `# TYPE name kind` lines of a Prometheus text exposition: name → kind.
fn families(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    // What each binary serves at /metrics: the proxy (its admin API), an HTTP service (the
    // catalog service; the monolith's and the inventory service's are the same registry) and
    // a sync relay (`strangler sync run --metrics-listen`).
    let replica = super::replica().await;
    let proxy = reqwest::Client::new()
        .get(format!("{}/metrics", replica.admin))
        .bearer_auth(super::TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let catalog_url = super::catalog_service(dir.path()).await;
    let service = reqwest::get(format!("{catalog_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let relay = strangler_sync::metrics::RelayMetrics::new("catalog:forward").encode();
    let mut exported = HashMap::new();
    for text in [&proxy, &service, &relay] {
        exported.extend(families(text));
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/dashboards/strangler.json")).unwrap();
    let mut queried = BTreeSet::new();
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    let variable = dashboard["templating"]["list"][0]["definition"]
        .as_str()
        .unwrap()
        .to_owned();
    expressions.push(variable);
    let name = regex::Regex::new(r"strangler_[a-z_]+").unwrap();
    for expr in &expressions {
        for found in name.find_iter(expr) {
            queried.insert(found.as_str().to_owned());
        }
    }
    assert!(queried.len() >= 20, "{queried:?}");
    for metric in &queried {
        // A counter is queried by its samples (`_total`), a histogram by its buckets.
        let (family, kind) = if let Some(base) = metric.strip_suffix("_total") {
            (base, "counter")
        } else if let Some(base) = metric.strip_suffix("_bucket") {
            (base, "histogram")
        } else {
            (metric.as_str(), "gauge")
        };
        assert_eq!(
            exported.get(family).map(String::as_str),
            Some(kind),
            "the dashboard queries {metric}, which no binary exports as a {kind}: {exported:#?}"
        );
    }
}

/// Every `expr` of every panel's targets, nested rows included.
fn collect_expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                out.push(expr.to_owned());
            }
            for child in map.values() {
                collect_expressions(child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_expressions(item, out);
            }
        }
        _ => {}
    }
}
