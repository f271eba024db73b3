//! Shutdown: SIGTERM or SIGINT starts a graceful stop, fanned out to every
//! task through one watch channel; a second signal exits at once, and so
//! does a graceful stop still running at its hard deadline (checked on a
//! thread of its own, so a wedged runtime cannot hold it up).

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Past the in-flight deadline (`shutdown_timeout_ms`) and the supervisor's
/// close budget: when a stop still running is cut short. Under a second,
/// so SIGTERM always ends the process within `shutdown_timeout_ms` plus one.
pub const HARD_DEADLINE_MARGIN: Duration = Duration::from_millis(850);
/// How long the runtime waits, once `serve` returned, for tasks and blocking
/// threads it still has (a guest run ends by its own deadline anyway).
pub const RUNTIME_STOP: Duration = Duration::from_millis(100);

/// The sending side: set to `true` once, when shutdown starts.
pub type Trigger = watch::Sender<bool>;
/// What tasks hold: `wait_for(|s| *s)` resolves when shutdown starts.
pub type Signal = watch::Receiver<bool>;

pub fn channel() -> (Trigger, Signal) {
    watch::channel(false)
}

/// Waits for SIGTERM or SIGINT and triggers a graceful shutdown; on a second
/// signal, exits the process with status 130 without waiting for anything.
/// If the process is still running `hard_deadline` after the first signal,
/// it exits with status 1 (see [`exit_at`]).
pub async fn listen(trigger: Trigger, hard_deadline: Duration) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = first,
        "shutdown requested: finishing in-flight messages (send it again to exit now)"
    );
    let _ = trigger.send(true);
    exit_at(hard_deadline);
    let second = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::warn!(
        signal = second,
        "second signal: exiting now; unacked messages return to their queues"
    );
    std::process::exit(130);
}

/// Exits the process with status 1 once `after` has passed, from a thread of
/// its own: the graceful stop bounds every step, and this is what holds
/// even if one of them does not. Unacked deliveries return to their queues
/// when the connection drops with the process.
pub fn exit_at(after: Duration) {
    std::thread::Builder::new()
        .name("warren-shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                deadline_ms = after.as_millis() as u64,
                "graceful shutdown did not finish by its hard deadline: exiting now, abandoning in-flight messages (they return to their queues unacked) and any broker close still waiting"
            );
            std::process::exit(1);
        })
        .expect("spawn the shutdown deadline thread");
}
