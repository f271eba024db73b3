//! warren: run sandboxed WebAssembly message handlers on RabbitMQ.
//!
//! Layout (one module per concern; the pipeline for a batch of messages reads
//! top to bottom in [`pipeline::process`]):
//!
//! - [`config`]: the TOML config file, defaults, validation.
//! - [`server`]: `warren run`: start-up, the connection supervisor, consumer
//!   loops, graceful shutdown; [`liveness`]: the log's word while it is
//!   not consuming.
//! - [`pipeline`]: a batch of messages: dedup claims, handler, settlement.
//! - [`amqp`]: RabbitMQ, the only module that knows lapin.
//! - [`dedup`]: the dedup store, the only module that knows Redis.
//! - [`runtime`]: the sandbox, the only module that knows wasmtime.
//! - [`registry`]: module versions per handler; deploy and rollback.
//! - [`retry`]: backoff and wait-queue tiers.
//! - [`admin`]: the HTTP admin endpoint; [`metrics`]: what it exports.
//! - [`shutdown`]: signals fanned out to every task.
//! - [`watch`]: deploy when a module file changes.
//! - [`check`]: `warren check`; [`client`]: `warren deploy`, `rollback`,
//!   `status` against a running host.
//! - [`scaffold`]: `warren new`, handler project templates per language.
//! - [`logging`]: structured log set-up.

pub mod admin;
pub mod amqp;
pub mod check;
pub mod client;
pub mod config;
pub mod dedup;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod shutdown;
pub mod watch;
