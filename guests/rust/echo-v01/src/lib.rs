//! The echo handler as a module built against `warren:handler@0.1.0`
//! (`wit/0.1.0/handler.wit`, without the SDK, which follows the newest
//! version): the compatibility rule in `wit/README.md` says such a module
//! keeps loading and running unchanged, and the tests run this one to show
//! it. Publishes each body unchanged to `out_routing_key` and acks.

wit_bindgen::generate!({ path: "../../../wit/0.1.0", world: "handler" });

use warren::handler::host;
use warren::handler::types::{Headers, Outbound};

struct Echo;

impl Guest for Echo {
    fn handle(msg: Message) -> Outcome {
        let routing_key =
            host::config("out_routing_key").unwrap_or_else(|| format!("{}.out", msg.routing_key));
        let out = Outbound {
            exchange: String::new(),
            routing_key,
            body: msg.body,
            content_type: msg.content_type,
            content_encoding: None,
            correlation_id: msg.message_id,
            type_: None,
            headers: Headers {
                entries: Vec::new(),
                nested: Vec::new(),
            },
        };
        match host::publish(&out) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Reject(format!("cannot publish: {e:?}")),
        }
    }
}

export!(Echo);
