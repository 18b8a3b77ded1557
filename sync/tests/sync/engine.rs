//! Capture, relay, loop prevention, verification and repair on a monolith-shaped source table
//! and a service-shaped target table (renamed columns, prices in another unit).

use std::time::Duration;

use e2e::TestDb;
use sqlkit::{Backend, Db, DbOptions};
use strangler_sync::backfill::Backfill;
use strangler_sync::capture;
use strangler_sync::mapping::Mapping;
use strangler_sync::parked;
use strangler_sync::relay::Relay;
use strangler_sync::verify::{
    repair, settle, verify, verify_changed, verify_live, DriftKind, Report,
};

const MAPPING: &str = r#"
carveout = "items"

[[tables]]
source = "src_items"
target = "items"
key = [{ source = "id", target = "item_id" }]
columns = [
  { source = "name", target = "title" },
  { source = "price_cents", target = "price_mills", transform = "multiply:10" },
  { source = "updated_at", target = "updated_at" },
]
"#;

/// A second database of the same backend as `db`.
async fn twin(db: &TestDb) -> TestDb {
    if db.url.starts_with("postgres") {
        TestDb::postgres().await
    } else {
        TestDb::sqlite().await
    }
}

async fn connect(db: &TestDb) -> Db {
    Db::connect_unmigrated(&db.url, &DbOptions::default())
        .await
        .unwrap()
}

async fn exec(db: &Db, sql: &str) {
    sqlx::raw_sql(sql).execute(db.pool()).await.unwrap();
}

/// Source (monolith) and target (service) databases with their tables, and a checked mapping.
async fn setup(db: TestDb) -> (Db, Db, Mapping, [TestDb; 2]) {
    let other = twin(&db).await;
    let (source, target) = (connect(&db).await, connect(&other).await);
    exec(&source, "CREATE TABLE src_items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL, updated_at TEXT)").await;
    exec(&target, "CREATE TABLE items (item_id BIGINT PRIMARY KEY, title TEXT NOT NULL, price_mills BIGINT NOT NULL, updated_at TEXT)").await;
    let mut mapping = Mapping::parse(MAPPING).unwrap();
    mapping.check(&source, &target).await.unwrap();
    (source, target, mapping, [db, other])
}

/// The drifted keys of a report (an integer key column) and how they drift, in key order.
fn drifted(report: &Report, column: &str) -> Vec<(i64, DriftKind)> {
    let mut keys: Vec<(i64, DriftKind)> = report
        .drift
        .iter()
        .map(|d| (d.key[column].as_i64().unwrap(), d.kind))
        .collect();
    keys.sort_by_key(|(k, _)| *k);
    keys
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

db_test!(
    two_carve_outs_share_one_change_log,
    a_refused_change_is_parked_and_the_other_keys_flow,
    backfill_under_concurrent_writes_loses_nothing,
    changes_flow_forward_mapped,
    a_restarted_relay_resumes_without_applying_twice,
    forward_and_reverse_at_once_do_not_echo,
    drift_is_detected_and_repaired,
    verify_reads_only_the_chunks_that_differ,
    a_live_verify_counts_changes_in_flight_not_as_drift,
    settling_rechecks_the_keys_that_were_in_flight,
    a_composite_key_is_backfilled_in_key_order_and_resumed,
    backfill_copies_into_empty_ranges_and_upserts_into_occupied_ones,
    reverse_verify_maps_back_and_refuses_an_indivisible_value,
    a_mapping_naming_a_missing_column_is_refused,
);

async fn changes_flow_forward_mapped(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    capture::install(&source, &mapping).await.unwrap();
    assert!(capture::installed(&source, &mapping).await.unwrap());
    exec(&source, "INSERT INTO src_items VALUES (1, 'Lamp', 1999, '2026-01-01'), (2, 'Desk', 25000, NULL), (3, 'Chair', 4500, NULL)").await;
    exec(
        &source,
        "UPDATE src_items SET name = 'Desk XL', price_cents = 27500 WHERE id = 2",
    )
    .await;
    exec(&source, "DELETE FROM src_items WHERE id = 3").await;

    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    let (events, _) = relay.lag().await.unwrap();
    assert_eq!(events, 5, "three inserts, an update, a delete");
    assert_eq!(relay.drain().await.unwrap(), 5);
    assert_eq!(relay.lag().await.unwrap(), (0, Duration::ZERO));
    let rows: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT item_id, title, price_mills FROM items ORDER BY item_id")
            .fetch_all(target.pool())
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (1, "Lamp".to_owned(), 19990),
            (2, "Desk XL".to_owned(), 275_000)
        ]
    );
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(report.clean(), "{}", report.summary());
    assert_eq!(report.rows_compared, 2);

    capture::uninstall(&source, &mapping).await.unwrap();
    assert!(!capture::installed(&source, &mapping).await.unwrap());
    exec(
        &source,
        "INSERT INTO src_items VALUES (9, 'Uncaptured', 1, NULL)",
    )
    .await;
}

