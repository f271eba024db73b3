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
//!   `warren rollback --fleet`, `warren status --fleet`;
//! - `canary.rs`: the deployer side of `warren deploy --fleet --canary`:
//!   the canary entry, the hosts' counts, the decision and its entry.
//!
//! The broker part (names, declarations, publishing, consuming) is
//! `amqp::fleet`'s; this module never names the client library.

mod canary;
mod command;
mod follow;

pub use canary::{CanaryArgs, canary};
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
/// Header: why the entry was written (`deploy`, `rollback`, `canary`,
/// `canary-promote`, `canary-rollback`).
pub const H_ACTION: &str = "x-warren-fleet-action";
/// Header: the canary an entry starts ([`KIND_CANARY`]) or decides (the
/// promote or rollback entry that ends it): the canary entry's
/// correlation id.
pub const H_CANARY: &str = "x-warren-fleet-canary";
/// Header: the share of first attempts a canary's candidate runs, 1 to 100.
pub const H_CANARY_PERCENT: &str = "x-warren-fleet-canary-percent";
/// Header: when hosts end a canary by themselves if no decision came, in
/// milliseconds since the Unix epoch.
pub const H_CANARY_UNTIL: &str = "x-warren-fleet-canary-until";
/// Header: the stream offset of the entry a canary runs against (the
/// fleet's desired version when it started); absent when that is each
/// host's configured module. A host that meets the canary entry before
/// the base reads the stream again from there.
pub const H_CANARY_BASE: &str = "x-warren-fleet-canary-base";

/// The body is a module.
pub const KIND_MODULE: &str = "module";
/// The body is empty: run the module file each host's config names (what
/// a rollback past the first fleet deploy returns to).
pub const KIND_CONFIG: &str = "config";
/// The body is a candidate to run on a share of the messages beside the
/// desired version, not a desired version itself.
pub const KIND_CANARY: &str = "canary";

/// Actions that are not a desired version of their own: a rollback
/// (`warren rollback --fleet`) skips them when it looks for the entry
/// before the current one.
pub const CANARY_ACTIONS: [&str; 2] = ["canary", "canary-rollback"];

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
    /// A canary's counts on this host so far (with [`Outcome::Canary`] and
    /// [`Outcome::Expired`]).
    #[serde(default)]
    pub counts: Option<crate::canary::Counts>,
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
    /// was applied instead. For a canary: a newer entry that is not its
    /// decision ended it.
    Superseded,
    /// The canary's candidate runs beside the live version; sent when it
    /// starts and then every second with the counts.
    Canary,
    /// The canary ended on this host without a decision: its deadline
    /// passed (the deployer is gone, or the entry came too late). The live
    /// version stays.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
            Outcome::Superseded => "superseded",
            Outcome::Canary => "canary",
            Outcome::Expired => "expired",
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
    /// The candidate of a canary in progress, and its share.
    #[serde(default)]
    pub canary: Option<String>,
    #[serde(default)]
    pub canary_percent: Option<u8>,
}
