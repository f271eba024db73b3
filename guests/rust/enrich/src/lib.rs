//! The enrich handler, in Rust. The same handler exists in Python, JavaScript
//! and C (guests/python, guests/js, guests/c) and all four behave alike to the
//! byte; `tests/tests/polyglot.rs` holds them to it.
//!
//! It parses the body as a JSON object, adds the config field `field`
//! (default `enriched`) set to the config string `value` (default empty) and
//! `attempt` set to the delivery attempt, publishes the object as JSON and
//! acks. A body that is not a JSON object is rejected (dead-lettered) with a
//! reason that starts with `body is not a JSON object: `.
//!
//! Config keys: `field`, `value`, `out_exchange` (default `""`) and
//! `out_routing_key` (default: the input routing key + `.out`).

use serde_json::Value;
use warren_guest::{Handler, Message, Outbound, Outcome, PublishError};

/// The common start of every reject reason for a body that is not an object.
const NOT_AN_OBJECT: &str = "body is not a JSON object: ";

struct Enrich;

impl Handler for Enrich {
    fn handle(msg: Message) -> Outcome {
        let mut object = match serde_json::from_slice::<Value>(&msg.body) {
            Ok(Value::Object(map)) => map,
            Ok(other) => return Outcome::reject(format!("{NOT_AN_OBJECT}it is {}", kind(&other))),
            Err(e) => return Outcome::reject(format!("{NOT_AN_OBJECT}{e}")),
        };
        let field = warren_guest::config("field").unwrap_or_else(|| "enriched".into());
        let value = warren_guest::config("value").unwrap_or_default();
        object.insert(field, Value::String(value));
        object.insert("attempt".into(), Value::from(msg.attempt));

        let mut out = Outbound::new(
            warren_guest::config("out_exchange").unwrap_or_default(),
            warren_guest::config("out_routing_key")
                .unwrap_or_else(|| format!("{}.out", msg.routing_key)),
            serde_json::to_vec(&object).expect("a JSON map always serialises"),
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

/// What a JSON value that is not an object is, as the reject reason says it.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

warren_guest::export!(Enrich);
