//! The `orders` example handler end to end, in each language it is written
//! in (guests/rust/orders, guests/python/orders, guests/js/orders,
//! guests/c/orders), under
//! `warren run`: it asks a price service the test starts on loopback
//! (`tests/src/http_server.rs`, `/price/SKU`) for a price, adds to a
//! per-customer total in the key-value store (Redis) and publishes the
//! enriched order.
//!
//! What it shows, per language: the prices, amounts and running totals of
//! two customers' orders; a duplicate of an order counts nothing and asks
//! for no price; an order for a SKU the price service does not know (404)
//! retries and is dead-lettered with a reason naming the status and the URL,
//! both runs sending the same `Idempotency-Key`; a body that is not an order
//! is dead-lettered at once.

use std::time::Duration;

use serde_json::{Value, json};
use warren_tests::fixture::{Fixture, SHARED_REDIS};
use warren_tests::http_server::HttpServer;
use warren_tests::module_cache_dir;
use warren_tests::process::{Warren, free_port};

/// The orders and what each must publish: (message id, customer, sku, qty,
/// price_cents, amount_cents, customer_total_cents).
const ORDERS: [(&str, &str, &str, i64, i64, i64, i64); 3] = [
    ("o1", "alice", "A-1", 2, 250, 500, 500),
    ("o2", "bob", "B-2", 1, 1999, 1999, 1999),
    ("o3", "alice", "B-2", 3, 1999, 5997, 6497),
];

fn order(id: &str, customer: &str, sku: &str, qty: i64) -> Vec<u8> {
    json!({"order_id": id, "customer": customer, "sku": sku, "qty": qty})
        .to_string()
        .into_bytes()
}

async fn orders(guest: &str) {
    let prices = HttpServer::start_prices(&[("A-1", 250), ("B-2", 1999)]).await;
    let base = format!("http://127.0.0.1:{}", prices.addr.port());
    let mut f = Fixture::new(&format!("orders-{}", guest.replace('_', "-")))
        .guest(guest)
        .handler("orders")
        .redis(SHARED_REDIS, "pause")
        .section(&format!(
            "[runtime]\ncache_dir = \"{}\"\n",
            module_cache_dir().display()
        ))
        .extra(&format!(
            "timeout_ms = 10000\nmemory_mb = 128\n\
             [handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n\
             [handler.http]\nallow = [\"{base}\"]\n"
        ))
        .prepare()
        .await;
    let admin = free_port();
    let config = f.config(admin).replace(
        "[handler.config]\n",
        &format!("[handler.config]\nprice_url = \"{base}\"\n"),
    );
    let mut w = Warren::start(&config, Some(admin));
    // Interpreted guests compile for a while the first time on a machine.
    w.wait_log("consuming", Duration::from_secs(300));
    f.warrens.push(w);

    let published = |got: &warren_tests::broker::Got| -> Value {
        serde_json::from_slice(&got.body)
            .unwrap_or_else(|e| panic!("{guest} published no JSON ({e}): {}", got.body_str()))
    };
    // An output goes out before its message's key-value writes are
    // committed with the done-marker, so each order is sent only once the
    // one before it is settled: its total is then in the store.
    for (n, (id, customer, sku, qty, price, amount, total)) in ORDERS.into_iter().enumerate() {
        f.rabbit
            .publish(&f.queue, id, &order(id, customer, sku, qty))
            .await;
        let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(30)).await;
        assert_eq!(
            published(&got[0]),
            json!({
                "order_id": id, "customer": customer, "sku": sku, "qty": qty,
                "price_cents": price, "amount_cents": amount, "customer_total_cents": total,
            }),
            "{guest}"
        );
        f.settle(n as u64 + 1, Duration::from_secs(30)).await;
    }

    // A copy of o1: acked as a duplicate, without a run, so no price is
    // asked and nothing is added to alice's total.
    f.rabbit
        .publish(&f.queue, "o1", &order("o1", "alice", "A-1", 2))
        .await;
    f.settle(4, Duration::from_secs(30)).await;
    assert_eq!(f.w().outcome("dedup_hit"), 1, "{guest}");
    f.rabbit
        .publish(&f.queue, "o4", &order("o4", "alice", "A-1", 1))
        .await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(30)).await;
    let o4 = published(&got[0]);
    assert_eq!(o4["customer_total_cents"], json!(6747), "{guest}: {o4}");

    // A SKU the price service does not know: 404, a retry, then the
    // dead-letter queue with the handler's reason.
    f.rabbit
        .publish(&f.queue, "o5", &order("o5", "bob", "Z-9", 1))
        .await;
    let dead = f.rabbit.collect(&f.dead, 1, Duration::from_secs(30)).await;
    let reason = dead[0].header("x-warren-reason").unwrap_or_default();
    let want = format!("price service answered 404 for {base}/price/Z-9");
    assert!(reason.contains(&want), "{guest}: {reason}");
    assert_eq!(f.w().outcome("retry"), 1, "{guest}");

    // Not an order: dead-lettered at once, no price asked.
    f.rabbit
        .publish(
            &f.queue,
            "o6",
            br#"{"order_id": "o6", "customer": "bob", "qty": 1}"#,
        )
        .await;
    let dead = f.rabbit.collect(&f.dead, 1, Duration::from_secs(30)).await;
    let reason = dead[0].header("x-warren-reason").unwrap_or_default();
    assert!(
        reason.contains("not an order: sku must be a non-empty string"),
        "{guest}: {reason}"
    );

    f.settle(7, Duration::from_secs(30)).await;
    f.assert_nothing_more().await;
    let seen = prices.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/price/A-1",
            "/price/B-2",
            "/price/B-2",
            "/price/A-1",
            "/price/Z-9",
            "/price/Z-9"
        ],
        "{guest}"
    );
    // The two runs of o5 sent the same key, so a price service that
    // honours it sees one request.
    assert!(seen[4].idempotency_key.is_some(), "{guest}");
    assert_eq!(seen[4].idempotency_key, seen[5].idempotency_key, "{guest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_orders_prices_totals_and_publishes() {
    orders("orders").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_orders_prices_totals_and_publishes() {
    orders("orders_python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_orders_prices_totals_and_publishes() {
    orders("orders_js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c_orders_prices_totals_and_publishes() {
    orders("orders_c").await;
}
