//! The spans of a batch's messages, when telemetry is on: per message a
//! `process` span (consumer kind, the messaging attributes) with children
//! for its dedup claim, its guest run, each output's publish and its
//! settlement, finished when the message settles and handed to the
//! exporter when the batch ends.
//!
//! The parent of a `process` span is the `traceparent` the message came
//! with (another service's publish, or the previous attempt of this
//! message), so a trace follows a message through a chain of handlers and
//! through its retries. Its own context goes onward: each output carries
//! its publish span's `traceparent`, and each retry and dead-letter copy
//! the `process` span's (set on the delivery when the batch starts).
//!
//! Steps that run once for the whole batch (the claim's round trip, the
//! settlement's publishes) give each message's span the step's times.
//! With telemetry off none of this exists: the pipeline holds no
//! `BatchTrace` and checks one `Option` per step.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::amqp::Inbound;
use crate::telemetry::{
    AttrValue, Span, SpanContext, SpanKind, Status, TRACEPARENT, TRACESTATE, Tracer, now_ns,
};

/// What becomes of a message, as its spans say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Ack,
    DedupHit,
    Retry,
    Defer,
    DeadLetter,
    Requeue,
}

impl Fate {
    fn name(self) -> &'static str {
        match self {
            Fate::Ack => "ack",
            Fate::DedupHit => "dedup_hit",
            Fate::Retry => "retry",
            Fate::Defer => "deferred",
            Fate::DeadLetter => "dead_letter",
            Fate::Requeue => "requeued",
        }
    }
}

/// The spans of one batch.
pub(super) struct BatchTrace {
    tracer: Tracer,
    handler: String,
    queue: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    msgs: HashMap<u64, MsgTrace>,
    claim: Option<(u64, u64)>,
    finished: Vec<Span>,
}

struct MsgTrace {
    ctx: SpanContext,
    parent: Option<SpanContext>,
    start_ns: u64,
    attrs: Vec<(String, AttrValue)>,
    children: Vec<Span>,
    module: Option<String>,
    /// When its settlement started.
    settle_from: Option<u64>,
    /// Why it failed, if it did: its error kind and reason.
    failure: Option<(String, String)>,
}

impl BatchTrace {
    pub(super) fn new(tracer: Tracer, handler: &str, queue: &str) -> BatchTrace {
        BatchTrace {
            tracer,
            handler: handler.to_string(),
            queue: queue.to_string(),
            inner: Mutex::default(),
        }
    }

    /// Starts the `process` span of `msg` under the context it came with,
    /// and sets that span's context on its retry and dead-letter copies.
    pub(super) fn begin(&self, msg: &mut Inbound) {
        let parent = msg
            .header_text(TRACEPARENT)
            .and_then(|tp| SpanContext::parse(&tp, msg.header_text(TRACESTATE).as_deref()));
        let ctx = parent
            .as_ref()
            .map_or_else(SpanContext::root, SpanContext::child);
        msg.set_copy_header(TRACEPARENT, ctx.traceparent());
        if let Some(state) = &ctx.state {
            msg.set_copy_header(TRACESTATE, state.clone());
        }
        let exchange = msg.original_exchange();
        let mut attrs: Vec<(String, AttrValue)> = vec![
            ("messaging.system".into(), "rabbitmq".into()),
            ("messaging.operation.type".into(), "process".into()),
            ("messaging.operation.name".into(), "process".into()),
            (
                "messaging.destination.name".into(),
                if exchange.is_empty() {
                    self.queue.clone().into()
                } else {
                    exchange.into()
                },
            ),
            (
                "messaging.destination.subscription.name".into(),
                self.queue.clone().into(),
            ),
            (
                "messaging.rabbitmq.destination.routing_key".into(),
                msg.original_routing_key().into(),
            ),
            (
                "messaging.message.body.size".into(),
                (msg.body().len() as i64).into(),
            ),
            ("warren.handler".into(), self.handler.clone().into()),
            ("warren.attempt".into(), i64::from(msg.attempt()).into()),
        ];
        if let Some(id) = msg.message_id() {
            attrs.push(("messaging.message.id".into(), id.into()));
        }
        let t = MsgTrace {
            ctx,
            parent,
            start_ns: now_ns(),
            attrs,
            children: Vec::new(),
            module: None,
            settle_from: None,
            failure: None,
        };
        self.lock().msgs.insert(msg.delivery_tag(), t);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("batch trace lock")
    }

    /// The claim step ran from `start` to now.
    pub(super) fn claimed(&self, start_ns: u64) {
        self.lock().claim = Some((start_ns, now_ns()));
    }

    fn child(&self, t: &MsgTrace, name: &str, kind: SpanKind, from: u64, to: u64) -> Span {
        let mut s = Span::new(name, kind, t.ctx.child());
        s.parent = Some(t.ctx.span_id);
        s.start_ns = from;
        s.end_ns = to;
        s.attr("warren.handler", self.handler.as_str());
        s
    }

