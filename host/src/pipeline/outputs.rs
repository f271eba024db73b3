//! Step 4: every output of every acked message in a batch goes to the
//! broker at once, each with its deterministic id, and the batch waits for
//! their confirms together, under one deadline.
//!
//! In three passes, so that the per-output work is plain code rather than
//! a future per output: the batch's exchanges are checked (only those this
//! connection has not seen: usually none), each output is converted and
//! sized, then all are sent together and their confirms awaited in order.

use crate::amqp::CONFIRM_TIMEOUT;
use crate::runtime::Outbound;
use crate::telemetry::{self, SpanContext};

use super::keys::output_id_base;
use super::{Job, Pipeline, convert, output_message_id};

/// One output on its way, for the verdict and its span.
struct Going<'a> {
    /// Which message of the batch it is an output of.
    j: usize,
    /// Which of that message's outputs it is.
    i: usize,
    out: &'a Outbound,
    /// With telemetry on: its message's delivery tag, the publish span's
    /// context, the output's id and when it started.
    traced: Option<(u64, SpanContext, String, u64)>,
}

impl Pipeline<'_> {
    /// Publishes every output of every acked message and waits for their
    /// confirms, at most [`CONFIRM_TIMEOUT`] for all of them. Returns, per
    /// message, why an output of it was not confirmed (the first refusal),
    /// or none when all were.
    pub(super) async fn publish_outputs(
        &self,
        acked: &[(Job, Vec<Outbound>)],
        digest: &str,
    ) -> Vec<Option<String>> {
        let mut refused: Vec<Option<String>> = acked.iter().map(|_| None).collect();
        let unknown = self.publisher.unknown_exchanges(
            acked
                .iter()
                .flat_map(|(_, outputs)| outputs.iter().map(|o| o.exchange.as_str())),
        );
        let missing = self.publisher.check_exchanges(unknown).await;

        let mut going = Vec::new();
        let mut ready = Vec::new();
        for (j, (job, outputs)) in acked.iter().enumerate() {
            if outputs.is_empty() {
                continue;
            }
            let base = job.key.clone().unwrap_or_else(|| output_id_base(&job.msg));
            let tag = job.msg.delivery_tag();
            for (i, out) in outputs.iter().enumerate() {
                let id = output_message_id(self.name(), &base, i);
                let ctx = self.trace.as_ref().and_then(|t| t.publish_context(tag));
                // The span's start, only when there is a span.
                let from = if ctx.is_some() {
                    telemetry::now_ns()
                } else {
                    0
                };
                let prepared = match missing.get(out.exchange.as_str()) {
                    Some(why) => Err(why.clone()),
                    None => convert::outbound_properties(out, &id)
                        .map_err(|invalid| format!("invalid outbound message: {invalid}"))
                        .and_then(|(props, mut headers)| {
                            if let Some(ctx) = &ctx {
                                super::trace::with_context(&mut headers, ctx);
                            }
                            let to = (out.exchange.as_str(), out.routing_key.as_str());
                            self.publisher
                                .ready_output(to, &out.body, props, headers, digest)
                                .map_err(|e| e.to_string())
                        }),
                };
                let one = Going {
                    j,
                    i,
                    out,
                    traced: ctx.map(|ctx| (tag, ctx, id, from)),
                };
                match prepared {
                    Ok(r) => {
                        ready.push(r);
                        going.push(one);
                    }
                    Err(why) => self.verdict(&mut refused, one, Err(why)),
                }
            }
        }
        if ready.is_empty() {
            return refused;
        }

        // One deadline for the batch's confirms together (the outputs go
        // out together), rather than a timer per output.
        let mut going = going.into_iter();
        let confirms = async {
            let sent = self.publisher.send_outputs(ready).await;
            for sent in sent {
                let confirmed = match sent {
                    Ok(sent) => sent.confirmed().await,
                    Err(e) => Err(e),
                };
                let one = going.next().expect("one going per output sent");
                self.verdict(&mut refused, one, confirmed.map_err(|e| e.to_string()));
            }
        };
        if tokio::time::timeout(CONFIRM_TIMEOUT, confirms)
            .await
            .is_err()
        {
            for one in going {
                let why = format!("no confirm within {CONFIRM_TIMEOUT:?}");
                self.verdict(&mut refused, one, Err(why));
            }
        }
        refused
    }

    /// Records how one output went: its span, and the first refusal of
    /// its message.
    fn verdict(&self, refused: &mut [Option<String>], one: Going<'_>, sent: Result<(), String>) {
        if let (Some(t), Some((tag, ctx, id, from))) = (&self.trace, one.traced) {
            let err = sent.as_ref().err().map(String::as_str);
            let out = one.out;
            t.published(tag, ctx, &out.exchange, &out.routing_key, &id, from, err);
        }
        if let Err(why) = sent {
            refused[one.j].get_or_insert(format!("output {} not confirmed: {why}", one.i));
        }
    }
}
