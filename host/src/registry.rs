//! Deploying a new module version of a handler, and rolling back.
//!
//! Every deploy checks the module's signature against `[deploy]` first
//! ([`crate::signing::Trust`]): an unsigned, badly signed or untrusted
//! module is refused before it is compiled. Start-up makes the same check.
//!
//! The versions themselves are kept by [`crate::versions::Versions`]: a
//! redeploy of a digest this process knows is a swap without compiling. A
//! deploy compiles off the
//! message path, type-checks against the world, instantiates once (and runs
//! the handler's smoke message, if it has one), and only then swaps the
//! live handle; a version that fails any step never replaces a working one.
//! Messages already running keep the version they loaded; nothing on the
//! AMQP side is touched.

use std::sync::Arc;

use serde::Serialize;

use crate::context::{HandlerCtx, Shared};
use crate::runtime::Message;
use crate::versions::Swapped;

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
    pub compiled_by: CompiledBy,
    /// Time to swap the live handle.
    pub swap_us: f64,
    /// False when the version was already live: nothing changed.
    pub swapped: bool,
    /// The key that signed the new version (`ed25519:...`), when signed.
    pub signer: Option<String>,
}

/// Where a version's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompiledBy {
    /// Compiled now.
    Cranelift,
    /// Loaded from the on-disk cache of compiled modules.
    DiskCache,
    /// A version this process had already compiled.
    Memory,
}

impl CompiledBy {
    /// How a freshly loaded `module` was compiled.
    pub fn of(module: &crate::runtime::Module) -> Self {
        if module.from_cache() {
            CompiledBy::DiskCache
        } else {
            CompiledBy::Cranelift
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CompiledBy::Cranelift => "cranelift",
            CompiledBy::DiskCache => "disk-cache",
            CompiledBy::Memory => "memory",
        }
    }
}

/// Why a deploy was refused; the old version keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("handler {handler:?}: module refused: {reason}")]
    Refused { handler: String, reason: String },
    #[error("handler {0:?}: no previous version to roll back to")]
    NoPrevious(String),
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
    let _one = h.versions.deploy_lock().await;
    let name = h.cfg.name.clone();
    let refused = |reason: String| DeployError::Refused {
        handler: name.clone(),
        reason,
    };
    // The signature first: an untrusted module is not even compiled.
    let signer = shared
        .trust
        .check(&bytes)
        .map_err(|e| refused(e.to_string()))?
        .map(|k| k.to_string());
    let digest = crate::runtime::Digest::of(&bytes);
    let live = h.versions.live();
    if live.digest() == &digest {
        return Ok(DeployReport {
            handler: name.clone(),
            old_digest: digest.to_string(),
            new_digest: digest.to_string(),
            compile_ms: 0.0,
            compiled_by: CompiledBy::Memory,
            swap_us: 0.0,
            swapped: false,
            signer,
        });
    }
    // A known version, or the candidate of a canary being promoted.
    let known = h.versions.known(digest.hex()).or_else(|| {
        h.canary
            .load_full()
            .map(|c| c.module.clone())
            .filter(|m| m.digest() == &digest)
    });
    let (module, compiled_by) = match known {
        Some(m) => (m, CompiledBy::Memory),
        None => {
            let rt = shared.runtime.clone();
            let m = tokio::task::spawn_blocking(move || rt.compile(&bytes))
                .await
                .map_err(|e| refused(format!("compile task failed: {e}")))?
                .map_err(|e| refused(e.to_string()))?;
            let by = CompiledBy::of(&m);
            (Arc::new(m), by)
        }
    };
    // Smoke test: instantiate once (and run the smoke message) on a permit
    // like any message, so it never takes a slot the pool does not have.
    // The handler's deadline bounds it, so a smoke body that hangs is
    // refused as a timeout and the deploy lock is released.
    let permit = shared.runtime.acquire().await;
    let smoke = h.cfg.smoke_body.as_deref().map(smoke_message);
    shared
        .runtime
        .smoke(&module, &h.env, smoke.as_ref(), &permit)
        .await
        .map_err(|e| refused(format!("smoke test failed: {e}")))?;
    drop(permit);

    let compile_ms = if compiled_by == CompiledBy::Memory {
        0.0
    } else {
        module.compile_time().as_secs_f64() * 1e3
    };
    let new_digest = module.digest().to_string();
    let swapped = h
        .versions
        .swap_signed(module, source.clone(), signer.clone());
    let (old_digest, took) = (swapped.old_digest.clone(), swapped.took);
    record(shared, &name, &swapped, &new_digest);
    shared
        .metrics
        .deploys
        .get_or_create(&crate::metrics::HandlerLabel {
            handler: name.clone(),
        })
        .inc();
    tracing::info!(handler = %name, old = %old_digest, new = %new_digest, source, compiled_by = compiled_by.as_str(), compile_ms, signer = signer.as_deref().unwrap_or("none"), "module deployed");
    Ok(DeployReport {
        handler: name,
        old_digest,
        new_digest,
        compile_ms,
        compiled_by,
        swap_us: took.as_secs_f64() * 1e6,
        swapped: true,
        signer,
    })
}

