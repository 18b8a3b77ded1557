//! The `/catalog/products` routes: CRUD, pagination, search, validation.

use std::collections::BTreeSet;

use axum::http::{header, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{TestApp, TestDb};

db_test!(
    product_lifecycle,
    duplicate_sku_conflicts,
    invalid_products_are_refused,
    pagination_walks_every_product_once,
    search_is_case_insensitive_and_literal,
);

fn product(sku: &str, name: &str, price: i64) -> Value {
    json!({"sku": sku, "name": name, "description": "d", "price_cents": price, "currency": "EUR"})
}

async fn product_lifecycle(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app
        .post("/catalog/products", product("MUG-1", "Coffee Mug", 1299))
        .await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(
        created.headers.get(header::LOCATION).unwrap(),
        &format!("/catalog/products/{id}")
    );
    assert_eq!(created.body["price_cents"], 1299);
    assert_eq!(created.body["created_at"], created.body["updated_at"]);

    let read = app.get(&format!("/catalog/products/{id}")).await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body, created.body);

    let updated = app
        .put(
            &format!("/catalog/products/{id}"),
            product("MUG-1", "Big Coffee Mug", 1499),
        )
        .await;
    updated.assert_status(StatusCode::OK);
    assert_eq!(updated.body["name"], "Big Coffee Mug");
    assert_eq!(updated.body["price_cents"], 1499);
    assert_eq!(updated.body["created_at"], created.body["created_at"]);
    assert_eq!(
        app.get(&format!("/catalog/products/{id}")).await.body,
        updated.body
    );

    app.delete(&format!("/catalog/products/{id}"))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    app.get(&format!("/catalog/products/{id}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.delete(&format!("/catalog/products/{id}"))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.put(
        &format!("/catalog/products/{id}"),
        product("MUG-1", "Gone", 1),
    )
    .await
    .assert_problem(StatusCode::NOT_FOUND, "not-found");
}

async fn duplicate_sku_conflicts(db: TestDb) {
    let app = TestApp::new(db).await;
    app.post("/catalog/products", product("SKU-A", "A", 100))
        .await
        .assert_status(StatusCode::CREATED);
    let b = app
        .post("/catalog/products", product("SKU-B", "B", 100))
        .await;
    app.post("/catalog/products", product("SKU-A", "A again", 100))
        .await
        .assert_problem(StatusCode::CONFLICT, "conflict");
    let b_id = b.body["id"].as_i64().unwrap();
    app.put(
        &format!("/catalog/products/{b_id}"),
        product("SKU-A", "B renamed", 100),
    )
    .await
    .assert_problem(StatusCode::CONFLICT, "conflict");
    // The refused update changed nothing.
    assert_eq!(
        app.get(&format!("/catalog/products/{b_id}")).await.body["sku"],
        "SKU-B"
    );
}

async fn invalid_products_are_refused(db: TestDb) {
    let app = TestApp::new(db).await;
    for body in [
        product("NEG", "Negative", -1),
        product("", "No sku", 100),
        product("BAD CUR", "Spaces in sku", 100),
        json!({"sku": "CUR", "name": "Currency", "price_cents": 1, "currency": "euro"}),
        json!({"sku": "NAME", "name": "", "price_cents": 1, "currency": "EUR"}),
    ] {
        app.post("/catalog/products", body)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    }
    app.post(
        "/catalog/products",
        json!({"sku": "X", "name": "Missing price", "currency": "EUR"}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    app.post(
        "/catalog/products",
        json!({"sku": "X", "name": "Str", "price_cents": "12", "currency": "EUR"}),
    )
    .await
    .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body");
    let list = app.get("/catalog/products").await;
    assert_eq!(list.body["items"], json!([]), "nothing was stored");
}

async fn pagination_walks_every_product_once(db: TestDb) {
    let app = TestApp::new(db).await;
    let mut created = Vec::new();
    for i in 0..25 {
        let r = app
            .post(
                "/catalog/products",
                product(&format!("P-{i:02}"), &format!("Item {i}"), 100 + i),
            )
            .await;
        created.push(r.body["id"].as_i64().unwrap());
    }
    // A deleted product in the middle must not break the walk.
    app.delete(&format!("/catalog/products/{}", created[12]))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    created.remove(12);

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/catalog/products?limit=10".to_owned();
    loop {
        let page = app.get(&path).await;
        page.assert_status(StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        sizes.push(items.len());
        seen.extend(items.iter().map(|p| p["id"].as_i64().unwrap()));
        match page.body["next"].as_str() {
            Some(next) => path = format!("/catalog/products?limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 4]);
    assert_eq!(seen, created, "every product once, in ascending id order");

    let default = app.get("/catalog/products").await;
    assert_eq!(default.body["items"].as_array().unwrap().len(), 20);
    app.get("/catalog/products?limit=0")
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    app.get("/catalog/products?limit=101")
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    app.get("/catalog/products?limit=ten")
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "invalid-query");
    app.get("/catalog/products?after=garbage")
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "bad-request");
}

async fn search_is_case_insensitive_and_literal(db: TestDb) {
    let app = TestApp::new(db).await;
    for (sku, name) in [
        ("S1", "Red Coffee Mug"),
        ("S2", "Blue Teapot"),
        ("S3", "coffee grinder"),
        ("S4", "50% off Mug"),
        ("S5", "500 Mugs"),
        ("S6", "COFFEE table"),
    ] {
        app.post("/catalog/products", product(sku, name, 100))
            .await
            .assert_status(StatusCode::CREATED);
    }
    let names = |body: &Value| -> BTreeSet<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let coffee = app.get("/catalog/products?q=CoFfEe").await;
    assert_eq!(
        names(&coffee.body),
        BTreeSet::from([
            "Red Coffee Mug".to_owned(),
            "coffee grinder".to_owned(),
            "COFFEE table".to_owned()
        ])
    );
    // `%` is a literal, not a wildcard.
    let percent = app.get("/catalog/products?q=50%25").await;
    assert_eq!(
        names(&percent.body),
        BTreeSet::from(["50% off Mug".to_owned()])
    );
    // Search pages like the full list.
    let first = app.get("/catalog/products?q=coffee&limit=2").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 2);
    let next = first.body["next"].as_str().expect("a second page");
    let second = app
        .get(&format!("/catalog/products?q=coffee&limit=2&after={next}"))
        .await;
    assert_eq!(second.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["next"], Value::Null);
    assert_eq!(
        app.get("/catalog/products?q=nothing-like-this").await.body["items"],
        json!([])
    );
}
