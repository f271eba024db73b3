//! The echo handler: publishes each message's body unchanged, with its
//! content-type and headers, then acks.
//!
//! Config keys: `out_exchange` (default `""`, the default exchange) and
//! `out_routing_key` (default: the input routing key + `.out`).

use warren_guest::{Handler, Message, Outbound, Outcome};

struct Echo;

impl Handler for Echo {
    fn handle(msg: Message) -> Outcome {
        let exchange = warren_guest::config("out_exchange").unwrap_or_default();
        let routing_key = warren_guest::config("out_routing_key")
            .unwrap_or_else(|| format!("{}.out", msg.routing_key));
        let out = Outbound {
            exchange,
            routing_key,
            body: msg.body,
            content_type: msg.content_type,
            content_encoding: msg.content_encoding,
            correlation_id: msg.correlation_id,
            type_: msg.type_,
            headers: msg.headers,
        };
        match warren_guest::publish(out) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::reject(format!("echo cannot publish: {e:?}")),
        }
    }
}

warren_guest::export!(Echo);
