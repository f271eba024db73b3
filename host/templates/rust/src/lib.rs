//! The {{name}} handler: takes a JSON object, adds `handled_by` (and the
//! `tenant` header, when the message has one), `tenant_info` (what an HTTP
//! service says about the tenant, when `lookup_url` is configured) and
//! `seen` (how many messages of that tenant it has handled, counted in the
//! key-value store), and publishes it as JSON to the configured
//! destination; a body that is not a JSON object is rejected, a failed
//! lookup is retried.
//!
//! Config keys (the `[handler.config]` table of the host's config file, and
//! of handler.toml for `warren test`): `handled_by` (default `{{name}}`),
//! `lookup_url` (default: none, no lookup; the handler's `[http]` grant
//! must allow it), `out_exchange` (default `""`, the default exchange) and
//! `out_routing_key` (default: the input routing key + `.out`).

wit_bindgen::generate!({ path: "wit", world: "handler" });

mod helpers;

use helpers::{
    ack, config, get_json, header_str, json_body, publish_json, reject, retry, url_segment,
};
use serde_json::{Map, Value};
use warren::handler::{host, kv};
use warren::handler::types::Level;

struct Handler;

impl Guest for Handler {
    fn handle(msg: Message) -> Outcome {
        host::log(Level::Info, &format!("got {} bytes", msg.body.len()));
        let mut obj: Map<String, Value> = match json_body(&msg) {
            Ok(obj) => obj,
            // Never try again: the message goes to the dead-letter queue.
            Err(e) => return reject(format!("body is not a JSON object: {e}")),
        };
        obj.insert("handled_by".into(), config("handled_by", "{{name}}").into());
        let tenant = header_str(&msg, "tenant");
        if let Some(tenant) = tenant {
            obj.insert("tenant".into(), tenant.into());
        }
        // Outbound HTTP, when configured: ask the tenant service about the
        // tenant. If it fails, try the whole message again later.
        if let (Some(base), Some(tenant)) = (host::config("lookup_url"), tenant) {
            let url = format!("{}/tenants/{}", base.trim_end_matches('/'), url_segment(tenant));
            match get_json(&url) {
                Ok(info) => obj.insert("tenant_info".into(), info),
                Err(why) => return retry(format!("tenant lookup {url}: {why}"), None),
            };
        }
        // The key-value store: one counter per tenant. The write is
        // committed with the message's done-marker, and only on ack, so a
        // redelivered or duplicate message counts once.
        let key = format!("count:{}", tenant.unwrap_or("-"));
        match kv::increment(&key, 1) {
            Ok(seen) => obj.insert("seen".into(), seen.into()),
            Err(e) => return retry(format!("key-value store: {e:?}"), None),
        };
        // Buffered: sent only if we return ack(). To try the message again
        // later instead, return helpers::retry("why", Some(5000)).
        let routing_key = config("out_routing_key", &format!("{}.out", msg.routing_key));
        match publish_json(
            &config("out_exchange", ""),
            &routing_key,
            &obj,
            msg.correlation_id.clone(),
        ) {
            Ok(()) => ack(),
            Err(why) => reject(format!("cannot publish: {why}")),
        }
    }
}

export!(Handler);
