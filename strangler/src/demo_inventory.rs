//! `strangler demo --carveout inventory`: the inventory walked through every phase while
//! customers place orders, its reads shadowed and then served by the service, its writes cut
//! over (the orders saga moves from the facade in process to messages) and rolled back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use strangler_sync::relay::Relay;
use strangler_sync::verify;

use crate::stack::{run_rollout, say, verify_contracts, Stack};

/// What the live traffic saw.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    failed: AtomicU64,
    confirmed: AtomicU64,
    declined: AtomicU64,
    out_of_stock: AtomicU64,
}

fn n(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Orders of one unit (every fifth card declined) on the first third of the products, reads of
/// the second third's stock (sticky by user), stock set on the last third; all through the
/// proxy. An order answered anything but confirmed (201), declined (402) or out of stock (409)
/// is a failure, as is a read or a write not answered 200.
async fn traffic(proxy: String, products: u64, traffic: Arc<Traffic>, running: Arc<AtomicBool>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default();
    let third = (products / 3).max(1);
    let mut i: u64 = 0;
    while running.load(Ordering::Relaxed) {
        i += 1;
        let (request, order) = match i % 4 {
            0 | 1 => (
                http.post(format!("{proxy}/orders")).json(&json!({
                    "customer_id": 1 + i % 20,
                    "items": [{"product_id": 1 + i % third, "quantity": 1}],
                    "card_token": if i % 5 == 0 { "tok_decline" } else { "tok_ok" },
                })),
                true,
            ),
            2 => (
                http.get(format!("{proxy}/inventory/{}", 1 + third + i % third))
                    .header("x-user-id", format!("user-{}", i % 97)),
                false,
            ),
            _ => (
                http.put(format!("{proxy}/inventory/{}", 1 + 2 * third + i % third))
                    .json(&json!({"quantity": 100 + i % 50})),
                false,
            ),
        };
        traffic.sent.fetch_add(1, Ordering::Relaxed);
        let status = request
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        let counter = match (order, status) {
            (true, 201) => Some(&traffic.confirmed),
            (true, 402) => Some(&traffic.declined),
            (true, 409) => Some(&traffic.out_of_stock),
            (false, 200) => None,
            _ => Some(&traffic.failed),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count(db: &sqlkit::Db, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(db.pool()).await?)
}

/// Walks the stack's inventory carve-out with live orders.
pub(crate) async fn walk(stack: &Stack, products: u64) -> anyhow::Result<()> {
    say(&format!(
        "1. the stack is up: proxy {}, monolith {}, inventory service {}",
        stack.proxy, stack.monolith, stack.inventory
    ));
    say("   the stock and reservations were copied to the service; forward sync follows every change; orders reserve stock in process");
    let counts = Arc::new(Traffic::default());
    let running = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn(traffic(
        stack.proxy.clone(),
        products,
        counts.clone(),
        running.clone(),
    ));
    let admin = stack.admin_client()?;
    let pause = || tokio::time::sleep(Duration::from_millis(1500));
    pause().await;
    say(&format!(
        "2. phase monolith: {} requests so far ({} orders confirmed)",
        n(&counts.sent),
        n(&counts.confirmed)
    ));

    run_rollout(
        &admin,
        "inventory",
        "3. rollout of the inventory's reads started: shadow, then canary 10%, 50%, 100%, each promoted once its checks pass",
        "writes and orders stay with the monolith",
    )
    .await?;
    verify_contracts(
        &admin,
        "inventory",
        &stack.inventory_contracts,
        inventory_service::states::PATH,
    )
    .await?;

    say("6. cut-over: pre-checks, write fence (the proxy holds the stock writes, the write guard holds the saga's reservations in the monolith), relay drained, re-verify, writes flipped to the service");
    crate::cutover::run(
        &admin,
        "inventory",
        stack.cutover_args("demo cut-over"),
        true,
    )
    .await?;
    pause().await;
    let (monolith_db, service_db, mapping) = stack.dbs("inventory").await?;
    let by_message = count(
        &service_db,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM stock_movements WHERE reason = 'reserve'",
    )
    .await?;
    say(&format!(
        "7. phase extracted: the service owns the stock; the orders saga reaches it by message ({by_message} reservation(s) made by the service so far); reverse sync keeps the monolith's copy current"
    ));

    say("8. roll-back: the mirror image, the writes and the saga back to the monolith");
    crate::cutover::run(
        &admin,
        "inventory",
        stack.cutover_args("demo roll-back"),
        false,
    )
    .await?;
    pause().await;
    running.store(false, Ordering::Relaxed);
    load.await?;

    // Every order settles and every compensation lands (a release goes out with the failed
    // order's settlement); the stack's forward relay catches up; both sides agree.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        let pending = count(
            &monolith_db,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM orders_orders WHERE status = 'pending'",
        )
        .await?;
        let held = count(
            &monolith_db,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM inventory_reservations WHERE status = 'held'",
        )
        .await?;
        if pending == 0 && held == 0 {
            break held;
        }
        if tokio::time::Instant::now() >= deadline {
            let rows = sqlx::query(
                "SELECT r.order_id, r.product_id, o.status, o.failure_reason FROM inventory_reservations r \
                 JOIN orders_orders o ON o.id = r.order_id WHERE r.status = 'held' ORDER BY r.order_id LIMIT 10",
            )
            .fetch_all(monolith_db.pool())
            .await?;
            let held_by: Vec<String> = rows
                .iter()
                .map(|row| {
                    use sqlx::Row as _;
                    format!(
                        "order {} ({}: {})",
                        row.try_get::<i64, _>(0).unwrap_or_default(),
                        row.try_get::<String, _>(2).unwrap_or_default(),
                        row.try_get::<Option<String>, _>(3)
                            .ok()
                            .flatten()
                            .unwrap_or_default()
                    )
                })
                .collect();
            anyhow::bail!(
                "{pending} order(s) still pending and {held} reservation(s) held 30 s after the traffic stopped (held by {})",
                held_by.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let watcher = Relay::new(
        monolith_db.clone(),
        service_db.clone(),
        mapping.clone(),
        "forward",
    )
    .await?;
    while watcher.lag().await?.0 > 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the forward relay did not settle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = verify::verify_live(
        &monolith_db,
        &service_db,
        &mapping,
        Some("inventory:forward"),
    )
    .await?;
    let failed = n(&counts.failed);
    say(&format!(
        "9. done: {} requests, {} orders confirmed, {} declined (stock released), {} out of stock, {failed} failed; no order pending, {held} reservation(s) held; monolith and service: {}",
        n(&counts.sent),
        n(&counts.confirmed),
        n(&counts.declined),
        n(&counts.out_of_stock),
        check.summary().trim().replace('\n', "; ")
    ));
    anyhow::ensure!(failed == 0, "{failed} request(s) failed during the demo");
    anyhow::ensure!(check.clean(), "the two sides do not agree after the demo");
    Ok(())
}