async fn a_restarted_relay_resumes_without_applying_twice(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    capture::install(&source, &mapping).await.unwrap();
    for i in 1..=7 {
        exec(
            &source,
            &format!("INSERT INTO src_items VALUES ({i}, 'item {i}', {i}, NULL)"),
        )
        .await;
    }
    let lease = Duration::from_millis(300);
    let mut first = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_batch(3)
        .with_lease(lease);
    let step = first.step().await.unwrap();
    assert_eq!((step.applied, step.cursor), (3, 3));
    // The first relay dies without a word: its lease lapses, then a standby takes over.
    drop(first);
    // A relay that applies a change twice would count a price twice here.
    exec(
        &source,
        "UPDATE src_items SET price_cents = price_cents + 100 WHERE id = 2",
    )
    .await;

    let mut second = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_batch(3)
        .with_lease(lease);
    assert_eq!(second.cursor().await.unwrap(), 3, "the checkpoint survived");
    let step = second.step().await.unwrap();
    assert!(step.standby, "the dead relay's lease has not lapsed yet");
    assert_eq!(step.applied, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while second.step().await.unwrap().standby {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    second.drain().await.unwrap();
    assert_eq!(second.cursor().await.unwrap(), 8);
    // A clean stop hands over at once.
    second.release_lease().await.unwrap();
    let mut third = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    assert!(!third.step().await.unwrap().standby);
    assert_eq!(
        count(&target, "SELECT CAST(COUNT(*) AS BIGINT) FROM items").await,
        7
    );
    assert_eq!(
        count(&target, "SELECT price_mills FROM items WHERE item_id = 2").await,
        1020
    );
    assert!(verify(&source, &target, &mapping).await.unwrap().clean());
}

async fn forward_and_reverse_at_once_do_not_echo(db: TestDb) {
    let (monolith, service, mapping, _dbs) = setup(db).await;
    let reverse = mapping.reversed();
    capture::install(&monolith, &mapping).await.unwrap();
    capture::install(&service, &reverse).await.unwrap();
    let mut forward = Relay::new(
        monolith.clone(),
        service.clone(),
        mapping.clone(),
        "forward",
    )
    .await
    .unwrap();
    let mut backward = Relay::new(
        service.clone(),
        monolith.clone(),
        reverse.clone(),
        "reverse",
    )
    .await
    .unwrap();

    exec(
        &monolith,
        "INSERT INTO src_items VALUES (1, 'Lamp', 1999, NULL)",
    )
    .await;
    exec(
        &service,
        "INSERT INTO items VALUES (2, 'Desk', 250000, NULL)",
    )
    .await;
    for _ in 0..3 {
        forward.drain().await.unwrap();
        backward.drain().await.unwrap();
    }
    // Each side captured only its own write: nothing the relays applied came back.
    assert_eq!(
        count(
            &monolith,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sync_changes"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &service,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sync_changes"
        )
        .await,
        1
    );
    assert_eq!(
        count(&monolith, "SELECT price_cents FROM src_items WHERE id = 2").await,
        25000
    );
    assert!(verify(&monolith, &service, &mapping).await.unwrap().clean());

    // An update on either side reaches the other once.
    exec(
        &service,
        "UPDATE items SET title = 'Desk XL' WHERE item_id = 2",
    )
    .await;
    exec(
        &monolith,
        "UPDATE src_items SET price_cents = 2099 WHERE id = 1",
    )
    .await;
    for _ in 0..3 {
        forward.drain().await.unwrap();
        backward.drain().await.unwrap();
    }
    assert_eq!(
        count(
            &monolith,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sync_changes"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &service,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM sync_changes"
        )
        .await,
        2
    );
    assert!(verify(&monolith, &service, &mapping).await.unwrap().clean());
    // A service-side price the monolith cannot hold exactly is refused, not rounded: its key
    // is parked with the reason, and the monolith keeps the row as it was.
    exec(
        &service,
        "UPDATE items SET price_mills = 20995 WHERE item_id = 1",
    )
    .await;
    backward.drain().await.unwrap();
    let parked = strangler_sync::parked::list(&monolith, None).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(parked[0].error.contains("precision"), "{}", parked[0].error);
    assert_eq!(
        count(&monolith, "SELECT price_cents FROM src_items WHERE id = 1").await,
        2099
    );
}

async fn drift_is_detected_and_repaired(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    let empty = verify(&source, &target, &mapping).await.unwrap();
    assert!(!empty.clean(), "zero rows compared is not clean");
    assert!(
        empty.summary().contains("not a pass"),
        "{}",
        empty.summary()
    );

    capture::install(&source, &mapping).await.unwrap();
    exec(&source, "INSERT INTO src_items VALUES (1, 'Lamp', 1999, NULL), (2, 'Desk', 25000, NULL), (3, 'Chair', 4500, NULL)").await;
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    // Behind the relay's back: a changed row, a lost row, a stray row.
    exec(
        &target,
        "UPDATE items SET title = 'Lamp (edited)' WHERE item_id = 1",
    )
    .await;
    exec(&target, "DELETE FROM items WHERE item_id = 2").await;
    exec(&target, "INSERT INTO items VALUES (99, 'Stray', 10, NULL)").await;

    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(!report.clean());
    let kinds = drifted(&report, "item_id");
    assert_eq!(
        kinds,
        vec![
            (1, DriftKind::Different),
            (2, DriftKind::Missing),
            (99, DriftKind::Extra)
        ]
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["drift"].as_array().unwrap().len(), 3);

    assert_eq!(repair(&target, &mapping, &report).await.unwrap(), 3);
    let after = verify(&source, &target, &mapping).await.unwrap();
    assert!(after.clean(), "{}", after.summary());
}

async fn verify_reads_only_the_chunks_that_differ(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    capture::install(&source, &mapping).await.unwrap();
    exec(
        &source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO src_items SELECT i, 'Item ' || i, i * 3, \
         CASE WHEN i % 7 = 0 THEN NULL ELSE '2026-11-26' END FROM n",
    )
    .await;
    Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(5000)
        .run(|_| {})
        .await
        .unwrap();
    let clean = verify(&source, &target, &mapping).await.unwrap();
    assert!(clean.clean(), "{}", clean.summary());
    assert_eq!(clean.rows_compared, 20_000);
    let table = &clean.tables[0];
    assert!(table.chunks >= 4, "{}", clean.summary());
    assert_eq!(table.chunks_differing, 0, "{}", clean.summary());

    // Behind the relay's back, in chunks far apart: a changed title, a lost row, NULL turned
    // into an empty string, a price one mill off, a stray row past the source's keys.
    exec(
        &target,
        "UPDATE items SET title = 'Item 5 (edited)' WHERE item_id = 5",
    )
    .await;
    exec(&target, "DELETE FROM items WHERE item_id = 10000").await;
    exec(
        &target,
        "UPDATE items SET updated_at = '' WHERE item_id = 14000",
    )
    .await;
    exec(
        &target,
        "UPDATE items SET price_mills = price_mills + 1 WHERE item_id = 17000",
    )
    .await;
    exec(
        &target,
        "INSERT INTO items VALUES (30000, 'Stray', 10, NULL)",
    )
    .await;
    let report = verify(&source, &target, &mapping).await.unwrap();
    let kinds = drifted(&report, "item_id");
    assert_eq!(
        kinds,
        vec![
            (5, DriftKind::Different),
            (10000, DriftKind::Missing),
            (14000, DriftKind::Different),
            (17000, DriftKind::Different),
            (30000, DriftKind::Extra),
        ],
        "{}",
        report.summary()
    );
    let table = &report.tables[0];
    assert_eq!(table.chunks_differing, 5, "{}", report.summary());
    assert!(table.chunks > 5, "{}", report.summary());
    assert_eq!(repair(&target, &mapping, &report).await.unwrap(), 5);
    let repaired = verify(&source, &target, &mapping).await.unwrap();
    assert!(repaired.clean(), "{}", repaired.summary());

    // The keys changed since a clean verification: a captured change not relayed yet is drift
    // to a strict check of the changed keys, and none once the relay applied it.
    let since = repaired.covered_to.expect("the source has a change log");
    exec(
        &source,
        "UPDATE src_items SET name = 'Renamed' WHERE id = 42",
    )
    .await;
    exec(&source, "DELETE FROM src_items WHERE id = 43").await;
    let stale = verify_changed(&source, &target, &mapping, since)
        .await
        .unwrap();
    let kinds = drifted(&stale, "item_id");
    assert_eq!(
        kinds,
        vec![(42, DriftKind::Different), (43, DriftKind::Extra)]
    );
    assert_eq!(stale.rows_compared, 2);
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    let settled = verify_changed(&source, &target, &mapping, since)
        .await
        .unwrap();
    assert!(settled.drift.is_empty(), "{}", settled.summary());
    assert_eq!(settled.rows_compared, 2);
}

async fn a_live_verify_counts_changes_in_flight_not_as_drift(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    capture::install(&source, &mapping).await.unwrap();
    exec(
        &source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000) \
         INSERT INTO src_items SELECT i, 'Item ' || i, i, NULL FROM n",
    )
    .await;
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_batch(1000);
    relay.drain().await.unwrap();

    // Writes all over the key range, and a relay a little behind them, during every verify.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (source, stop) = (source.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = (i * 797) % 6000 + 1;
                exec(
                    &source,
                    &format!(
                        "UPDATE src_items SET name = 'w{i}', price_cents = {i} WHERE id = {id}"
                    ),
                )
                .await;
                if i % 7 == 0 {
                    exec(
                        &source,
                        &format!(
                            "INSERT INTO src_items VALUES ({}, 'new', 1, NULL)",
                            100_000 + i
                        ),
                    )
                    .await;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let follower = {
        let stop = stop.clone();
        tokio::spawn(async move {
            // At most 10 changes per 20 ms: slower than the writer on either backend.
            let mut relay = relay.with_batch(10);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                relay.step().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            relay.release_lease().await.unwrap();
        })
    };
    let mut in_flight = 0;
    for _ in 0..6 {
        let report = verify_live(&source, &target, &mapping, Some("items:forward"))
            .await
            .unwrap();
        assert!(
            report.drift.is_empty(),
            "{}\n{:#?}",
            report.summary(),
            report.drift.iter().take(3).collect::<Vec<_>>()
        );
        in_flight += report.in_flight;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    follower.await.unwrap();
    assert!(
        in_flight > 0,
        "the relay never lagged: nothing was in flight"
    );
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    let settled = verify(&source, &target, &mapping).await.unwrap();
    assert!(settled.clean(), "{}", settled.summary());
}

async fn settling_rechecks_the_keys_that_were_in_flight(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    capture::install(&source, &mapping).await.unwrap();
    exec(
        &source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
         INSERT INTO src_items SELECT i, 'Item ' || i, i, NULL FROM n",
    )
    .await;
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    // Five changes the relay has not applied yet: in flight, not drift.
    exec(&source, "UPDATE src_items SET name = 'moved' WHERE id <= 5").await;
    let mut report = verify_live(&source, &target, &mapping, Some("items:forward"))
        .await
        .unwrap();
    assert!(report.drift.is_empty(), "{}", report.summary());
    assert_eq!(report.in_flight, 5, "{}", report.summary());
    // No time to settle: they stay in flight.
    settle(
        &source,
        &target,
        &mapping,
        "items:forward",
        &mut report,
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(report.in_flight, 5);
    // The relay applies them; then one of them is changed behind its back.
    relay.drain().await.unwrap();
    exec(
        &target,
        "UPDATE items SET title = 'tampered' WHERE item_id = 3",
    )
    .await;
    settle(
        &source,
        &target,
        &mapping,
        "items:forward",
        &mut report,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(report.in_flight, 0, "{}", report.summary());
    let drift = drifted(&report, "item_id");
    assert_eq!(drift, vec![(3, DriftKind::Different)]);
    assert!(!report.clean());
    assert_eq!(report.tables[0].drifted, 1);
    // Repair works from a settled report too.
    assert_eq!(repair(&target, &mapping, &report).await.unwrap(), 1);
    assert!(verify(&source, &target, &mapping).await.unwrap().clean());
}

async fn a_composite_key_is_backfilled_in_key_order_and_resumed(db: TestDb) {
    let other = twin(&db).await;
    let (source, target) = (connect(&db).await, connect(&other).await);
    exec(&source, "CREATE TABLE src_stock (warehouse TEXT NOT NULL, sku TEXT NOT NULL, qty BIGINT NOT NULL, PRIMARY KEY (warehouse, sku))").await;
    exec(&target, "CREATE TABLE stock (warehouse_code TEXT NOT NULL, sku TEXT NOT NULL, quantity BIGINT NOT NULL, PRIMARY KEY (warehouse_code, sku))").await;
    let mut mapping = Mapping::parse(
        r#"
carveout = "stock"
[[tables]]
source = "src_stock"
target = "stock"
key = [{ source = "warehouse", target = "warehouse_code" }, { source = "sku", target = "sku" }]
columns = [{ source = "qty", target = "quantity" }]
"#,
    )
    .unwrap();
    mapping.check(&source, &target).await.unwrap();
    // Three warehouses of 400 SKUs: chunks end in the middle of a warehouse.
    exec(
        &source,
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1199) \
         INSERT INTO src_stock SELECT 'W' || (i / 400), 'SKU-' || (1000 + i % 400), i FROM n",
    )
    .await;
    capture::install(&source, &mapping).await.unwrap();
    let backfill = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(150);
    let partial = backfill.run_chunks(3, |_| {}).await.unwrap();
    assert_eq!(partial[0].read, 450);
    // Changes after the first chunks: one already copied, one not yet, one removed.
    exec(
        &source,
        "UPDATE src_stock SET qty = -1 WHERE warehouse = 'W0' AND sku = 'SKU-1010'",
    )
    .await;
    exec(
        &source,
        "UPDATE src_stock SET qty = -2 WHERE warehouse = 'W2' AND sku = 'SKU-1390'",
    )
    .await;
    exec(
        &source,
        "DELETE FROM src_stock WHERE warehouse = 'W1' AND sku = 'SKU-1200'",
    )
    .await;
    let resumed = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(150);
    let done = resumed.run(|_| {}).await.unwrap();
    assert!(done[0].done);
    // Every row read once across the two runs (the deleted one was never there to read).
    assert_eq!(done[0].read, 1199);
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(report.clean(), "{}", report.summary());
    assert_eq!(report.rows_compared, 1199);
    assert_eq!(
        count(&target, "SELECT CAST(COUNT(*) AS BIGINT) FROM stock").await,
        1199
    );
    assert_eq!(
        count(
            &target,
            "SELECT quantity FROM stock WHERE warehouse_code = 'W2' AND sku = 'SKU-1390'"
        )
        .await,
        -2
    );
}

async fn backfill_copies_into_empty_ranges_and_upserts_into_occupied_ones(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    exec(
        &source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
         INSERT INTO src_items SELECT i, 'Item ' || i, i, NULL FROM n",
    )
    .await;
    // Text that COPY's format escapes: a tab, a newline, a backslash, a quote, non-ASCII.
    let awkward = "tab\there\nnew line \\N back\\slash 'quoted' ünïcode";
    sqlx::query("UPDATE src_items SET name = $1 WHERE id = 999")
        .bind(awkward)
        .execute(source.pool())
        .await
        .unwrap();
    capture::install(&source, &mapping).await.unwrap();
    // The relay got to one row of the first chunk before the backfill started.
    exec(
        &source,
        "UPDATE src_items SET name = 'changed early' WHERE id = 10",
    )
    .await;
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap(), 1);
    let backfill = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(100);
    let partial = backfill.run_chunks(3, |_| {}).await.unwrap();
    assert_eq!(partial[0].read, 300);
    // A row appears in a later chunk's range behind the backfill's back, stale.
    exec(&target, "INSERT INTO items VALUES (550, 'stale', 1, NULL)").await;
    let done = backfill.run(|_| {}).await.unwrap();
    assert!(done[0].done);
    assert_eq!(done[0].read, 1000);
    assert_eq!(done[0].skipped, 0);
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(report.clean(), "{}", report.summary());
    assert_eq!(report.rows_compared, 1000);
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT item_id, title, price_mills FROM items WHERE item_id IN (10, 550, 1000) ORDER BY item_id",
    )
    .fetch_all(target.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (10, "changed early".to_owned(), 100),
            (550, "Item 550".to_owned(), 5500),
            (1000, "Item 1000".to_owned(), 10000),
        ]
    );
    let title: String = sqlx::query_scalar("SELECT title FROM items WHERE item_id = 999")
        .fetch_one(target.pool())
        .await
        .unwrap();
    assert_eq!(title, awkward);
    // Nothing the backfill wrote was captured again on the target side.
    assert_eq!(
        relay.drain().await.unwrap(),
        0,
        "the backfill's writes are not changes of the source"
    );
}

async fn reverse_verify_maps_back_and_refuses_an_indivisible_value(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    exec(
        &target,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9000) \
         INSERT INTO items SELECT i, 'Item ' || i, i * 10, NULL FROM n",
    )
    .await;
    exec(
        &source,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9000) \
         INSERT INTO src_items SELECT i, 'Item ' || i, i, NULL FROM n",
    )
    .await;
    // Service → monolith: mills divided back into cents.
    let reverse = mapping.reversed();
    let report = verify(&target, &source, &reverse).await.unwrap();
    assert!(report.clean(), "{}", report.summary());
    assert_eq!(report.rows_compared, 9000);
    assert!(report.tables[0].chunks >= 2, "{}", report.summary());
    exec(
        &source,
        "UPDATE src_items SET price_cents = 1 WHERE id = 7000",
    )
    .await;
    let changed = verify(&target, &source, &reverse).await.unwrap();
    let keys = drifted(&changed, "id");
    assert_eq!(keys, vec![(7000, DriftKind::Different)]);
    // A price in mills the monolith cannot hold in cents is refused, not compared truncated.
    exec(
        &target,
        "UPDATE items SET price_mills = 40005 WHERE item_id = 4000",
    )
    .await;
    exec(
        &source,
        "UPDATE src_items SET price_cents = 4000 WHERE id = 4000",
    )
    .await;
    let unmappable = verify(&target, &source, &reverse).await.unwrap();
    assert_eq!(
        drifted(&unmappable, "id"),
        vec![(4000, DriftKind::Unmappable), (7000, DriftKind::Different)]
    );
    let reason = unmappable
        .drift
        .iter()
        .find_map(|d| d.reason.as_deref())
        .unwrap_or_default();
    assert!(reason.contains("would lose precision"), "{reason}");
    let err = repair(&source, &reverse, &unmappable).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("no copy can mend it"),
        "{err:#}"
    );
}

