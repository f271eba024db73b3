//! Fleet deploys through the broker: one command puts a module on every
//! host that runs the handler, and hosts that start later or reconnect
//! get the fleet's current version (docs/fleet.md).
//!
//! - this file: what travels (the header names, a host's [`Report`] and
//!   its status), shared by both sides;
//! - `follow.rs`: the host side, started by `warren run` when the config
//!   has a `[fleet]` section: follows each handler's desired-state stream,
//!   validates and swaps through the registry exactly as a local deploy,
//!   and answers pings;
//! - `command.rs`: the deployer side, `warren deploy --fleet`,
//!   `warren rollback --fleet`, `warren status --fleet`.
//!
//! The broker part (names, declarations, publishing, consuming) is
//! `amqp::fleet`'s; this module never names the client library.

mod command;
mod follow;

pub use command::{FleetArgs, deploy, rollback, status};
pub use follow::start;

use serde::{Deserialize, Serialize};

/// Header: the handler a desired-state entry is for.
pub const H_HANDLER: &str = "x-warren-fleet-handler";
/// Header: what the entry's body is: [`KIND_MODULE`] or [`KIND_CONFIG`].
pub const H_KIND: &str = "x-warren-fleet-kind";
/// Header: the module's digest (`sha256:...`), for reading the history
/// without hashing every body.
pub const H_DIGEST: &str = "x-warren-fleet-digest";
/// Header: why the entry was written (`deploy`, `rollback`).
pub const H_ACTION: &str = "x-warren-fleet-action";

/// The body is a module.
pub const KIND_MODULE: &str = "module";
/// The body is empty: run the module file each host's config names (what
/// a rollback past the first fleet deploy returns to).
pub const KIND_CONFIG: &str = "config";

/// What a host did with one desired-state entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub host: String,
    pub handler: String,
    /// The deploy's id (the entry's correlation id).
    pub deploy: String,
    pub result: Outcome,
    /// Why it was refused, in the registry's words.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub old_digest: Option<String>,
    #[serde(default)]
    pub new_digest: Option<String>,
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub compile_ms: f64,
    /// From the entry's arrival to the swap (or the refusal): reading,
    /// checking, compiling, smoke-testing, swapping.
    pub apply_ms: f64,
    /// The pointer swap alone.
    #[serde(default)]
    pub swap_us: f64,
}

/// A deploy's result on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new version is live.
    Deployed,
    /// It was live already: nothing changed.
    Unchanged,
    /// Refused (signature, compile, type check, smoke test); the old
    /// version keeps serving.
    Refused,
    /// A newer entry arrived before this one was applied; the newer one
    /// was applied instead.
    Superseded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::Superseded => "superseded",
        }
    }
}

/// A host's answer to a ping: who it is and what runs there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    pub handlers: Vec<HandlerStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandlerStatus {
    pub name: String,
    pub live: String,
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub signer: Option<String>,
    /// Where the live version came from (`file ...`, `fleet ID`, ...).
    pub source: String,
}
