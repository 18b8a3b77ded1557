//! The operator dashboard in a real browser: headless Chromium driven by Playwright
//! (`dashboard.mjs`), against a proxy replica with a live carve-out.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

const MODULES_ENV: &str = "PLAYWRIGHT_MODULES";
const CHROMIUM_ENV: &str = "CHROMIUM";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and playwright-core: set PLAYWRIGHT_MODULES to a node_modules holding playwright-core (and CHROMIUM, default /usr/bin/chromium) and run with --ignored"]
async fn the_dashboard_works_in_a_real_browser() {
    let modules = std::env::var(MODULES_ENV).unwrap_or_else(|_| {
        panic!(
            "{MODULES_ENV} is not set: `npm install --prefix DIR playwright-core` and set it to \
             DIR/node_modules (and install Debian's chromium)"
        )
    });
    let chromium = std::env::var(CHROMIUM_ENV).unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's chromium or set {CHROMIUM_ENV}"
    );

    // The catalog service answers for both sides: the figures are what matters here.
    let dir = tempfile::tempdir().unwrap();
    let catalog_url = super::catalog_service(dir.path()).await;
    let http = reqwest::Client::new();
    let product: Value = http
        .post(format!("{catalog_url}/catalog/products"))
        .json(&serde_json::json!({"sku": "UI-1", "name": "Lamp", "price_cents": 1200, "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let running = super::replica_with(&format!(
        r#"
        [upstreams.monolith]
        instances = ["{catalog_url}"]
        [upstreams.catalog]
        instances = ["{catalog_url}"]
        [[carveouts]]
        name = "catalog"
        upstream = "catalog"
        phase = "monolith"
        routes = [{{ methods = ["GET"], path = "/catalog/products/{{id}}" }}]
        "#
    ))
    .await;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cli/dashboard.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .env(MODULES_ENV, &modules)
        .env("ADMIN", &running.admin)
        .env("PROXY", &running.proxy)
        .env("TOKEN", "tok-ana")
        .env("PRODUCT", product["id"].to_string())
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the browser test did not finish in 120 s")
        .expect("cannot run node");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser test failed:\n{text}");
    assert!(text.contains("dashboard: ok"), "{text}");
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "{}",
        screenshot.display()
    );

    // The flip made in the page is in the audit log, made by the token's operator.
    let audit: Value = http
        .get(format!("{}/audit?carveout=catalog", running.admin))
        .bearer_auth(super::TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "flip from the dashboard")
        .unwrap_or_else(|| panic!("{audit:#}"));
    assert_eq!(entry["actor"], "ana", "{entry}");
    assert_eq!(entry["to"], "shadow", "{entry}");
    let forged = audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "forged");
    assert!(
        !forged,
        "a change without the CSRF header was made: {audit:#}"
    );
    println!("screenshot: {}", screenshot.display());
}

/// Without a browser: the page holds no data, `/dashboard/data` needs the token, sign-in turns
/// a token into an HttpOnly cookie that reads the data, and a change signed in by the cookie
/// needs the CSRF header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_with_a_cookie_and_guards_changes() {
    let running = super::replica().await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/dashboard", running.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("/dashboard/app.js"));
    let refused = http
        .get(format!("{}/dashboard/data", running.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let wrong = http
        .post(format!("{}/dashboard/session", running.admin))
        .json(&serde_json::json!({"token": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let signed = http
        .post(format!("{}/dashboard/session", running.admin))
        .json(&serde_json::json!({"token": "tok-bo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("tok-bo"),
        "the cookie holds the token encoded: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();

    let data: Value = http
        .get(format!("{}/dashboard/data", running.admin))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["carveouts"][0]["status"]["name"], "catalog", "{data}");
    assert_eq!(
        data["carveouts"][0]["status"]["phase"], "monolith",
        "{data}"
    );

    let flip = |csrf: bool| {
        let mut request = http
            .post(format!("{}/carveouts/catalog/phase", running.admin))
            .header("cookie", &pair)
            .json(&serde_json::json!({"phase": "shadow", "reason": "by cookie"}));
        if csrf {
            request = request.header("x-strangler-csrf", "1");
        }
        request.send()
    };
    assert_eq!(flip(false).await.unwrap().status(), 403);
    let done = flip(true).await.unwrap();
    assert_eq!(done.status(), 200);
    let audit: Value = http
        .get(format!("{}/audit", running.admin))
        .bearer_auth(super::TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit[0]["actor"], "bo", "{audit}");
    assert_eq!(audit[0]["reason"], "by cookie", "{audit}");
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
}
