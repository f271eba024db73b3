//! The guest's log lines, as `warren run` would write them, caught for
//! `warren test` instead of printed: the runtime reports a guest's `log`
//! calls and its captured stdout/stderr as events on the `warren::guest`
//! target, and a run made inside [`Capture::during`] hands them here.
//! Nothing in the runtime changes for the test; the lines a case sees are
//! the very events a host would log.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// The target the runtime logs guest output on.
const GUEST: &str = "warren::guest";

/// Collects the guest's lines while a closure runs.
#[derive(Clone, Default)]
pub struct Capture {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    /// Runs `f` with this capture as the thread's subscriber. The guest
    /// must run on this thread (a current-thread tokio runtime), which is
    /// how `warren test` runs it. Events other than the guest's are
    /// dropped: the test prints what it has to say itself.
    pub fn during<R>(&self, f: impl FnOnce() -> R) -> R {
        let subscriber = tracing_subscriber::registry().with(Layer(self.clone()));
        tracing::subscriber::with_default(subscriber, f)
    }

    /// The lines caught since the last call, as `level: text` for `log`
    /// calls and `stdout: text` / `stderr: text` for the guest's output.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Layer(Capture);

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != GUEST {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let source = match fields.stream {
            Some(stream) => stream,
            None => meta.level().as_str().to_ascii_lowercase(),
        };
        let mut lines = self.0.lines.lock().unwrap_or_else(|e| e.into_inner());
        // One captured stream is one event; an author reads it line by line.
        for line in fields.message.lines() {
            lines.push(format!("{source}: {line}"));
        }
        if let Some(n) = fields.dropped.filter(|n| *n > 0) {
            lines.push(format!("{source}: ({n} bytes dropped past the cap)"));
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    stream: Option<String>,
    dropped: Option<u64>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "stream" => self.stream = Some(value.into()),
            "message" => self.message.push_str(value),
            _ => {}
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "dropped_bytes" {
            self.dropped = Some(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "stream" => self.stream = Some(format!("{value:?}").trim_matches('"').into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_guest_lines_and_nothing_else() {
        let c = Capture::default();
        c.during(|| {
            tracing::info!(target: "warren::guest", handler = "h", "got 3 bytes");
            tracing::warn!(target: "warren::guest", stream = "stdout", dropped_bytes = 0u64, "a\nb");
            tracing::info!("the host's own line");
        });
        assert_eq!(c.take(), ["info: got 3 bytes", "stdout: a", "stdout: b"]);
        assert!(c.take().is_empty());
    }
}
