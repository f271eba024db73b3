//! `warren test`: run a handler module on messages from files, in the same
//! sandbox, with the same limits and host imports as `warren run`, and no
//! broker and no Redis.
//!
//! It owns the handler settings a test runs under ([`Settings`], read from
//! a `[[handler]]` table or a handler file, and turned into the runtime's
//! [`HandlerEnv`] by [`handler_env`], which `warren run` uses too, so the
//! two cannot drift), one message's run with its log lines ([`Trial`]),
//! and the case files of `--cases` (`case.rs`) with their report
//! (`report.rs`). It does not know AMQP or Redis; the runtime is used
//! through its public entry points only (`compile`, `run`, `run_warm`).

mod answer;
mod capture;
pub mod case;
mod report;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::amqp::limits::{MAX_DEPTH, too_deep_reason};
use crate::config::{self, Handler, Instances, MAX_MEMORY_MB};
use crate::metrics::Metrics;
use crate::runtime::{
    Completed, FieldValue, HandlerEnv, Headers, HttpGrant, HttpResponder, HttpSettings, KvGrant,
    KvLimits, KvStore, Limits, Message, Module, Nested, RunError, Runtime, RuntimeConfig,
    WarmInstances,
};
pub use case::{CaseFile, DEFAULT_ROUTING_KEY, headers_from_toml};
pub use report::Style;

/// What the sandbox is told about a handler, from its config entry: the
/// one place `warren run` and `warren test` get it from.
///
/// `kv` is the key-value store the handler's namespace lives in (the host
/// passes its dedup store's view); its limits come from `[handler.kv]`.
///
/// `answers`, when given, answers the handler's admitted HTTP requests
/// instead of the network (`warren test --cases`).
pub fn handler_env(
    h: &Handler,
    kv: Option<Arc<dyn KvStore>>,
    answers: Option<Arc<dyn HttpResponder>>,
    metrics: &Metrics,
) -> anyhow::Result<HandlerEnv> {
    Ok(HandlerEnv {
        name: h.name.clone(),
        config: h.config_values(),
        publish_allow: h.publish.allow.clone(),
        limits: Limits {
            timeout: h.timeout(),
            memory_bytes: (h.memory_mb as usize) << 20,
            ..Limits::default()
        },
        kv: kv.map(|store| KvGrant {
            store,
            limits: KvLimits {
                max_key_bytes: h.kv.max_key_bytes as usize,
                max_value_bytes: h.kv.max_value_bytes as usize,
                max_writes: h.kv.max_writes as usize,
                max_write_bytes: h.kv.max_write_bytes as usize,
            },
        }),
        http: h
            .http
            .as_ref()
            .map(|http| http_grant(h, http, answers))
            .transpose()?,
        metrics: Some(metrics.clone()),
    })
}

/// `[handler.http]` as the sandbox's grant; the CA file is read now, so a
/// bad one stops start-up naming the handler and the key.
fn http_grant(
    h: &Handler,
    http: &config::Http,
    answers: Option<Arc<dyn HttpResponder>>,
) -> anyhow::Result<Arc<HttpGrant>> {
    let at = |key: &str| format!("handler {:?}: key http.{key}", h.name);
    let allow = http
        .patterns()
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("allow")))?;
    let ca_pem = match &http.ca_file {
        Some(path) => Some(std::fs::read(path).with_context(|| {
            format!("{}: cannot read CA file {}", at("ca_file"), path.display())
        })?),
        None => None,
    };
    let settings = HttpSettings {
        allow,
        timeout: http.timeout(),
        max_response_bytes: http.max_response_bytes,
        max_requests: http.max_requests,
        idempotency_header: http.idempotency_header,
        ca_pem,
    };
    let grant = HttpGrant::new(settings).map_err(|e| {
        let file = http.ca_file.as_deref().unwrap_or(Path::new("-"));
        anyhow::anyhow!("{}: {}: {e}", at("ca_file"), file.display())
    })?;
    Ok(Arc::new(match answers {
        Some(a) => grant.answered_by(a),
        None => grant,
    }))
}

/// The handler settings a test runs under, and where compiled code is
/// cached.
#[derive(Debug)]
pub struct Settings {
    pub handler: Handler,
    pub cache_dir: Option<PathBuf>,
}

impl Settings {
    /// A handler's defaults, as a `[[handler]]` table with only the
    /// required keys would give them.
    pub fn defaults() -> Settings {
        Settings {
            handler: lone_handler(toml::Table::new()).expect("the defaults parse"),
            cache_dir: config::default_module_cache_dir(),
        }
    }

