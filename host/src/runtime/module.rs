//! A compiled module version: its digest, why a file can be refused, and
//! [`Runtime::compile`] (compile, link, type-check against the world).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use wasmtime::Cache;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::HandlerPre;
use super::state::State;
use super::{Runtime, WORLD};

/// A module's SHA-256, the name of a version everywhere (logs, metrics,
/// dead-letter headers, the admin API).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The hex digest without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, enough to tell versions apart in a log line.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Why a file could not become a [`Module`]. The text does not name the file;
/// callers add it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("does not implement {WORLD}: it does not export a function `handle`")]
    MissingExport,
    #[error("does not implement {WORLD}: {0}")]
    WrongExport(String),
    #[error("imports something warren does not provide: {0}")]
    Link(String),
}

/// A compiled, pre-linked, type-checked module version. Cheap to clone;
/// instantiating it is what costs, and that happens per message.
/// How many messages of one batch run at once when the module sends HTTP
/// requests ([`Module::waits_on_http`]); other modules run a batch's
/// messages one after another. Each run holds an instance of its own, so
/// the sandbox pool has this many slots per batch slot.
pub const RUNS_AT_ONCE: u32 = 4;

#[derive(Clone)]
pub struct Module {
    pub(super) inner: Arc<ModuleInner>,
}

pub(super) struct ModuleInner {
    digest: Digest,
    /// `digest.short()`, shared by every store's log tags.
    pub(super) short: Arc<str>,
    /// Whether `imports` names `wasi:http/outgoing-handler`.
    sends_http: bool,
    size: usize,
    compile_time: Duration,
    from_cache: bool,
    pub(super) pre: HandlerPre<State>,
    imports: Vec<String>,
    exports: Vec<String>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("digest", &self.inner.digest)
            .finish_non_exhaustive()
    }
}

impl Module {
    pub fn digest(&self) -> &Digest {
        &self.inner.digest
    }
    /// Size of the component file in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }
    /// Time spent compiling and linking it.
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }
    /// Whether the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }
    /// The world the module was built against, from the version of the
    /// `warren:handler` interfaces it imports: 0.2.0 if any is 0.2, else
    /// 0.1.0.
    pub fn world(&self) -> &'static str {
        let v2 = self
            .inner
            .imports
            .iter()
            .any(|i| i.starts_with("warren:handler/") && i.ends_with("@0.2.0"));
        if v2 {
            super::WORLDS[1]
        } else {
            super::WORLDS[0]
        }
    }

    /// The names of the component's imports (interfaces), as the file lists them.
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }
    /// Whether the module can send HTTP requests (it imports
    /// `wasi:http/outgoing-handler`): its runs spend most of their time
    /// waiting on a server, not computing, so a batch runs several of them
    /// at once ([`RUNS_AT_ONCE`]).
    pub fn waits_on_http(&self) -> bool {
        self.inner.sends_http
    }
    /// The names of the component's exports.
    pub fn exports(&self) -> &[String] {
        &self.inner.exports
    }
}

impl Runtime {
    /// Compiles, links and type-checks a component against the world.
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        // Bytes 4..8 are the version and layer: layer 0 is a core module,
        // layer 1 a component.
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::CoreModule);
        }
        let started = Instant::now();
        let (component, from_cache) = {
            let _one_at_a_time = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
            let hits = self.cache.as_ref().map_or(0, Cache::cache_hits);
            let component = Component::new(&self.engine, bytes)
                .map_err(|e| LoadError::Invalid(format!("{:#}", anyhow::Error::from(e))))?;
            let hit = self.cache.as_ref().is_some_and(|c| c.cache_hits() > hits);
            (component, hit)
        };
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        match ty.get_export(&self.engine, "handle").map(|e| e.ty) {
            Some(ComponentItem::ComponentFunc(_)) => {}
            _ => return Err(LoadError::MissingExport),
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{:#}", anyhow::Error::from(e))))?;
        let pre = HandlerPre::new(pre)
            .map_err(|e| LoadError::WrongExport(format!("{:#}", anyhow::Error::from(e))))?;
        let digest = Digest::of(bytes);
        let sends_http = imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler@"));
        Ok(Module {
            inner: Arc::new(ModuleInner {
                short: digest.short().into(),
                sends_http,
                digest,
                size: bytes.len(),
                compile_time: started.elapsed(),
                from_cache,
                pre,
                imports,
                exports,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeConfig;

    #[test]
    fn refuses_what_is_not_a_component() {
        let rt = Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            rt.compile(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(rt.compile(core), Err(LoadError::CoreModule)));
        let broken = b"\0asm\x0d\0\x01\0garbage";
        assert!(matches!(rt.compile(broken), Err(LoadError::Invalid(_))));
    }

    #[test]
    fn digest_is_sha256_hex() {
        let d = Digest::of(b"");
        assert_eq!(
            d.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.short(), "e3b0c44298fc");
        assert!(d.to_string().starts_with("sha256:e3b0"));
    }
}
