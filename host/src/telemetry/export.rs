//! The exporter: a thread of its own that gathers finished spans and POSTs
//! them as OTLP/HTTP protobuf, at most [`BATCH`] spans a request and at
//! least every [`EVERY`]. The message path only `try_send`s into a bounded
//! queue: a slow or absent collector costs dropped spans (counted, and
//! logged at most every 30 s), never a delayed message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use super::{AttrValue, Span, otlp};

/// Most spans in one export request.
const BATCH: usize = 512;
/// Longest a finished span waits to be sent.
const EVERY: Duration = Duration::from_millis(500);
/// Batches of spans (one per message batch) the queue holds.
const QUEUE: usize = 1024;
/// Longest one export request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

enum Msg {
    Spans(Vec<Span>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The sending side; the thread ends when it is dropped.
#[derive(Debug)]
pub struct Exporter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Exporter {
    pub fn start(url: String, resource: Vec<(String, AttrValue)>, dropped: Arc<AtomicU64>) -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("warren-otlp".into())
            .spawn(move || run(rx, &url, &resource, &d))
            .expect("spawn the OTLP exporter thread");
        Exporter { tx, dropped }
    }

    pub fn send(&self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        match self.tx.try_send(Msg::Spans(spans)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub fn flush(&self, within: Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.try_send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(within);
        }
    }
}

fn run(rx: Receiver<Msg>, url: &str, resource: &[(String, AttrValue)], dropped: &AtomicU64) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let mut pending: Vec<Span> = Vec::new();
    let mut last_warning: Option<Instant> = None;
    let mut deadline = Instant::now() + EVERY;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut flush_reply = None;
        match rx.recv_timeout(wait) {
            Ok(Msg::Spans(s)) => pending.extend(s),
            Ok(Msg::Flush(reply)) => flush_reply = Some(reply),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                send(&agent, url, resource, &pending, dropped, &mut last_warning);
                return;
            }
        }
        let due = Instant::now() >= deadline;
        if pending.len() >= BATCH || due || flush_reply.is_some() {
            while !pending.is_empty() {
                let rest = pending.split_off(pending.len().min(BATCH));
                send(&agent, url, resource, &pending, dropped, &mut last_warning);
                pending = rest;
            }
            deadline = Instant::now() + EVERY;
        }
        if let Some(reply) = flush_reply {
            let _ = reply.send(());
        }
    }
}

fn send(
    agent: &ureq::Agent,
    url: &str,
    resource: &[(String, AttrValue)],
    spans: &[Span],
    dropped: &AtomicU64,
    last_warning: &mut Option<Instant>,
) {
    if spans.is_empty() {
        return;
    }
    let body = otlp::export_request(resource, spans);
    let result = agent
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .send(&body[..]);
    let failure = match result {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("the collector answered {}", r.status())),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = failure {
        let total = dropped.fetch_add(spans.len() as u64, Ordering::Relaxed) + spans.len() as u64;
        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            tracing::warn!(endpoint = url, error = %why, spans_dropped_total = total, "cannot export spans; dropping them");
            *last_warning = Some(Instant::now());
        }
    }
}
