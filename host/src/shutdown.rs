//! Shutdown: SIGTERM or SIGINT starts a graceful stop, fanned out to every
//! task through one watch channel; a second signal exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The sending side: set to `true` once, when shutdown starts.
pub type Trigger = watch::Sender<bool>;
/// What tasks hold: `wait_for(|s| *s)` resolves when shutdown starts.
pub type Signal = watch::Receiver<bool>;

pub fn channel() -> (Trigger, Signal) {
    watch::channel(false)
}

/// Waits for SIGTERM or SIGINT and triggers a graceful shutdown; on a second
/// signal, exits the process with status 130 without waiting for anything.
pub async fn listen(trigger: Trigger) -> std::io::Result<()> {
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
