//! The generated bindings for the `warren:handler` world: the only place
//! `bindgen!` is called, so every other file sees one set of types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    additional_derives: [PartialEq],
});

// `Message` and `Outcome` are already here: the world `use`s them.
pub use warren::handler::types::{
    Decimal, FieldValue, Header, Headers, Level, Nested, Outbound, PublishError, Retry,
};