    /// Reads `path`: either a host config file (its `[[handler]]` named
    /// `name`, or its only one, and its `[runtime]` cache directory), or
    /// one handler's table on its own (the keys of a `[[handler]]` entry;
    /// `name`, `queue` and `module` may be left out). Only the handler's
    /// settings and the cache directory are read: a host config's
    /// broker, Redis and admin sections need not be reachable or even
    /// complete.
    pub fn load(path: &Path, name: Option<&str>) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let at = |e: anyhow::Error| anyhow::anyhow!("{}: {e:#}", path.display());
        let mut cache_dir = config::default_module_cache_dir();
        let handler = match table.remove("handler") {
            Some(toml::Value::Array(entries)) => {
                if let Some(toml::Value::Table(rt)) = table.get("runtime")
                    && let Some(dir) = rt.get("cache_dir").and_then(toml::Value::as_str)
                {
                    let dir = PathBuf::from(dir);
                    let base = path.parent().unwrap_or(Path::new("."));
                    cache_dir = (!dir.as_os_str().is_empty()).then(|| base.join(dir));
                }
                pick(entries, name).map_err(at)?
            }
            Some(_) => {
                return Err(at(anyhow::anyhow!(
                    "key handler: must be [[handler]] tables"
                )));
            }
            None => {
                if name.is_some() {
                    bail!(
                        "{}: --handler names a handler, but the file has no [[handler]] tables: it is one handler's settings",
                        path.display()
                    );
                }
                lone_handler(table).map_err(at)?
            }
        };
        check(&handler).map_err(at)?;
        Ok(Settings { handler, cache_dir })
    }
}

/// The `[[handler]]` entry called `name`, or the only one.
fn pick(entries: Vec<toml::Value>, name: Option<&str>) -> anyhow::Result<Handler> {
    let mut handlers = Vec::new();
    for e in entries {
        let h: Handler = e
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("[[handler]]: {}", e.message()))?;
        handlers.push(h);
    }
    let names = || {
        handlers
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => match handlers.iter().position(|h| h.name == n) {
            Some(i) => Ok(handlers.swap_remove(i)),
            None => bail!("no handler named {n:?}; the file has {}", names()),
        },
        None if handlers.len() == 1 => Ok(handlers.remove(0)),
        None => bail!(
            "{} handlers: say which with --handler ({})",
            handlers.len(),
            names()
        ),
    }
}

/// One handler's table on its own, with the keys a test does not need
/// filled in.
fn lone_handler(mut table: toml::Table) -> anyhow::Result<Handler> {
    for (key, value) in [("name", "test"), ("queue", "test"), ("module", "")] {
        table
            .entry(key)
            .or_insert_with(|| toml::Value::String(value.into()));
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))
}

/// The checks the host config makes of the keys a test uses.
fn check(h: &Handler) -> anyhow::Result<()> {
    if h.timeout_ms == 0 {
        bail!("key timeout_ms: must be at least 1");
    }
    if h.memory_mb == 0 || h.memory_mb > MAX_MEMORY_MB {
        bail!(
            "key memory_mb: {} is not within 1..={MAX_MEMORY_MB}",
            h.memory_mb
        );
    }
    if h.instances == Instances::Reuse && h.reuse_max == 0 {
        bail!("key reuse_max: must be at least 1");
    }
    Ok(())
}

/// A loaded module ready to run messages as its handler would.
pub struct Trial {
    runtime: Runtime,
    module: Module,
    env: Arc<HandlerEnv>,
    /// Some in `instances = "reuse"` mode: the warm instances, and how
    /// many messages one may serve.
    warm: Option<(WarmInstances, u32)>,
    capture: capture::Capture,
    tokio: tokio::runtime::Runtime,
    /// The handler's key-value namespace: each case's `[kv]`, empty for
    /// `--body`.
    store: Arc<store::CaseStore>,
    /// Some under `--cases`: each case's `[[http]]` answers the handler's
    /// requests. None for `--body`: requests go out as under `warren run`.
    answers: Option<Arc<answer::CaseHttp>>,
    /// The handler's settings, for what `warren run` checks before a guest
    /// runs.
    handler: Handler,
}

impl std::fmt::Debug for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trial")
            .field("module", self.module.digest())
            .field("handler", &self.env.name)
            .finish_non_exhaustive()
    }
}

/// What one message's run came to.
#[derive(Debug)]
pub struct Observed {
    pub result: Result<Completed, Failure>,
    /// What the run's key-value writes commit to (none unless acked).
    pub kv: store::Written,
    /// The guest's log lines and output, `level: text` and `stdout: text`.
    pub logs: Vec<String>,
    /// Instantiation (none when a warm instance served) and `handle`.
    pub elapsed: Duration,
}

