//! Module versions per handler, and deploying a new one.
//!
//! A handler has one live version, the one before it (for rollback), and
//! every version it has run in this process, by digest, so a redeploy of a
//! known digest is a swap without compiling. A deploy compiles off the
//! message path, type-checks against the world, instantiates once (and runs
//! the handler's smoke message, if it has one), and only then swaps the
//! live handle; a version that fails any step never replaces a working one.
//! Messages already running keep the version they loaded; nothing on the
//! AMQP side is touched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::pipeline::{HandlerCtx, Shared};
use crate::runtime::{Message, Module};

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
}

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
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub handler: String,
    pub old_digest: String,
    pub new_digest: String,
    /// Compile time; 0 when the version was known to this process.
    pub compile_ms: f64,
    /// Where the compiled code came from: `cranelift`, `disk-cache` or
    /// `memory` (a version this process ran before).
    pub compiled_by: &'static str,
    /// Time to swap the live handle.
    pub swap_us: f64,
    /// False when the version was already live: nothing changed.
    pub swapped: bool,
}

/// Why a deploy was refused; the old version keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("handler {handler:?}: module refused: {reason}")]
    Refused { handler: String, reason: String },
    #[error("handler {0:?}: no previous version to roll back to")]
    NoPrevious(String),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Versions {
    pub fn new(module: Module, source: String) -> Self {
        let module = Arc::new(module);
        let live = info(&module, source);
        let known = HashMap::from([(module.digest().hex().to_string(), module.clone())]);
        Self {
            live: ArcSwap::new(module),
            state: Mutex::new(History {
                live,
                previous: None,
                known,
            }),
            deploying: tokio::sync::Mutex::new(()),
        }
    }

    /// The live version: one atomic load, no lock.
    pub fn live(&self) -> Arc<Module> {
        self.live.load_full()
    }

    /// The live and the previous version.
    pub fn info(&self) -> (VersionInfo, Option<VersionInfo>) {
        let h = self.state.lock().expect("versions lock");
        (h.live.clone(), h.previous.as_ref().map(|(_, i)| i.clone()))
    }

    fn known(&self, digest: &str) -> Option<Arc<Module>> {
        self.state
            .lock()
            .expect("versions lock")
            .known
            .get(digest)
            .cloned()
    }

    /// Makes `module` live; the current one becomes the previous. Returns
    /// the old digest and how long the swap took.
    fn swap(&self, module: Arc<Module>, source: String) -> (String, Duration) {
        let mut h = self.state.lock().expect("versions lock");
        let started = Instant::now();
        let old = self.live.swap(module.clone());
        let took = started.elapsed();
        let old_info = std::mem::replace(&mut h.live, info(&module, source));
        h.known.insert(module.digest().hex().to_string(), module);
        let old_digest = old_info.digest.clone();
        h.previous = Some((old, old_info));
        (old_digest, took)
    }
}

fn info(module: &Module, source: String) -> VersionInfo {
    VersionInfo {
        digest: module.digest().to_string(),
        source,
        loaded_at: now(),
        size: module.size(),
    }
}

/// The smoke message a handler's `smoke_body` describes.
pub fn smoke_message(body: &str) -> Message {
    Message::synthetic(
        body.as_bytes().to_vec(),
        "warren-smoke-test",
        "warren.smoke",
    )
}

/// Validates `bytes` as `h`'s next version and makes it live.
pub async fn deploy(
    shared: &Shared,
    h: &HandlerCtx,
    bytes: Vec<u8>,
    source: String,
) -> Result<DeployReport, DeployError> {
    let _one = h.versions.deploying.lock().await;
    let name = h.cfg.name.clone();
    let refused = |reason: String| DeployError::Refused {
        handler: name.clone(),
        reason,
    };
    let digest = crate::runtime::Digest::of(&bytes);
    let live = h.versions.live();
    if live.digest() == &digest {
        return Ok(DeployReport {
            handler: name.clone(),
            old_digest: digest.to_string(),
            new_digest: digest.to_string(),
            compile_ms: 0.0,
            compiled_by: "memory",
            swap_us: 0.0,
            swapped: false,
        });
    }
    let (module, compiled_by) = match h.versions.known(digest.hex()) {
        Some(m) => (m, "memory"),
        None => {
            let rt = shared.runtime.clone();
            let m = tokio::task::spawn_blocking(move || rt.compile(&bytes))
                .await
                .map_err(|e| refused(format!("compile task failed: {e}")))?
                .map_err(|e| refused(e.to_string()))?;
            let by = if m.from_cache() {
                "disk-cache"
            } else {
                "cranelift"
            };
            (Arc::new(m), by)
        }
    };
    // Smoke test: instantiate once (and run the smoke message) on a permit
    // like any message, so it never takes a slot the pool does not have.
    let permit = shared.runtime.acquire().await;
    let (rt, env, m) = (shared.runtime.clone(), h.env.clone(), module.clone());
    let smoke = h.cfg.smoke_body.as_deref().map(smoke_message);
    tokio::task::spawn_blocking(move || rt.smoke(&m, &env, smoke.as_ref(), &permit))
        .await
        .map_err(|e| refused(format!("smoke test task failed: {e}")))?
        .map_err(|e| refused(format!("smoke test failed: {e}")))?;

    let compile_ms = if compiled_by == "memory" {
        0.0
    } else {
        module.compile_time().as_secs_f64() * 1e3
    };
    let new_digest = module.digest().to_string();
    let (old_digest, took) = h.versions.swap(module, source.clone());
    shared.metrics.set_module(
        &name,
        Some(old_digest.trim_start_matches("sha256:")),
        new_digest.trim_start_matches("sha256:"),
    );
    shared
        .metrics
        .deploys
        .get_or_create(&crate::metrics::HandlerLabel {
            handler: name.clone(),
        })
        .inc();
    tracing::info!(handler = %name, old = %old_digest, new = %new_digest, source, compiled_by, compile_ms, "module deployed");
    Ok(DeployReport {
        handler: name,
        old_digest,
        new_digest,
        compile_ms,
        compiled_by,
        swap_us: took.as_secs_f64() * 1e6,
        swapped: true,
    })
}

/// Makes the previous version live again (and the live one the previous).
pub async fn rollback(shared: &Shared, h: &HandlerCtx) -> Result<DeployReport, DeployError> {
    let _one = h.versions.deploying.lock().await;
    let previous = h
        .versions
        .state
        .lock()
        .expect("versions lock")
        .previous
        .as_ref()
        .map(|(m, _)| m.clone());
    let Some(module) = previous else {
        return Err(DeployError::NoPrevious(h.cfg.name.clone()));
    };
    let new_digest = module.digest().to_string();
    let (old_digest, took) = h.versions.swap(module, "rollback".into());
    shared.metrics.set_module(
        &h.cfg.name,
        Some(old_digest.trim_start_matches("sha256:")),
        new_digest.trim_start_matches("sha256:"),
    );
    tracing::info!(handler = %h.cfg.name, old = %old_digest, new = %new_digest, "module rolled back");
    Ok(DeployReport {
        handler: h.cfg.name.clone(),
        old_digest,
        new_digest,
        compile_ms: 0.0,
        compiled_by: "memory",
        swap_us: took.as_secs_f64() * 1e6,
        swapped: true,
    })
}
