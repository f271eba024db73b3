//! The {{name}} handler: publishes each message's body, with its properties,
//! to the configured destination and acks; rejects an empty body.
//!
//! Config keys (the `[handler.config]` table of the host's config file):
//! `out_exchange` (default `""`, the default exchange) and `out_routing_key`
//! (default: the input routing key + `.out`).

wit_bindgen::generate!({ path: "wit", world: "handler" });

use warren::handler::host;
// `Message` and `Outcome` come from the world itself (its `use types.{..}`).
use warren::handler::types::{Headers, Level, Outbound};

struct Handler;

impl Guest for Handler {
    fn handle(msg: Message) -> Outcome {
        if msg.body.is_empty() {
            // Never try again: the message goes to the dead-letter queue.
            return Outcome::Reject("empty body".into());
        }
        host::log(Level::Info, &format!("got {} bytes", msg.body.len()));
        let out = Outbound {
            exchange: host::config("out_exchange").unwrap_or_default(),
            routing_key: host::config("out_routing_key")
                .unwrap_or_else(|| format!("{}.out", msg.routing_key)),
            body: msg.body,
            content_type: msg.content_type,
            content_encoding: msg.content_encoding,
            correlation_id: msg.correlation_id,
            type_: msg.type_,
            headers: Headers {
                entries: Vec::new(),
                nested: Vec::new(),
            },
        };
        // Buffered: sent only if we return Ack. To try the message again
        // later instead, return Outcome::Retry(Retry { delay_ms, reason }).
        match host::publish(&out) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Reject(format!("cannot publish: {e:?}")),
        }
    }
}

export!(Handler);
