//! warren: run sandboxed WebAssembly message handlers on RabbitMQ.
//!
//! Layout, top to bottom; a module imports only from modules below it
//! (ARCHITECTURE.md draws the same layers):
//!
//! - [`app`]: `warren run` as two calls, `load_config` and `serve`;
//!   [`cli`]: the command line and the subcommands that are not `run`.
//! - [`server`]: start-up, the connection supervisor, the consumer loops,
//!   graceful shutdown; [`admin`]: the HTTP admin endpoint; [`watch`]:
//!   deploy when a module file changes; [`fleet`]: deploys to every host
//!   through the broker; [`client`]: `warren deploy`,
//!   `rollback`, `status` against a running host.
//! - [`registry`]: deploy and roll back module versions; [`liveness`]: what
//!   a host that is not consuming says, and since when.
//! - [`pipeline`]: a batch of messages, from keys to settlement; the one
//!   place where AMQP's types and the guest's are converted.
//! - [`context`]: what every layer above shares: the process's `Shared`,
//!   each handler's `HandlerCtx`, the `Host`.
//! - [`versions`]: a handler's live, previous and known module versions;
//!   [`shadow`]: a candidate version compared with the live one;
//!   [`canary`]: a candidate version run on a share of the messages.
//! - [`amqp`]: RabbitMQ, the only module that knows lapin; [`dedup`]: the
//!   dedup store, the only module that knows Redis; [`runtime`]: the
//!   sandbox, the only module that knows wasmtime; [`metrics`]: the
//!   Prometheus registry.
//! - [`telemetry`]: OpenTelemetry spans over OTLP/HTTP (off by default);
//!   [`retry`]: backoff and wait-queue tiers; [`shutdown`]: signals fanned
//!   out to every task; [`signing`]: module signatures and the trust
//!   policy; [`logging`]: structured log set-up; [`check`]:
//!   `warren check`; [`scaffold`]: `warren new`; [`dlq`]: `warren dlq`;
//!   [`trial`]: `warren test` (a module on messages from files, no broker).
//! - [`config`]: the TOML config file, defaults, validation; [`recent`]:
//!   each handler's latest latencies and failures, for the dashboard.

pub mod admin;
pub mod amqp;
pub mod app;
pub mod canary;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod context;
pub mod dedup;
pub mod dlq;
pub mod fleet;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod recent;
pub mod registry;
pub mod retry;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod shadow;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod trial;
pub mod versions;
pub mod watch;