/// SQLite on one side, PostgreSQL on the other: chunks are hashed here, from streamed rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL: set TEST_DATABASE_URL and run with --ignored"]
async fn verify_streams_and_hashes_between_sqlite_and_postgres() {
    let pg = TestDb::postgres().await;
    let lite = TestDb::sqlite().await;
    let (source, target) = (connect(&lite).await, connect(&pg).await);
    exec(&source, "CREATE TABLE src_items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL, updated_at TEXT)").await;
    exec(&target, "CREATE TABLE items (item_id BIGINT PRIMARY KEY, title TEXT NOT NULL, price_mills BIGINT NOT NULL, updated_at TEXT)").await;
    let mut mapping = Mapping::parse(MAPPING).unwrap();
    mapping.check(&source, &target).await.unwrap();
    let fill = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000) ";
    exec(&source, &format!("{fill} INSERT INTO src_items SELECT i, 'Item ' || i, i, CASE WHEN i % 3 = 0 THEN NULL ELSE '2026' END FROM n")).await;
    exec(&target, &format!("{fill} INSERT INTO items SELECT i, 'Item ' || i, i * 10, CASE WHEN i % 3 = 0 THEN NULL ELSE '2026' END FROM n")).await;
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(report.clean(), "{}", report.summary());
    assert_eq!(report.rows_compared, 12_000);
    assert!(report.tables[0].chunks >= 2, "{}", report.summary());
    exec(
        &target,
        "UPDATE items SET updated_at = '2026' WHERE item_id = 9",
    )
    .await;
    exec(&target, "DELETE FROM items WHERE item_id = 11000").await;
    let report = verify(&source, &target, &mapping).await.unwrap();
    let keys = drifted(&report, "item_id");
    assert_eq!(
        keys,
        vec![(9, DriftKind::Different), (11000, DriftKind::Missing)]
    );
    assert_eq!(report.tables[0].chunks_differing, 2, "{}", report.summary());
}

