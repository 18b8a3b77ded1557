//! The guide to carving out a module (`docs/carving-out-a-module.md`): its files hold against
//! the shop's real schema. The service's table (its `sql` block) is created beside the
//! monolith's database, the mapping (the `toml` block with `carveout =`) is checked against both
//! as `strangler sync` checks it, and the proxy configuration (the `toml` block with
//! `[[carveouts]]`) loads as the proxy loads it.

use strangler_proxy::config::{Config, ProxyArgs};
use strangler_sync::mapping::Mapping;

/// The code blocks of `markdown` fenced with ```` ```lang ````.
fn fenced<'a>(markdown: &'a str, lang: &str) -> Vec<&'a str> {
    let open = format!("```{lang}\n");
    let mut found = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find(&open) {
        let body = &rest[at + open.len()..];
        let end = body.find("\n```").expect("an unclosed block in the guide");
        found.push(&body[..end]);
        rest = &body[end..];
    }
    found
}

fn guide() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/carving-out-a-module.md"
    ))
    .unwrap()
}

e2e::db_test!(the_guide_s_mapping_holds_against_the_shop_and_the_service_schema);

async fn the_guide_s_mapping_holds_against_the_shop_and_the_service_schema(shop_db: e2e::TestDb) {
    let text = guide();
    let sql = fenced(&text, "sql");
    assert_eq!(
        sql.len(),
        1,
        "the guide has one sql block (the service's table)"
    );
    let tomls = fenced(&text, "toml");
    let mapping = tomls
        .iter()
        .find(|t| t.starts_with("carveout ="))
        .expect("the guide's mapping file");

    let options = sqlkit::DbOptions::default();
    let monolith = monolith::db::Db::connect(&shop_db.url, &options)
        .await
        .unwrap();
    let service_db = crate::twin(&shop_db).await;
    let service = sqlkit::Db::connect_unmigrated(&service_db.url, &options)
        .await
        .unwrap();
    sqlx::query(sql[0]).execute(service.pool()).await.unwrap();

    let mut forward = Mapping::parse(mapping).unwrap();
    assert_eq!(forward.carveout, "accounts");
    forward.check(&monolith, &service).await.unwrap();
    // Reverse, as after the cut-over.
    let mut reverse = forward.reversed();
    reverse.check(&service, &monolith).await.unwrap();

    // A mapping naming a column the service lacks is refused by name: the check above is real.
    let wrong = mapping.replace("display_name", "full_name");
    let err = Mapping::parse(&wrong)
        .unwrap()
        .check(&monolith, &service)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("full_name"), "{err:#}");
}

#[test]
fn the_guide_s_proxy_configuration_loads() {
    let text = guide();
    let config = fenced(&text, "toml")
        .into_iter()
        .find(|t| t.contains("[[carveouts]]"))
        .expect("the guide's proxy configuration");
    let loaded = Config::from_toml(config, &ProxyArgs::defaults()).unwrap();
    let accounts = loaded
        .carveouts
        .iter()
        .find(|c| c.name == "accounts")
        .unwrap();
    let sync = accounts.sync.as_ref().expect("a sync section");
    assert_eq!(
        sync.setup.mapping,
        std::path::PathBuf::from("extracted/accounts/sync.toml")
    );
    let contracts = accounts.contracts.as_ref().expect("a contracts section");
    assert_eq!(
        contracts.dir,
        std::path::PathBuf::from("extracted/accounts/contracts")
    );
}