/// The first header of `headers` that nests deeper than `warren run`
/// hands to a guest ([`MAX_DEPTH`], counted as the host counts a
/// delivery's: 0 for a scalar, 1 for an array of scalars, ...), with its
/// depth. Each arena slot is visited at most once, so an arena that is not
/// a tree costs no more than its size.
fn too_deep(headers: &Headers) -> Option<(&str, usize)> {
    headers.entries.iter().find_map(|h| {
        let mut deepest = 0;
        let mut visits = headers.nested.len();
        let mut stack = vec![(&h.value, 0usize)];
        while let Some((v, d)) = stack.pop() {
            deepest = deepest.max(d);
            let (FieldValue::Array(i) | FieldValue::Table(i)) = v else {
                continue;
            };
            if visits == 0 {
                break;
            }
            visits -= 1;
            match headers.nested.get(*i as usize) {
                Some(Nested::Array(values)) => stack.extend(values.iter().map(|v| (v, d + 1))),
                Some(Nested::Table(entries)) => {
                    stack.extend(entries.iter().map(|e| (&e.value, d + 1)))
                }
                None => {}
            }
        }
        (deepest > MAX_DEPTH).then_some((h.name.as_str(), deepest))
    })
}

/// Why a message came to no outcome: its guest failed, or `warren run`
/// would not have run a guest for it at all.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Run(RunError),
    /// Dead-lettered at once by `warren run`, before any dedup claim or
    /// guest: `kind` is the `x-warren-error-kind` it would carry.
    #[error("{reason}")]
    BeforeGuest { kind: &'static str, reason: String },
}

impl Failure {
    /// The error kind `warren run` files it under.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Run(e) => e.kind(),
            Failure::BeforeGuest { kind, .. } => kind,
        }
    }
}

impl Observed {
    pub fn outcomes(&self) -> case::Outcomes<'_> {
        case::Outcomes {
            result: self.result.as_ref().map_err(|e| (e.kind(), e.to_string())),
            logs: &self.logs,
            kv: &self.kv,
        }
    }
}

impl Trial {
    /// Compiles the module at `path` for `settings`' handler, as `warren
    /// run` would at start-up. `progress` is told when compiling starts.
    /// With `answered`, HTTP requests get the current case's answers.
    pub fn load(
        path: &Path,
        settings: &Settings,
        answered: bool,
        progress: impl Fn(&str),
    ) -> anyhow::Result<Trial> {
        let h = &settings.handler;
        let runtime = Runtime::new(RuntimeConfig {
            max_instances: 1,
            max_memory_bytes: (h.memory_mb as usize) << 20,
            cache_dir: settings.cache_dir.clone(),
        })?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read module {}", path.display()))?;
        progress(&format!("compiling {}", path.display()));
        let module = runtime
            .compile(&bytes)
            .with_context(|| format!("module {} is refused", path.display()))?;
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let store = Arc::new(store::CaseStore::default());
        let answers = answered.then(|| Arc::new(answer::CaseHttp::default()));
        let env = handler_env(
            h,
            Some(store.clone() as Arc<dyn KvStore>),
            answers.clone().map(|a| a as Arc<dyn HttpResponder>),
            &Metrics::new(),
        )?;
        Ok(Trial {
            runtime,
            module,
            env: Arc::new(env),
            warm: (h.instances == Instances::Reuse)
                .then(|| (WarmInstances::default(), h.reuse_max)),
            capture: capture::Capture::default(),
            tokio,
            store,
            answers,
            handler: h.clone(),
        })
    }

    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Runs one message, on this thread, under the handler's deadline and
    /// memory cap.
    pub fn run(&self, msg: &Message) -> Observed {
        // What `warren run` dead-letters in its first step, before any
        // claim or guest.
        let refused = match self.handler.body_refusal(msg.body.len() as u64) {
            Some(reason) => Some(("body-too-large", reason)),
            None => too_deep(&msg.headers)
                .map(|(name, depth)| ("invalid-headers", too_deep_reason(name, depth))),
        };
        if let Some((kind, reason)) = refused {
            return Observed {
                result: Err(Failure::BeforeGuest { kind, reason }),
                kv: Ok(Default::default()),
                logs: Vec::new(),
                elapsed: Duration::ZERO,
            };
        }
        let permit = self.runtime.try_acquire().expect("one run at a time");
        let started = Instant::now();
        let result = self.capture.during(|| {
            self.tokio.block_on(async {
                match &self.warm {
                    Some((warm, max_uses)) => {
                        self.runtime
                            .run_warm(&self.module, &self.env, msg, &permit, warm, *max_uses)
                            .await
                    }
                    None => {
                        self.runtime
                            .run(&self.module, &self.env, msg, &permit)
                            .await
                    }
                }
            })
        });
        let elapsed = started.elapsed();
        let result = result.map_err(Failure::Run);
        let kv = match &result {
            Ok(done) => self.store.written(done),
            Err(_) => Ok(Default::default()),
        };
        Observed {
            result,
            kv,
            logs: self.capture.take(),
            elapsed,
        }
    }
}