/// Makes the previous version live again (and the live one the previous).
pub async fn rollback(shared: &Shared, h: &HandlerCtx) -> Result<DeployReport, DeployError> {
    let _one = h.versions.deploy_lock().await;
    let Some(module) = h.versions.previous() else {
        return Err(DeployError::NoPrevious(h.cfg.name.clone()));
    };
    let new_digest = module.digest().to_string();
    let swapped = h.versions.swap(module, "rollback".into());
    let (old_digest, took) = (swapped.old_digest.clone(), swapped.took);
    record(shared, &h.cfg.name, &swapped, &new_digest);
    tracing::info!(handler = %h.cfg.name, old = %old_digest, new = %new_digest, "module rolled back");
    Ok(DeployReport {
        handler: h.cfg.name.clone(),
        old_digest,
        new_digest,
        compile_ms: 0.0,
        compiled_by: CompiledBy::Memory,
        swap_us: took.as_secs_f64() * 1e6,
        swapped: true,
        signer: h.versions.info().0.signer,
    })
}

/// Points the module metric at the new live version and drops the series
/// of versions no longer kept, so the metric set is as bounded as the
/// versions are.
fn record(shared: &Shared, handler: &str, swapped: &Swapped, new_digest: &str) {
    let m = &shared.metrics;
    m.set_module(
        handler,
        Some(swapped.old_digest.trim_start_matches("sha256:")),
        new_digest.trim_start_matches("sha256:"),
    );
    for d in &swapped.dropped {
        m.forget_module(handler, d);
    }
    if !swapped.dropped.is_empty() {
        tracing::debug!(handler, dropped = ?swapped.dropped, "module versions dropped from memory");
    }
}

/// Starts comparing `bytes`, a candidate version, with `h`'s live version
/// on one message in `every` (`warren shadow`), in place of any candidate
/// before it. The candidate is compiled and instantiated once like a
/// deploy's, and refused the same way; it never goes live.
pub async fn start_shadow(
    shared: &Shared,
    h: &HandlerCtx,
    bytes: Vec<u8>,
    every: u64,
) -> Result<crate::shadow::Report, DeployError> {
    let refused = |reason: String| DeployError::Refused {
        handler: h.cfg.name.clone(),
        reason,
    };
    // The candidate runs guest code on this host like any version: the
    // same signature policy as a deploy, before it is compiled.
    shared
        .trust
        .check(&bytes)
        .map_err(|e| refused(e.to_string()))?;
    let digest = crate::runtime::Digest::of(&bytes);
    let module = match h.versions.known(digest.hex()) {
        Some(m) => m,
        None => {
            let rt = shared.runtime.clone();
            let m = tokio::task::spawn_blocking(move || rt.compile(&bytes))
                .await
                .map_err(|e| refused(format!("compile task failed: {e}")))?
                .map_err(|e| refused(e.to_string()))?;
            Arc::new(m)
        }
    };
    let permit = shared.runtime.acquire().await;
    shared
        .runtime
        .smoke(&module, &h.env, None, &permit)
        .await
        .map_err(|e| refused(format!("the candidate does not instantiate: {e}")))?;
    drop(permit);
    let shadow = Arc::new(crate::shadow::Shadow::new(module, every));
    let report = shadow.report();
    h.shadow.store(Some(shadow));
    tracing::info!(handler = %h.cfg.name, candidate = %report.candidate, every, "shadow run started");
    Ok(report)
}

