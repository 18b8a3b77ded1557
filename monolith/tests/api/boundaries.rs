//! The module boundary check, on the real tree and on a fixture that crosses every rule.

use std::path::Path;

use monolith::boundaries::check;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shop_respects_its_module_boundaries() {
    let violations = check(
        &manifest_dir().join("src"),
        &manifest_dir().join("../migrations/monolith"),
    )
    .expect("readable sources");
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        listed.is_empty(),
        "module boundaries crossed:\n{}",
        listed.join("\n")
    );
}

#[test]
fn a_boundary_crossing_is_caught() {
    let fixture = manifest_dir().join("tests/fixtures/boundary-violation");
    let violations =
        check(&fixture.join("src"), &fixture.join("migrations")).expect("readable fixture");
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(
        listed,
        [
            "catalog/mod.rs:2: pub mod store publishes the module's internals",
            "orders/mod.rs:3: crate::catalog::store is not part of module catalog's facade",
            "orders/mod.rs:7: module orders names table catalog_products, owned by module catalog",
            "seed.rs:2: code outside the modules names table orders_orders, owned by module orders",
        ],
        "{listed:#?}"
    );
}
