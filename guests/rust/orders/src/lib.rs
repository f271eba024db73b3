//! The orders handler, in Rust: outbound HTTP and the key-value store in one
//! small handler. The same handler exists in Python, JavaScript and C
//! (guests/python/orders, guests/js/orders, guests/c/orders);
//! tests/tests/orders.rs runs each against a price service it starts.
//!
//! The body is an order, `{"order_id": "o-1", "customer": "alice", "sku":
//! "A-1", "qty": 2}`. The handler asks `<price_url>/price/<sku>` for the
//! price (`{"sku": "A-1", "price_cents": 250}`), adds `qty * price_cents`
//! to the counter `total:<customer>` and publishes the order with
//! `price_cents`, `amount_cents` and `customer_total_cents` added.
//!
//! - The price service unreachable, or answering anything but 2xx with a
//!   price: retry, with a reason naming the URL.
//! - A body that is not an order: reject (dead-letter).
//! - The counter is written only when the handler acks, together with the
//!   message's dedup marker: an order delivered twice counts once.
//!
//! Config: `price_url` (the `[handler.http] allow` list must grant it),
//! `out_exchange` (default `""`), `out_routing_key` (default: the input
//! routing key + `.out`).

use serde_json::{Map, Value};
use warren_guest::{Handler, Message, Outbound, Outcome, PublishError, config, http, kv};

struct Orders;

impl Handler for Orders {
    fn handle(msg: Message) -> Outcome {
        let mut order = match parse(&msg.body) {
            Ok(order) => order,
            Err(why) => return Outcome::reject(format!("not an order: {why}")),
        };
        let price = match price(&order.sku) {
            Ok(price) => price,
            Err(why) => return Outcome::retry(why),
        };
        let Some(amount) = price.checked_mul(order.qty) else {
            return Outcome::reject("not an order: qty * price_cents overflows");
        };
        // What the message sees includes its own increment; the store
        // applies it only if this returns Ack.
        let total = match kv::increment(&format!("total:{}", order.customer), amount) {
            Ok(total) => total,
            Err(e) => return Outcome::retry(format!("key-value store: {e:?}")),
        };

        let fields = &mut order.fields;
        fields.insert("price_cents".into(), price.into());
        fields.insert("amount_cents".into(), amount.into());
        fields.insert("customer_total_cents".into(), total.into());
        let mut out = Outbound::new(
            config("out_exchange").unwrap_or_default(),
            config("out_routing_key").unwrap_or_else(|| format!("{}.out", msg.routing_key)),
            serde_json::to_vec(fields).expect("a JSON map always serialises"),
        );
        out.content_type = Some("application/json".into());
        out.correlation_id = msg.correlation_id;
        match warren_guest::publish(out) {
            Ok(()) => Outcome::Ack,
            Err(PublishError::NotAllowed(why) | PublishError::LimitExceeded(why)) => {
                Outcome::reject(format!("cannot publish: {why}"))
            }
        }
    }
}

struct Order {
    fields: Map<String, Value>,
    customer: String,
    sku: String,
    qty: i64,
}

fn parse(body: &[u8]) -> Result<Order, String> {
    let fields: Map<String, Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let text = |key: &str| match fields.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("{key} must be a non-empty string")),
    };
    text("order_id")?;
    let customer = text("customer")?;
    let sku = text("sku")?;
    let url_safe = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
    if !sku.bytes().all(url_safe) {
        return Err("sku may hold only letters, digits, '-', '_' and '.'".into());
    }
    let qty = fields
        .get("qty")
        .and_then(Value::as_i64)
        .filter(|q| *q > 0)
        .ok_or("qty must be a positive integer")?;
    Ok(Order {
        fields,
        customer,
        sku,
        qty,
    })
}

/// `GET <price_url>/price/<sku>` and its `price_cents`.
fn price(sku: &str) -> Result<i64, String> {
    let base = config("price_url").ok_or("the config has no price_url")?;
    let url = format!("{}/price/{sku}", base.trim_end_matches('/'));
    let resp = http::get(&url).map_err(|e| format!("price service {url}: {e}"))?;
    if !(200..300).contains(&resp.status) {
        return Err(format!("price service answered {} for {url}", resp.status));
    }
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("price_cents")?.as_i64())
        .filter(|p| *p >= 0)
        .ok_or_else(|| format!("price service answered no price_cents for {url}"))
}

warren_guest::export!(Orders);
