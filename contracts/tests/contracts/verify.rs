//! Recording from the monolith, verifying the monolith and defective providers.

use std::time::Duration;

use contracts::pact::Pact;
use contracts::record::{record, RecordOptions, Script};
use contracts::verify::{verify, verify_path, VerifyOptions};

use crate::support::{
    catalog_dir, inventory_dir, CatalogService, Defect, InventoryService, Monolith, Mutant,
};

fn options(provider: &str, state_url: String) -> VerifyOptions {
    VerifyOptions {
        state_url: Some(state_url),
        ..VerifyOptions::new(provider)
    }
}

#[tokio::test]
async fn recording_learns_noise_and_the_contract_verifies_a_fresh_monolith() {
    let (a, b) = (Monolith::start().await, Monolith::start().await);
    let script = Script::load(&catalog_dir().join("catalog.script.toml")).unwrap();
    let (pact, noise) = record(
        &script,
        &RecordOptions {
            provider: a.url.clone(),
            second: Some(b.url.clone()),
            state_url: Some(a.state_url()),
            second_state_url: Some(b.state_url()),
            time_step: None,
            timeout: Duration::from_secs(10),
        },
    )
    .await
    .unwrap();
    assert_eq!(pact.interactions.len(), script.interactions.len());
    let learned: Vec<String> = noise
        .iter()
        .map(|n| format!("{} => {}", n.location, n.rule))
        .collect();
    // The id of a new product and its Location differ between replays; so do timestamps.
    assert!(
        learned
            .iter()
            .any(|l| l == "adding a product: body $.id => integer"),
        "{learned:#?}"
    );
    assert!(
        learned
            .iter()
            .any(|l| l.starts_with("adding a product: header location => regex")),
        "{learned:#?}"
    );
    assert!(
        learned
            .iter()
            .any(|l| l.starts_with("one product: body $.created_at => timestamp")),
        "{learned:#?}"
    );
    // What is fixed stays exact: names, prices, skus, error details, page cursors.
    for exact in [
        "$.name",
        "$.price_cents",
        "$.sku",
        "$.detail",
        "$.next",
        "$.items[0].name",
    ] {
        assert!(
            !learned
                .iter()
                .any(|l| l.contains(&format!("body {exact} "))),
            "{exact} must stay exact: {learned:#?}"
        );
    }

    // The file round-trips and verifies against a third, fresh monolith.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalog.json");
    pact.save(&file).unwrap();
    let c = Monolith::start().await;
    let report = verify_path(dir.path(), &options(&c.url, c.state_url()))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.outcomes.len(), script.interactions.len());
}

#[tokio::test]
async fn the_committed_catalog_contract_verifies_the_monolith() {
    let m = Monolith::start().await;
    let report = verify_path(&catalog_dir(), &options(&m.url, m.state_url()))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render());
    assert!(report.outcomes.len() >= 10);
    let junit = report.junit();
    assert!(junit.contains("<testsuites"), "{junit}");
    assert!(junit.contains("the first page of products"), "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");
}

#[tokio::test]
async fn the_committed_catalog_contract_verifies_the_extracted_service() {
    let service = CatalogService::start().await;
    let report = verify_path(&catalog_dir(), &options(&service.url, service.state_url()))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render());
    assert!(report.outcomes.len() >= 10);
    let file = crate::support::pacts_dir().join("provider-state-values.json");
    let report = verify_path(&file, &options(&service.url, service.state_url()))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render());
}

#[tokio::test]
async fn the_committed_inventory_contract_verifies_the_monolith_and_the_extracted_service() {
    let monolith = Monolith::start().await;
    let report = verify_path(
        &inventory_dir(),
        &options(&monolith.url, monolith.state_url()),
    )
    .await
    .unwrap();
    assert!(report.passed(), "{}", report.render());
    // The service asks a catalog which products exist (for the 404 of an unknown one).
    let service = InventoryService::start(&monolith.url).await;
    let report = verify_path(
        &inventory_dir(),
        &options(&service.url, service.state_url()),
    )
    .await
    .unwrap();
    assert!(report.passed(), "{}", report.render());
    assert!(report.outcomes.len() >= 6);
    // Not a verification that passes anything: the catalog service is no inventory.
    let other = CatalogService::start().await;
    let report = verify_path(&inventory_dir(), &options(&other.url, other.state_url()))
        .await
        .unwrap();
    assert!(!report.passed(), "{}", report.render());
}