async fn a_mapping_naming_a_missing_column_is_refused(db: TestDb) {
    let (source, target, _, _dbs) = setup(db).await;
    let mut bad = Mapping::parse(
        &MAPPING
            .replace("target = \"title\"", "target = \"headline\"")
            .replace("source = \"updated_at\"", "source = \"modified\""),
    )
    .unwrap();
    let err = format!("{:#}", bad.check(&source, &target).await.unwrap_err());
    assert!(
        err.contains("the target table items has no column headline"),
        "{err}"
    );
    assert!(
        err.contains("the source table src_items has no column modified"),
        "{err}"
    );
    let mut missing =
        Mapping::parse(&MAPPING.replace("target = \"items\"", "target = \"goods\"")).unwrap();
    let err = format!("{:#}", missing.check(&source, &target).await.unwrap_err());
    assert!(err.contains("the target has no table goods"), "{err}");
    // Two columns into one is refused as the file is read.
    let twice = Mapping::parse(&MAPPING.replace("target = \"updated_at\"", "target = \"title\""))
        .unwrap_err();
    assert!(
        format!("{twice:#}").contains("the target column title is mapped twice"),
        "{twice:#}"
    );
    // Arithmetic on text, and a NOT NULL target column nothing fills, are refused by the check.
    let mut text_math = Mapping::parse(&MAPPING.replace(
        "{ source = \"name\", target = \"title\" }",
        "{ source = \"name\", target = \"title\", transform = \"multiply:10\" }",
    ))
    .unwrap();
    let err = format!("{:#}", text_math.check(&source, &target).await.unwrap_err());
    assert!(err.contains("needs numbers on both sides"), "{err}");
    let mut unfilled =
        Mapping::parse(&MAPPING.replace("  { source = \"name\", target = \"title\" },\n", ""))
            .unwrap();
    let err = format!("{:#}", unfilled.check(&source, &target).await.unwrap_err());
    assert!(
        err.contains("the target column items.title is NOT NULL without a default"),
        "{err}"
    );
    // Nothing was installed.
    let none = sqlx::query("SELECT 1 FROM sync_changes")
        .fetch_optional(source.pool())
        .await;
    assert!(none.is_err(), "no change log exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL: set TEST_DATABASE_URL and run with --ignored"]
async fn the_relay_waits_for_a_change_that_may_still_commit() {
    let (source, target, mapping, _dbs) = setup(TestDb::postgres().await).await;
    assert_eq!(source.backend(), Backend::Postgres);
    capture::install(&source, &mapping).await.unwrap();
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();

    // A takes sequence number 1 and stays open; B takes 2 and commits.
    let mut a = source.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO src_items VALUES (1, 'slow', 1, NULL)")
        .execute(&mut *a)
        .await
        .unwrap();
    exec(&source, "INSERT INTO src_items VALUES (2, 'fast', 2, NULL)").await;
    let step = relay.step().await.unwrap();
    assert_eq!(
        step.applied, 0,
        "the cursor must not move past the open change"
    );
    assert_eq!(step.gap.map(|(seq, _)| seq), Some(1));
    assert_eq!(relay.step().await.unwrap().applied, 0, "still open");
    a.commit().await.unwrap();
    assert_eq!(
        relay.drain().await.unwrap(),
        2,
        "no gap once the open change committed"
    );

    // C takes 3 and rolls back; D takes 4 and commits: 3 is skipped once C has ended.
    let mut c = source.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO src_items VALUES (3, 'never', 3, NULL)")
        .execute(&mut *c)
        .await
        .unwrap();
    exec(&source, "INSERT INTO src_items VALUES (4, 'kept', 4, NULL)").await;
    assert_eq!(relay.step().await.unwrap().applied, 0);
    c.rollback().await.unwrap();
    // The gap is skipped once every transaction that was open when it was seen has ended
    // (other tests' transactions on the same server may hold that back a little).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.cursor().await.unwrap() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rolled-back number was never skipped"
        );
        if relay.drain().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(relay.cursor().await.unwrap(), 4);
    assert!(verify(&source, &target, &mapping).await.unwrap().clean());
}