/// `warren test MODULE --body ...`: one message, every detail printed.
/// Returns whether the handler came to an outcome (ack, retry or reject)
/// rather than failing (a timeout, the memory cap, a trap).
pub fn run_one(
    module: &Path,
    settings: &Settings,
    msg: &Message,
    style: Style,
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let trial = Trial::load(module, settings, false, |what| style.progress(what))?;
    let observed = trial.run(msg);
    report::one(&trial, &observed, style, out)?;
    Ok(observed.result.is_ok())
}

/// The counts `--cases` ends with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub updated: usize,
}

/// `warren test MODULE --cases DIR [--update]`: every `*.toml` case in
/// `dir`, in name order, a line each, then a summary. With `update`, each
/// case whose expectation is missing or not met gets what was observed
/// written as its new one.
pub fn run_cases(
    module: &Path,
    settings: &Settings,
    dir: &Path,
    update: bool,
    style: Style,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Summary> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read case directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no case files (*.toml) in {}", dir.display());
    }
    let trial = Trial::load(module, settings, true, |what| style.progress(what))?;
    let mut summary = Summary::default();
    let started = Instant::now();
    for (i, path) in files.iter().enumerate() {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        style.progress(&format!("[{}/{}] {name}", i + 1, files.len()));
        let verdict = run_case(&trial, path, &name, update);
        match &verdict {
            report::Verdict::Pass(_) => summary.passed += 1,
            report::Verdict::Updated(_) => summary.updated += 1,
            _ => summary.failed += 1,
        }
        report::case_line(&name, &verdict, style, out)?;
    }
    report::summary(&summary, started.elapsed(), style, out)?;
    Ok(summary)
}

fn run_case(trial: &Trial, path: &Path, name: &str, update: bool) -> report::Verdict {
    use report::Verdict;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Verdict::Broken(format!("cannot read {}: {e}", path.display())),
    };
    let case = match CaseFile::parse(&text, path) {
        Ok(c) => c,
        Err(e) => return Verdict::Broken(format!("{e:#}")),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let msg = match case.input.message(name, dir) {
        Ok(m) => m,
        Err(e) => return Verdict::Broken(format!("{}: {e:#}", path.display())),
    };
    let seeded = store::seed(&case.kv).map_err(|e| format!("{}: {e:#}", path.display()));
    let seeded = match seeded {
        Ok(s) => s,
        Err(e) => return Verdict::Broken(e),
    };
    trial.store.reset(seeded);
    if let Some(answers) = &trial.answers
        && let Err(e) = answers.reset(&case.http)
    {
        return Verdict::Broken(format!("{}: {e:#}", path.display()));
    }
    let observed = trial.run(&msg);
    // A request the case did not list, or a listed one not made, is the
    // case's input to fix: `--update` cannot write it, so it fails even
    // then.
    let http = trial
        .answers
        .as_ref()
        .map(|a| a.finish())
        .unwrap_or_default();
    let outcomes = observed.outcomes();
    let mut mismatches = match &case.expect {
        Some(want) => case::compare(want, &outcomes),
        None => Vec::new(),
    };
    if update && http.is_empty() && (case.expect.is_none() || !mismatches.is_empty()) {
        let written = case::rewrite(&text, &case::observed(&outcomes));
        return match std::fs::write(path, written) {
            Ok(()) => Verdict::Updated(observed.elapsed),
            Err(e) => Verdict::Broken(format!("cannot write {}: {e}", path.display())),
        };
    }
    mismatches.extend(http);
    match &case.expect {
        None if mismatches.is_empty() => Verdict::NoExpectation(observed.elapsed),
        Some(_) if mismatches.is_empty() => Verdict::Pass(observed.elapsed),
        _ => Verdict::Fail {
            elapsed: observed.elapsed,
            description: case.description.clone(),
            mismatches,
            logs: observed.logs,
        },
    }
}
