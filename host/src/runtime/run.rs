//! One message's run: a fresh store and instance (or a warm one in reuse
//! mode) under the deadline and memory cap, as a future on the caller's
//! task, and what it came to: a [`Completed`] outcome or a typed
//! [`RunError`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{Message, Outbound, Outcome};
use super::kv::KvWrite;
use super::state::State;
use super::warm::{Warm, WarmInstances};
use super::{HandlerEnv, Limits, Module, Permit, Runtime};

/// What a handler returned, with what it asked to publish.
#[derive(Debug)]
pub struct Completed {
    pub outcome: Outcome,
    /// The messages buffered by `publish`, in call order; to be sent only on
    /// ack.
    pub publishes: Vec<Outbound>,
    /// `log` calls dropped because the message went over its log cap.
    pub logs_dropped: u64,
    /// Bytes of stdout and stderr dropped past the cap.
    pub stdio_dropped: u64,
    /// The key-value writes, in call order; to be committed only on ack,
    /// with the done-marker.
    pub kv_writes: Vec<KvWrite>,
}

/// A run that ended without an outcome: the host's failure, never the guest's
/// own reject. Callers turn these into a retry or a dead-letter by policy.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("handler exceeded its time limit of {} ms", .limit.as_millis())]
    Timeout { limit: Duration },
    #[error("handler exceeded its memory cap of {} MiB", .cap_bytes >> 20)]
    MemoryCap { cap_bytes: usize },
    #[error("handler overflowed its stack")]
    StackOverflow,
    #[error("handler trapped: {message}")]
    Trap { message: String },
    #[error("handler could not be instantiated: {message}")]
    Instantiate { message: String },
}

impl RunError {
    /// A short stable name for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Timeout { .. } => "timeout",
            RunError::MemoryCap { .. } => "memory",
            RunError::StackOverflow => "stack-overflow",
            RunError::Trap { .. } => "trap",
            RunError::Instantiate { .. } => "instantiate",
        }
    }
}
impl Runtime {
    /// Instantiates `module` once as `env`'s handler would be, and, given a
    /// smoke message, runs it: the check before a version goes live.
    /// Publishes are discarded; the outcome does not matter, only that the
    /// run ends without a trap, within the handler's deadline.
    pub async fn smoke(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: Option<&Message>,
        permit: &Permit,
    ) -> Result<(), RunError> {
        if let Some(msg) = msg {
            return self.run(module, env, msg, permit).await.map(|_| ());
        }
        let mut store = self.new_store(module, env, "smoke".into());
        let deadline = arm(&mut store, env.limits.timeout);
        let ran = tokio::time::timeout_at(deadline, module.inner.pre.instantiate_async(&mut store))
            .await
            .unwrap_or_else(|_| Err(Trap::Interrupt.into()));
        ran.map(|_| ()).map_err(|e| {
            let hit = store.data().limiter.hit;
            classify(e, true, hit, &env.limits, &[])
        })
    }

    /// Runs one message in a fresh instance, as a future on the caller's
    /// task: a guest that computes yields the thread every epoch tick, and
    /// one that waits (a WASI poll) is a pending future, so the deadline
    /// ends either.
    pub async fn run(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: &Message,
        _permit: &Permit,
    ) -> Result<Completed, RunError> {
        self.run_in(module, env, msg, None).await
    }

    /// Runs one message in a warm instance of `module` from `warm` if there
    /// is one, else in a fresh one, and keeps the instance for the next
    /// message unless it trapped, ran out of time or has served `max_uses`
    /// messages. Guest state (globals, the heap) carries over between those
    /// messages: the handler's `instances = "reuse"` setting opts into that
    /// for speed.
    pub async fn run_warm(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: &Message,
        _permit: &Permit,
        warm: &WarmInstances,
        max_uses: u32,
    ) -> Result<Completed, RunError> {
        self.run_in(module, env, msg, Some((warm, max_uses))).await
    }

