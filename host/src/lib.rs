//! warren: run sandboxed WebAssembly message handlers on RabbitMQ.
//!
//! Layout (one module per concern):
//!
//! - [`runtime`]: the sandbox, the only module that knows wasmtime: one
//!   engine, modules compiled once and pre-linked, a fresh instance per
//!   message under a CPU deadline and a memory cap.
//! - [`logging`]: structured log set-up.
//! - [`check`]: `warren check`, what a module is and whether it fits the world.

pub mod check;
pub mod dedup;
pub mod logging;
pub mod runtime;