#[tokio::test]
async fn every_defect_is_caught_with_a_diff_that_names_it() {
    let m = Monolith::start().await;
    let mutant = Mutant::start(&m.url).await;
    let pacts = Pact::load_dir(&catalog_dir()).unwrap();
    let options = options(&mutant.url, mutant.state_url());

    mutant.set(Defect::NoiseOnly);
    let report = verify(&pacts, &options).await;
    assert!(
        report.passed(),
        "only learned noise differs:\n{}",
        report.render()
    );

    let cases = [
        (Defect::WrongStatus, "one product", "status"),
        (Defect::RenamedField, "one product", "/name"),
        (Defect::ChangedType, "one product", "/price_cents"),
        (Defect::MissingHeader, "adding a product", "header:location"),
        (
            Defect::DifferentErrorBody,
            "a product that does not exist",
            "/detail",
        ),
        (
            Defect::PaginationOffByOne,
            "the first page of products",
            "/items",
        ),
        (
            Defect::ChangedOrdering,
            "the first page of products",
            "/items/0/id",
        ),
    ];
    for (defect, interaction, path) in cases {
        mutant.set(defect);
        let report = verify(&pacts, &options).await;
        assert!(!report.passed(), "{defect:?} passed:\n{}", report.render());
        let outcome = report
            .outcomes
            .iter()
            .find(|o| o.description == interaction)
            .unwrap();
        assert!(
            outcome.differences.iter().any(|d| d.path == path),
            "{defect:?}: no difference at {path} in {interaction:?}:\n{}",
            report.render()
        );
        let junit = report.junit();
        assert!(junit.contains("<failure"), "{defect:?}: {junit}");
    }
}

#[tokio::test]
async fn a_verification_of_nothing_or_of_a_dead_provider_is_red() {
    let empty = tempfile::tempdir().unwrap();
    let err = verify_path(empty.path(), &VerifyOptions::new("http://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no pact files"), "{err}");
    let report = verify(&[], &VerifyOptions::new("http://127.0.0.1:9")).await;
    assert!(!report.passed(), "zero interactions is not a pass");

    // Nothing listens on port 9 of loopback (discard), so every interaction errors.
    let pacts = Pact::load_dir(&catalog_dir()).unwrap();
    let mut dead = VerifyOptions::new("http://127.0.0.1:9");
    dead.state_url = Some("http://127.0.0.1:9/_contracts/provider-states".into());
    let report = verify(&pacts, &dead).await;
    assert!(!report.passed());
    assert!(
        report.outcomes.iter().all(|o| o.error.is_some()),
        "{}",
        report.render()
    );
}

#[tokio::test]
async fn provider_state_values_reach_the_request_through_generators() {
    let m = Monolith::start().await;
    // Products made before the fixture push its ids up: /catalog/products/1 will not be it.
    let http = reqwest::Client::new();
    for sku in ["OLD-1", "OLD-2"] {
        let created = http
            .post(format!("{}/catalog/products", m.url))
            .json(&serde_json::json!({"sku": sku, "name": "Old", "price_cents": 1, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let file = crate::support::pacts_dir().join("provider-state-values.json");
    let report = verify_path(&file, &options(&m.url, m.state_url()))
        .await
        .unwrap();
    assert!(report.passed(), "{}", report.render());
    assert!(
        report.outcomes[0]
            .request
            .starts_with("GET /catalog/products/1"),
        "the contract's example"
    );

    // Without the generator the example path is sent, and it is not the fixture product.
    let mut pact = Pact::load(&file).unwrap();
    pact.interactions[0].request.generators = contracts::generators::Generators::default();
    let report = verify(&[(file, pact)], &options(&m.url, m.state_url())).await;
    assert!(!report.passed(), "{}", report.render());
}