async fn backfill_under_concurrent_writes_loses_nothing(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    // Rows from before capture existed.
    for start in (0..2500).step_by(500) {
        let values: Vec<String> = (start + 1..=start + 500)
            .map(|i| format!("({i}, 'item {i}', {i}, NULL)"))
            .collect();
        exec(
            &source,
            &format!("INSERT INTO src_items VALUES {}", values.join(", ")),
        )
        .await;
    }
    let early = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward").await;
    assert!(format!("{:#}", early.unwrap_err()).contains("install it first"));
    capture::install(&source, &mapping).await.unwrap();

    // Writers and the relay run all along the backfill.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (source, stop) = (source.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = (i * 37) % 2500 + 1;
                exec(&source, &format!("UPDATE src_items SET price_cents = price_cents + 1, name = 'changed {i}' WHERE id = {id}")).await;
                exec(
                    &source,
                    &format!(
                        "INSERT INTO src_items VALUES ({}, 'new {i}', {i}, NULL)",
                        10_000 + i
                    ),
                )
                .await;
                if i % 5 == 0 {
                    exec(
                        &source,
                        &format!("DELETE FROM src_items WHERE id = {}", (i * 11) % 2500 + 1),
                    )
                    .await;
                }
                tokio::task::yield_now().await;
            }
            i
        })
    };
    let relay = {
        let (source, target, mapping, stop) = (
            source.clone(),
            target.clone(),
            mapping.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut relay = Relay::new(source, target, mapping, "forward")
                .await
                .unwrap()
                .with_batch(50);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                relay.step().await.unwrap();
                tokio::task::yield_now().await;
            }
            relay.release_lease().await.unwrap();
        })
    };
    // A first run stops after two chunks; a second resumes.
    let first = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(300);
    let partial = first.run_chunks(2, |_| {}).await.unwrap();
    assert_eq!(partial[0].read, 600);
    assert!(!partial[0].done);
    let second = Backfill::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap()
        .with_chunk(300);
    let mut reports = 0;
    let done = second.run(|_| reports += 1).await.unwrap();
    assert!(done[0].done);
    assert!(done[0].read >= 2500, "{:?}", done[0]);
    assert!(reports > 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    relay.await.unwrap();
    assert!(writes > 0);

    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    relay.drain().await.unwrap();
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(
        report.clean(),
        "{}\n{:#?}",
        report.summary(),
        report.drift.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        report.rows_compared,
        u64::try_from(count(&source, "SELECT CAST(COUNT(*) AS BIGINT) FROM src_items").await)
            .unwrap()
    );
}