/// What starting a canary did.
#[derive(Debug, Clone)]
pub struct CanaryStarted {
    pub live_digest: String,
    pub candidate: String,
    pub compile_ms: f64,
    pub signer: Option<String>,
}

/// Starts a canary of `bytes` on `h` (`warren deploy --fleet --canary`), in
/// place of any canary before it: the candidate is checked exactly as a
/// deploy checks a module (signature, compile, type check, smoke test) and
/// then runs on `percent` of the first attempts until `until_ms` or the
/// fleet's decision, whichever comes first. The live version is not
/// touched.
pub async fn start_canary(
    shared: &Shared,
    h: &HandlerCtx,
    bytes: Vec<u8>,
    id: String,
    percent: u8,
    until_ms: u64,
    reply_to: Option<String>,
) -> Result<CanaryStarted, DeployError> {
    let _one = h.versions.deploy_lock().await;
    let refused = |reason: String| DeployError::Refused {
        handler: h.cfg.name.clone(),
        reason,
    };
    let signer = shared
        .trust
        .check(&bytes)
        .map_err(|e| refused(e.to_string()))?
        .map(|k| k.to_string());
    let digest = crate::runtime::Digest::of(&bytes);
    let live = h.versions.live();
    if live.digest() == &digest {
        return Err(refused(format!(
            "the candidate {digest} is the live version already: nothing to compare"
        )));
    }
    let (module, compile_ms) = match h.versions.known(digest.hex()) {
        Some(m) => (m, 0.0),
        None => {
            let rt = shared.runtime.clone();
            let m = tokio::task::spawn_blocking(move || rt.compile(&bytes))
                .await
                .map_err(|e| refused(format!("compile task failed: {e}")))?
                .map_err(|e| refused(e.to_string()))?;
            let ms = m.compile_time().as_secs_f64() * 1e3;
            (Arc::new(m), ms)
        }
    };
    let permit = shared.runtime.acquire().await;
    let smoke = h.cfg.smoke_body.as_deref().map(smoke_message);
    shared
        .runtime
        .smoke(&module, &h.env, smoke.as_ref(), &permit)
        .await
        .map_err(|e| refused(format!("smoke test failed: {e}")))?;
    drop(permit);
    let canary = crate::canary::Canary::new(module, id.clone(), percent, until_ms, reply_to);
    let percent = canary.percent;
    h.canary.store(Some(Arc::new(canary)));
    h.metrics.canary_percent.set(i64::from(percent));
    tracing::info!(handler = %h.cfg.name, canary = %id, live = %live.digest(), candidate = %digest, percent, until_ms, signer = signer.as_deref().unwrap_or("none"), "canary started");
    Ok(CanaryStarted {
        live_digest: live.digest().to_string(),
        candidate: digest.to_string(),
        compile_ms,
        signer,
    })
}

/// Ends the canary in progress on `h`, if there is one: the candidate
/// runs no further message (batches that loaded it finish on it). Returns
/// it, with its last counts.
pub fn end_canary(h: &HandlerCtx, why: &str) -> Option<Arc<crate::canary::Canary>> {
    let ended = h.canary.swap(None)?;
    h.metrics.canary_percent.set(0);
    let c = ended.counts();
    tracing::info!(handler = %h.cfg.name, canary = %ended.id, candidate = %ended.module.digest(), why, canary_runs = c.canary, canary_failed = c.canary_failed, live_runs = c.live, live_failed = c.live_failed, "canary ended");
    Some(ended)
}