    /// The guest ran `tag` from `from` to `to` on `module`.
    pub(super) fn ran(&self, tag: u64, module: &str, from: u64, to: u64, error: Option<&str>) {
        let mut inner = self.lock();
        let claim = inner.claim;
        let Some(t) = inner.msgs.get_mut(&tag) else {
            return;
        };
        t.module = Some(module.to_string());
        let mut spans = Vec::new();
        if let Some((a, b)) = claim {
            let mut c = self.child(t, "claim", SpanKind::Internal, a, b);
            c.attr("warren.step", "dedup claim");
            spans.push(c);
        }
        let mut r = self.child(t, "run", SpanKind::Internal, from, to);
        r.attr("warren.module.digest", module);
        if let Some(kind) = error {
            r.attr("error.type", kind);
            r.status = Status::Error(kind.to_string());
        }
        spans.push(r);
        t.children.extend(spans);
    }

    /// The context of a new publish span of `tag`'s output: what the
    /// output's `traceparent` says.
    pub(super) fn publish_context(&self, tag: u64) -> Option<SpanContext> {
        self.lock().msgs.get(&tag).map(|t| t.ctx.child())
    }

    /// One output of `tag` was published (or refused) from `from` to `to`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn published(
        &self,
        tag: u64,
        ctx: SpanContext,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        from: u64,
        error: Option<&str>,
    ) {
        let to = now_ns();
        let mut inner = self.lock();
        let Some(t) = inner.msgs.get_mut(&tag) else {
            return;
        };
        let name = if exchange.is_empty() {
            format!("publish {routing_key}")
        } else {
            format!("publish {exchange}")
        };
        let mut s = Span::new(name, SpanKind::Producer, ctx);
        s.parent = Some(t.ctx.span_id);
        s.start_ns = from;
        s.end_ns = to;
        s.attr("messaging.system", "rabbitmq")
            .attr("messaging.operation.type", "send")
            .attr("messaging.operation.name", "publish")
            .attr("messaging.destination.name", exchange)
            .attr("messaging.rabbitmq.destination.routing_key", routing_key)
            .attr("messaging.message.id", message_id)
            .attr("warren.handler", self.handler.as_str());
        if let Some(e) = error {
            s.attr("error.type", "publish");
            s.status = Status::Error(e.to_string());
        }
        t.children.push(s);
    }

    /// `tag`'s settlement starts now.
    pub(super) fn settling(&self, tag: u64) {
        if let Some(t) = self.lock().msgs.get_mut(&tag) {
            t.settle_from = Some(now_ns());
        }
    }

    /// `tag` failed: `kind` (`reject`, `trap`, ...) for `reason`.
    pub(super) fn failed(&self, tag: u64, kind: &str, reason: &str) {
        if let Some(t) = self.lock().msgs.get_mut(&tag) {
            t.failure = Some((kind.to_string(), reason.to_string()));
        }
    }

    /// `tag` settled as `fate`: its spans are finished.
    pub(super) fn settled(&self, tag: u64, fate: Fate) {
        let to = now_ns();
        let mut inner = self.lock();
        let claim = inner.claim;
        let Some(mut t) = inner.msgs.remove(&tag) else {
            return;
        };
        // A message that never ran still shows its claim.
        if t.module.is_none()
            && let Some((a, b)) = claim
        {
            let c = self.child(&t, "claim", SpanKind::Internal, a, b);
            t.children.push(c);
        }
        let from = t.settle_from.unwrap_or(to);
        let mut settle = self.child(&t, "settle", SpanKind::Internal, from, to);
        settle.attr("warren.outcome", fate.name());
        t.children.push(settle);
        let name = format!("process {}", self.queue);
        let mut p = Span::new(name, SpanKind::Consumer, t.ctx.clone());
        p.parent = t.parent.as_ref().map(|c| c.span_id);
        p.parent_remote = t.parent.is_some();
        p.start_ns = t.start_ns;
        p.end_ns = to;
        p.attributes = t.attrs;
        p.attr("warren.outcome", fate.name());
        if let Some(m) = &t.module {
            p.attr("warren.module.digest", m.as_str());
        }
        match (&t.failure, fate) {
            (Some((kind, reason)), Fate::Retry | Fate::DeadLetter) => {
                p.attr("error.type", kind.as_str());
                p.status = Status::Error(reason.clone());
            }
            (_, Fate::Requeue) => p.status = Status::Unset,
            _ => p.status = Status::Ok,
        }
        inner.finished.push(p);
        inner.finished.append(&mut t.children);
    }
}

/// `props` with the `traceparent` (and `tracestate`) of `ctx`, in place of
/// any the guest set.
pub(super) fn with_context(h: &mut crate::amqp::wire::FieldTable, ctx: &SpanContext) {
    use crate::amqp::wire::AMQPValue;
    h.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(ctx.traceparent().into()),
    );
    if let Some(state) = &ctx.state {
        h.insert(
            TRACESTATE.into(),
            AMQPValue::LongString(state.as_str().into()),
        );
    }
}

impl Drop for BatchTrace {
    /// The batch is over: its finished spans go to the exporter (a message
    /// that never settled here, requeued by its destructor, has none).
    fn drop(&mut self) {
        let spans = std::mem::take(&mut self.lock().finished);
        self.tracer.finish(spans);
    }
}