/// A change the target cannot take (a price that overflows the transform, a name the target's
/// unique index refuses) parks its key; every other key flows, later changes of a parked key
/// wait behind it, verify names it, and an operator retries it or skips it.
async fn a_refused_change_is_parked_and_the_other_keys_flow(db: TestDb) {
    let (source, target, mapping, _dbs) = setup(db).await;
    exec(&target, "CREATE UNIQUE INDEX items_title ON items (title)").await;
    capture::install(&source, &mapping).await.unwrap();
    let mut relay = Relay::new(source.clone(), target.clone(), mapping.clone(), "forward")
        .await
        .unwrap();
    exec(
        &source,
        "INSERT INTO src_items VALUES (1, 'a', 100, NULL), (2, 'b', 200, NULL)",
    )
    .await;
    exec(
        &source,
        &format!("INSERT INTO src_items VALUES (3, 'c', {}, NULL)", i64::MAX),
    )
    .await;
    exec(
        &source,
        "INSERT INTO src_items VALUES (4, 'd', 400, NULL), (5, 'dup', 500, NULL)",
    )
    .await;
    exec(
        &source,
        "INSERT INTO src_items VALUES (6, 'dup', 600, NULL)",
    )
    .await;
    relay.drain().await.unwrap();
    let applied = count(&target, "SELECT COUNT(*) FROM items").await;
    assert_eq!(applied, 4, "1, 2, 4 and one of the two 'dup' rows");
    let parked = parked::list(&target, Some("items:forward")).await.unwrap();
    let keys: Vec<&str> = parked.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys.len(), 2, "{parked:?}");
    assert!(keys.contains(&"[3]"), "{parked:?}");
    let overflow = parked.iter().find(|p| p.key == "[3]").unwrap();
    assert!(overflow.error.contains("overflows"), "{}", overflow.error);
    let dup_key = parked.iter().find(|p| p.key != "[3]").unwrap().key.clone();
    assert_eq!(relay.parked().await.unwrap(), 2);

    // The stream moves on; a later change of a parked key waits behind it.
    exec(&source, "UPDATE src_items SET name = 'c2' WHERE id = 3").await;
    exec(&source, "UPDATE src_items SET name = 'a2' WHERE id = 1").await;
    relay.drain().await.unwrap();
    assert_eq!(
        count(&target, "SELECT COUNT(*) FROM items WHERE title = 'a2'").await,
        1
    );
    assert_eq!(
        count(&target, "SELECT COUNT(*) FROM items WHERE item_id = 3").await,
        0
    );
    let waiting = parked::list(&target, Some("items:forward")).await.unwrap();
    let three = waiting.iter().find(|p| p.key == "[3]").unwrap();
    assert!(
        three.seq > three.first_seq,
        "the later change waits behind: {three:?}"
    );
    assert_eq!(relay.lag().await.unwrap().0, 0, "nothing is left unread");

    // Verify names the parked keys beside the drift they cause.
    let report = verify(&source, &target, &mapping).await.unwrap();
    assert!(!report.clean());
    assert!(
        drifted(&report, "item_id").contains(&(3, DriftKind::Unmappable)),
        "{}",
        report.summary()
    );
    assert_eq!(report.parked.len(), 2);
    assert!(
        report
            .summary()
            .contains("parked: items:forward src_items key [3]"),
        "{}",
        report.summary()
    );

    // A retry before the data is fixed fails again and keeps the key.
    let retried = relay
        .retry_parked(Some(("src_items", "[3]")))
        .await
        .unwrap();
    assert_eq!((retried.applied, retried.still_parked.len()), (0, 1));
    // Fixed at the source: the retry applies the latest change of the key.
    exec(
        &source,
        "UPDATE src_items SET price_cents = 300 WHERE id = 3",
    )
    .await;
    relay.drain().await.unwrap();
    let retried = relay
        .retry_parked(Some(("src_items", "[3]")))
        .await
        .unwrap();
    assert_eq!((retried.applied, retried.still_parked.len()), (1, 0));
    assert_eq!(
        count(&target, "SELECT price_mills FROM items WHERE item_id = 3").await,
        3000
    );
    let attempts = parked::list(&target, None).await.unwrap();
    assert_eq!(attempts.len(), 1);
    // The other is skipped: the target keeps what it has, and the stream goes on.
    assert!(
        parked::skip(&target, "items:forward", "src_items", &dup_key)
            .await
            .unwrap()
    );
    assert!(
        !parked::skip(&target, "items:forward", "src_items", &dup_key)
            .await
            .unwrap()
    );
    assert!(parked::list(&target, None).await.unwrap().is_empty());
    exec(&source, "INSERT INTO src_items VALUES (7, 'g', 700, NULL)").await;
    relay.drain().await.unwrap();
    assert_eq!(
        count(&target, "SELECT COUNT(*) FROM items WHERE item_id = 7").await,
        1
    );
}