    /// A fresh store for one instance of `module`: limited, and with the
    /// epoch callback that yields every tick and traps past the deadline.
    fn new_store(&self, module: &Module, env: &Arc<HandlerEnv>, id: Arc<str>) -> Store<State> {
        let state = State::new(env.clone(), env.limits, id, module.inner.short.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            // tokio's own yield puts the task at the back of the queue, so
            // a guest that computes shares its worker with everything else.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }

    async fn run_in(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: &Message,
        reuse: Option<(&WarmInstances, u32)>,
    ) -> Result<Completed, RunError> {
        let limits = env.limits;
        let message_id: Arc<str> = msg.message_id.as_deref().unwrap_or("-").into();
        let taken = reuse.and_then(|(w, _)| w.take(module.digest()));
        let (mut store, warm_handler, served) = match taken {
            Some(w) => {
                let mut store = w.store;
                store.data_mut().begin(message_id.clone());
                (store, Some(w.handler), w.served)
            }
            None => (self.new_store(module, env, message_id.clone()), None, 0),
        };
        // Idempotency keys derive from the dedup key (or the message id
        // when dedup is off), so every run of a message sends the same ones.
        let seed = msg.dedup_key.clone().or_else(|| msg.message_id.clone());
        store.data_mut().http.begin(message_id, seed);
        let deadline = arm(&mut store, limits.timeout);

        // The whole instantiate-and-call is one future under the deadline:
        // dropping it unwinds the guest's fiber wherever it is, including
        // inside a WASI poll that no epoch tick can reach.
        let work = async {
            let h = match warm_handler {
                Some(h) => h,
                None => module
                    .inner
                    .pre
                    .instantiate_checked_once(&mut store)
                    .await
                    .map_err(|e| (true, e))?,
            };
            let outcome = h
                .call_handle(&mut store, msg)
                .await
                .map_err(|e| (false, e))?;
            Ok((h, outcome))
        };
        let result = tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or_else(|_| Err((false, Trap::Interrupt.into())));

        let state = store.data_mut();
        let stdout = state.stdout.take();
        let stderr = state.stderr.take();
        let stdio_dropped = stdout.dropped + stderr.dropped;
        let log_dropped = state.log_dropped;
        let memory_cap_hit = state.limiter.hit;
        let publishes = std::mem::take(&mut state.published);
        let kv_writes = std::mem::take(&mut state.kv.writes);
        let tag = (
            &*env.name,
            msg.message_id.as_deref().unwrap_or("-"),
            module.digest().short(),
        );
        for (stream, c) in [("stdout", &stdout), ("stderr", &stderr)] {
            if !c.bytes.is_empty() || c.dropped > 0 {
                tracing::info!(
                    target: "warren::guest",
                    handler = tag.0, message_id = tag.1, module = tag.2, stream,
                    dropped_bytes = c.dropped,
                    "{}", String::from_utf8_lossy(&c.bytes).trim_end()
                );
            }
        }
        if log_dropped > 0 {
            tracing::warn!(
                handler = tag.0,
                message_id = tag.1,
                module = tag.2,
                dropped = log_dropped,
                cap_bytes = limits.log_bytes,
                "guest log lines dropped past the per-message cap"
            );
        }
        match result {
            Ok((handler, outcome)) => {
                if let Some((warm, max_uses)) = reuse
                    && served + 1 < max_uses
                {
                    warm.put(Warm {
                        store,
                        handler,
                        digest: module.digest().clone(),
                        served: served + 1,
                    });
                }
                Ok(Completed {
                    outcome,
                    publishes,
                    logs_dropped: log_dropped,
                    stdio_dropped,
                    kv_writes,
                })
            }
            // A trapped instance, or one whose call was dropped at the
            // deadline (its guest stopped anywhere, its state half
            // written), is never reused: dropping the store here is what
            // gives the next message a fresh one.
            Err((during_instantiate, err)) => Err(classify(
                err,
                during_instantiate,
                memory_cap_hit,
                &limits,
                &stderr.bytes,
            )),
        }
    }
}

/// Starts the store's clock for one message: the deadline for the epoch
/// callback, and the same instant for the caller's timeout.
fn arm(store: &mut Store<State>, timeout: Duration) -> tokio::time::Instant {
    let now = Instant::now();
    store.data_mut().deadline = now + timeout;
    store.data_mut().http.deadline = now + timeout;
    store.set_epoch_deadline(1);
    tokio::time::Instant::from_std(now + timeout)
}

/// Turns a wasmtime error into what the caller acts on. The last line of the
/// guest's stderr is kept with a plain trap: that is where Rust, C and Python
/// guests write their panic or exception.
fn classify(
    err: wasmtime::Error,
    during_instantiate: bool,
    memory_cap_hit: bool,
    limits: &Limits,
    stderr: &[u8],
) -> RunError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => RunError::Timeout {
            limit: limits.timeout,
        },
        Some(Trap::StackOverflow) => RunError::StackOverflow,
        _ if memory_cap_hit => RunError::MemoryCap {
            cap_bytes: limits.memory_bytes,
        },
        _ if during_instantiate => RunError::Instantiate {
            message: format!("{:#}", anyhow::Error::from(err)),
        },
        trap => {
            let what = match trap {
                Some(t) => t.to_string(),
                None => format!("{:#}", anyhow::Error::from(err)),
            };
            let message = match stderr_tail(stderr) {
                Some(tail) => format!("{what} (guest stderr: {tail})"),
                None => what,
            };
            RunError::Trap { message }
        }
    }
}

/// The last few lines of a guest's stderr, where a panic or an uncaught
/// exception is described, without Rust's backtrace hint.
fn stderr_tail(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .rev()
        .take(3)
        .collect();
    lines.reverse();
    (!lines.is_empty()).then(|| lines.join(" / "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_panic_not_the_hint() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:3:9:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            stderr_tail(stderr).unwrap(),
            "thread '<unnamed>' panicked at src/lib.rs:3:9: / boom"
        );
        assert_eq!(stderr_tail(b"\n \n"), None);
    }
}
