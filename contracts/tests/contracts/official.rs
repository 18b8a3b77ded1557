//! Pact's own verifier (the `pact` binary of PyPI's pact-python-cli) on our files: it must load
//! and verify the committed contracts against the monolith, and give the same verdict as our
//! verifier on every defective provider.

use std::path::Path;

use contracts::pact::Pact;
use contracts::verify::{verify, VerifyOptions};

use crate::support::{catalog_dir, inventory_dir, Defect, InventoryService, Monolith, Mutant};

/// The env var naming Pact's verifier binary.
const PACT_ENV: &str = "PACT_VERIFIER";

async fn official(bin: &str, file: &Path, provider: &str, state_url: &str) -> (bool, String) {
    let (host, port) = provider
        .trim_start_matches("http://")
        .split_once(':')
        .unwrap();
    let output = tokio::process::Command::new(bin)
        .args(["verifier", "--no-colour", "--file"])
        .arg(file)
        .args([
            "--hostname",
            host,
            "--port",
            port,
            "--state-change-url",
            state_url,
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test]
#[ignore = "needs Pact's verifier: set PACT_VERIFIER to the `pact` binary of pact-python-cli and run with --ignored"]
async fn pacts_own_verifier_agrees_with_ours() {
    let bin = std::env::var(PACT_ENV).unwrap_or_else(|_| {
        panic!(
            "{PACT_ENV} is not set: install pact-python-cli (pip install pact-python-cli) and set \
             {PACT_ENV} to its `pact` binary"
        )
    });
    let file = catalog_dir().join("shop-web-catalog.json");
    let pacts = vec![(file.clone(), Pact::load(&file).unwrap())];

    // The committed contract, straight against the monolith.
    let m = Monolith::start().await;
    let (passed, text) = official(&bin, &file, &m.url, &m.state_url()).await;
    assert!(passed, "Pact's verifier rejects the monolith:\n{text}");

    // The inventory's committed contract, against the extracted inventory service.
    let inventory_file = inventory_dir().join("shop-web-inventory.json");
    let inventory = InventoryService::start(&m.url).await;
    let (passed, text) = official(
        &bin,
        &inventory_file,
        &inventory.url,
        &inventory.state_url(),
    )
    .await;
    assert!(
        passed,
        "Pact's verifier rejects the inventory service:
{text}"
    );

    // A contract whose request takes a value from the provider state (a generator): both
    // verifiers pass it on a monolith whose fixture ids are not the example's.
    let generated = crate::support::pacts_dir().join("provider-state-values.json");
    let fresh = Monolith::start().await;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/catalog/products", fresh.url))
        .json(
            &serde_json::json!({"sku": "OLD", "name": "Old", "price_cents": 1, "currency": "EUR"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (passed, text) = official(&bin, &generated, &fresh.url, &fresh.state_url()).await;
    assert!(passed, "Pact's verifier on the generator contract:\n{text}");
    let ours = contracts::verify::verify_path(
        &generated,
        &VerifyOptions {
            state_url: Some(fresh.state_url()),
            ..VerifyOptions::new(fresh.url.clone())
        },
    )
    .await
    .unwrap();
    assert!(ours.passed(), "{}", ours.render());

    let mutant = Mutant::start(&m.url).await;
    let options = VerifyOptions {
        state_url: Some(mutant.state_url()),
        ..VerifyOptions::new(mutant.url.clone())
    };
    for defect in [
        Defect::None,
        Defect::NoiseOnly,
        Defect::WrongStatus,
        Defect::RenamedField,
        Defect::ChangedType,
        Defect::MissingHeader,
        Defect::DifferentErrorBody,
        Defect::PaginationOffByOne,
        Defect::ChangedOrdering,
    ] {
        mutant.set(defect);
        let ours = verify(&pacts, &options).await;
        let (theirs, text) = official(&bin, &file, &mutant.url, &mutant.state_url()).await;
        assert_eq!(
            ours.passed(),
            theirs,
            "{defect:?}: ours passed={}, Pact's passed={theirs}\nours:\n{}\nPact's:\n{text}",
            ours.passed(),
            ours.render()
        );
    }
}
