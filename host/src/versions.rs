//! The module versions of one handler: the live one (swapped atomically),
//! the one before it (for rollback), and the last few versions this
//! process has run, by digest, so a redeploy of a known digest needs no
//! compile. The known versions are bounded (`runtime.keep_versions`): each
//! holds compiled code, and a deploy loop must not grow the process without
//! end.
//!
//! It only keeps versions; validating a new one and deciding to swap is
//! the registry's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::runtime::Module;

/// The versions of one handler.
#[derive(Debug)]
pub struct Versions {
    live: ArcSwap<Module>,
    state: Mutex<History>,
    /// One deploy at a time per handler (a file change and an upload may
    /// race).
    deploying: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct History {
    live: VersionInfo,
    previous: Option<(Arc<Module>, VersionInfo)>,
    known: HashMap<String, Arc<Module>>,
    /// The known digests, least recently made live first.
    order: VecDeque<String>,
    /// The most versions `known` holds.
    keep: usize,
    /// Every version made live, oldest first, the last [`DEPLOYS_KEPT`].
    deploys: VecDeque<VersionInfo>,
    /// Who signed each known version, by hex digest (a digest covers its
    /// signature, so the signer is a property of the digest).
    signers: HashMap<String, String>,
}

/// How many deploys [`Versions::deploys`] remembers.
pub const DEPLOYS_KEPT: usize = 20;

/// What is known of one version, for the admin API and `warren status`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub digest: String,
    /// Where it came from: `file PATH` at start or on a change, `upload` for
    /// `warren deploy`, `rollback`.
    pub source: String,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
    pub size: usize,
    /// The key that signed it (`ed25519:...`), when it is signed.
    pub signer: Option<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Versions {
    /// Versions starting with `module` live, keeping at most `keep` (at
    /// least 2: the live and the previous one) known versions.
    pub fn new(module: Module, source: String, keep: usize) -> Self {
        let module = Arc::new(module);
        let live = info(&module, source);
        let hex = module.digest().hex().to_string();
        let known = HashMap::from([(hex.clone(), module.clone())]);
        Self {
            live: ArcSwap::new(module),
            state: Mutex::new(History {
                deploys: VecDeque::from([live.clone()]),
                live,
                previous: None,
                known,
                order: VecDeque::from([hex]),
                keep: keep.max(2),
                signers: HashMap::new(),
            }),
            deploying: tokio::sync::Mutex::new(()),
        }
    }

    /// Records who signed the live version (the one `new` started with).
    pub fn signed_by(self, signer: Option<String>) -> Self {
        if let Some(s) = signer {
            let mut h = self.state.lock().expect("versions lock");
            let hex = h.live.digest.trim_start_matches("sha256:").to_string();
            h.live.signer = Some(s.clone());
            h.signers.insert(hex, s);
        }
        self
    }

    /// Like [`Versions::swap`], recording who signed `module`.
    pub fn swap_signed(
        &self,
        module: Arc<Module>,
        source: String,
        signer: Option<String>,
    ) -> Swapped {
        if let Some(s) = signer {
            let hex = module.digest().hex().to_string();
            self.state
                .lock()
                .expect("versions lock")
                .signers
                .insert(hex, s);
        }
        self.swap(module, source)
    }

    /// The live version: one atomic load, no lock.
    pub fn live(&self) -> Arc<Module> {
        self.live.load_full()
    }

    /// The version before the live one, for a rollback.
    pub fn previous(&self) -> Option<Arc<Module>> {
        self.state
            .lock()
            .expect("versions lock")
            .previous
            .as_ref()
            .map(|(m, _)| m.clone())
    }

    /// Holds off every other deploy or rollback of this handler while the
    /// guard lives: a file change and an upload may race.
    pub async fn deploy_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.deploying.lock().await
    }

    /// The live and the previous version.
    pub fn info(&self) -> (VersionInfo, Option<VersionInfo>) {
        let h = self.state.lock().expect("versions lock");
        (h.live.clone(), h.previous.as_ref().map(|(_, i)| i.clone()))
    }

    /// The versions made live in this process (at start, deployed, rolled
    /// back to), oldest first: the last [`DEPLOYS_KEPT`].
    pub fn deploys(&self) -> Vec<VersionInfo> {
        let h = self.state.lock().expect("versions lock");
        h.deploys.iter().cloned().collect()
    }

    /// A version this process has run before, by its hex digest.
    pub fn known(&self, digest: &str) -> Option<Arc<Module>> {
        self.state
            .lock()
            .expect("versions lock")
            .known
            .get(digest)
            .cloned()
    }

    /// The hex digests of the versions kept, least recently live first.
    pub fn known_digests(&self) -> Vec<String> {
        let h = self.state.lock().expect("versions lock");
        h.order.iter().cloned().collect()
    }

    /// Makes `module` live; the current one becomes the previous. Returns
    /// the old digest, how long the swap took, and the hex digests of the
    /// versions no longer kept.
    pub fn swap(&self, module: Arc<Module>, source: String) -> Swapped {
        let mut h = self.state.lock().expect("versions lock");
        let started = Instant::now();
        let old = self.live.swap(module.clone());
        let took = started.elapsed();
        let mut new_info = info(&module, source);
        let hex = module.digest().hex().to_string();
        new_info.signer = h.signers.get(&hex).cloned();
        if h.deploys.len() == DEPLOYS_KEPT {
            h.deploys.pop_front();
        }
        h.deploys.push_back(new_info.clone());
        let old_info = std::mem::replace(&mut h.live, new_info);
        h.order.retain(|d| *d != hex);
        h.order.push_back(hex.clone());
        h.known.insert(hex, module);
        let old_digest = old_info.digest.clone();
        h.previous = Some((old, old_info));
        // Every swap moves the new live version to the back, so the back
        // two are the live and the previous one (the one live just before)
        // and dropping from the front, with keep at least 2, keeps both.
        let mut dropped = Vec::new();
        while h.order.len() > h.keep {
            let d = h.order.pop_front().expect("longer than keep");
            h.known.remove(&d);
            h.signers.remove(&d);
            dropped.push(d);
        }
        Swapped {
            old_digest,
            took,
            dropped,
        }
    }
}

/// What [`Versions::swap`] did.
#[derive(Debug)]
pub struct Swapped {
    /// The digest that was live (`sha256:...`).
    pub old_digest: String,
    /// How long the pointer swap took.
    pub took: Duration,
    /// Hex digests of the versions dropped from memory.
    pub dropped: Vec<String>,
}

fn info(module: &Module, source: String) -> VersionInfo {
    VersionInfo {
        digest: module.digest().to_string(),
        source,
        loaded_at: now(),
        size: module.size(),
        signer: None,
    }
}
