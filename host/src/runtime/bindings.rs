//! The generated bindings for the `warren:handler` world: the only place
//! `bindgen!` is called, so every other file sees one set of types.
//!
//! Two versions are linked side by side (`wit/README.md`): 0.1.0 at the top
//! of this module and 0.2.0 in [`v2`]. 0.2.0 adds an interface and changes
//! no type, so its `types` interface is mapped onto 0.1.0's Rust types: a
//! message and an outcome are the same values whichever version a module
//! was built against, and so is the `handle` export.

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "handler",
    additional_derives: [PartialEq],
    // `handle` runs as a future (`call_async`), so a deadline can drop it
    // wherever the guest is, a blocking WASI poll included. The host's own
    // imports stay synchronous: they only buffer and count, never wait.
    exports: { default: async },
});

/// `warren:handler@0.2.0`: 0.1.0 plus the `kv` interface.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        additional_derives: [PartialEq],
        exports: { default: async },
        // The key-value calls that read wait for the store (within the
        // message's deadline); `set`, `delete` and the rest only buffer,
        // and a synchronous call costs less than an async one.
        imports: {
            "warren:handler/kv.get": async,
            "warren:handler/kv.increment": async,
            "warren:handler/kv.compare-and-swap": async,
            "warren:handler/kv.list-keys": async,
        },
        with: { "warren:handler/types": super::warren::handler::types },
    });
}

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

impl<T: Send + 'static> HandlerPre<T> {
    /// [`HandlerPre::instantiate_async`] without checking the `handle`
    /// export's type again. [`HandlerPre::new`] checked it against the
    /// component once, and every instance of one component has its types;
    /// the generated method checks on every instantiation (the whole
    /// `message` record, about half a microsecond of every message).
    pub async fn instantiate_checked_once(
        &self,
        mut store: impl wasmtime::AsContextMut<Data = T>,
    ) -> wasmtime::Result<Handler> {
        let mut store = store.as_context_mut();
        let instance = self.instance_pre.instantiate_async(&mut store).await?;
        let handle = instance
            .get_func(&mut store, self.indices.handle)
            .ok_or_else(|| wasmtime::format_err!("the component has no `handle` export"))?;
        Ok(Handler { handle })
    }
}