/// Two carve-outs whose tables live in the same source database capture into one change log:
/// each relay applies its own tables, moves past the other's changes, counts only its own in
/// its lag; removing one carve-out's capture leaves the other's working.
async fn two_carve_outs_share_one_change_log(db: TestDb) {
    let (source, target, items, _dbs) = setup(db).await;
    exec(
        &source,
        "CREATE TABLE src_stock (product_id BIGINT PRIMARY KEY, quantity BIGINT NOT NULL)",
    )
    .await;
    exec(
        &target,
        "CREATE TABLE stock (product_id BIGINT PRIMARY KEY, available BIGINT NOT NULL)",
    )
    .await;
    let mut stock = Mapping::parse(
        r#"
carveout = "stock"
[[tables]]
source = "src_stock"
target = "stock"
key = [{ source = "product_id", target = "product_id" }]
columns = [{ source = "quantity", target = "available" }]
"#,
    )
    .unwrap();
    stock.check(&source, &target).await.unwrap();
    capture::install(&source, &items).await.unwrap();
    capture::install(&source, &stock).await.unwrap();
    exec(&source, "INSERT INTO src_stock VALUES (1, 5)").await;
    exec(
        &source,
        "INSERT INTO src_items (id, name, price_cents) VALUES (1, 'a', 100)",
    )
    .await;
    exec(&source, "INSERT INTO src_stock VALUES (2, 7)").await;
    let mut items_relay = Relay::new(source.clone(), target.clone(), items.clone(), "forward")
        .await
        .unwrap();
    assert_eq!(
        items_relay.lag().await.unwrap().0,
        1,
        "only its own table counts"
    );
    assert_eq!(
        items_relay.drain().await.unwrap(),
        3,
        "it moves past the other's changes"
    );
    assert_eq!(
        count(&target, "SELECT CAST(COUNT(*) AS BIGINT) FROM items").await,
        1
    );
    assert_eq!(
        count(&target, "SELECT CAST(COUNT(*) AS BIGINT) FROM stock").await,
        0
    );
    let mut stock_relay = Relay::new(source.clone(), target.clone(), stock.clone(), "forward")
        .await
        .unwrap();
    assert_eq!(stock_relay.lag().await.unwrap().0, 2);
    stock_relay.drain().await.unwrap();
    assert_eq!(
        count(&target, "SELECT CAST(SUM(available) AS BIGINT) FROM stock").await,
        12
    );
    // The items carve-out leaves: the stock's capture keeps its log and goes on.
    capture::uninstall(&source, &items).await.unwrap();
    assert!(capture::installed(&source, &stock).await.unwrap());
    exec(
        &source,
        "UPDATE src_stock SET quantity = 4 WHERE product_id = 1",
    )
    .await;
    stock_relay.drain().await.unwrap();
    assert_eq!(
        count(&target, "SELECT available FROM stock WHERE product_id = 1").await,
        4
    );
    // The last one removes the log.
    capture::uninstall(&source, &stock).await.unwrap();
    assert!(sqlx::query("SELECT 1 FROM sync_changes")
        .fetch_optional(source.pool())
        .await
        .is_err());
}
