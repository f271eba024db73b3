//! The generated bindings for the `warren:handler` world: the only place
//! `bindgen!` is called, so every other file sees one set of types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    additional_derives: [PartialEq],
    // `handle` runs as a future (`call_async`), so a deadline can drop it
    // wherever the guest is, a blocking WASI poll included. The host's own
    // imports stay synchronous: they only buffer and count, never wait.
    exports: { default: async },
});

// `Message` and `Outcome` are already here: the world `use`s them.
pub use warren::handler::types::{
    Decimal, FieldValue, Header, Headers, Level, Nested, Outbound, PublishError, Retry,
};

impl Message {
    /// A message with `body`, `message_id` and `routing_key`, every other
    /// property unset, on its first attempt: what smoke tests, benchmarks
    /// and tests run through a handler.
    pub fn synthetic(body: Vec<u8>, message_id: &str, routing_key: &str) -> Self {
        Message {
            body,
            content_type: None,
            content_encoding: None,
            message_id: Some(message_id.into()),
            correlation_id: None,
            reply_to: None,
            timestamp: None,
            type_: None,
            app_id: None,
            headers: Headers {
                entries: Vec::new(),
                nested: Vec::new(),
            },
            exchange: String::new(),
            routing_key: routing_key.into(),
            redelivered: false,
            attempt: 1,
            dedup_key: None,
            fencing_token: 0,
        }
    }
}
