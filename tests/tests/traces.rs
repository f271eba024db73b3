//! OpenTelemetry traces across the message hop: a message with a
//! `traceparent` goes through two chained handlers (the second retries it
//! once, then dead-letters it) and yields one trace, checked as an OTLP
//! receiver on loopback decodes it with the protocol crate's own types.

use std::time::Duration;

use warren_tests::fixture::Fixture;
use warren_tests::guest;
use warren_tests::otlp_receiver::proto::{KIND_CONSUMER, KIND_PRODUCER, Span};
use warren_tests::otlp_receiver::{Receiver, attr};
use warren_tests::process::{eventually, unique};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_through_two_handlers_and_a_retry_is_one_trace() {
    let collector = Receiver::start().await;
    let second = unique("trace-b");
    let sandbox = guest("sandbox");
    // Handler `first` (echo) forwards to `second`'s queue; `second`
    // (the sandbox guest, whose body `retry` asks for a retry) gets two
    // attempts, then dead-letters the message.
    let extra = format!(
        "[handler.config]\nout_routing_key = \"{second}\"\n\n\
         [[handler]]\nname = \"second\"\nmodule = \"{}\"\nqueue = \"{second}\"\n\
         [handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n",
        sandbox.display()
    );
    let mut f = Fixture::new("trace-a")
        .handler("first")
        .section(&format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{}\"\nservice_name = \"orders-svc\"\n",
            collector.port
        ))
        .extra(&extra)
        .prepare()
        .await;
    f.track(&second);
    f.track(&format!("{second}.dead"));
    f.launch();

    let traceparent = format!("00-{TRACE}-{PRODUCER_SPAN}-01");
    f.rabbit
        .publish_with_headers(
            &f.queue,
            "trace-1",
            b"retry",
            &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
        )
        .await;

    // The dead-letter copy, after the second attempt.
    let dead = f
        .rabbit
        .collect(&format!("{second}.dead"), 1, Duration::from_secs(60))
        .await;
    let copy = &dead[0];
    assert_eq!(copy.header("x-warren-attempt").as_deref(), Some("2"));

    let process = |queue: &str| format!("process {queue}");
    eventually(Duration::from_secs(20), "both handlers' spans", || async {
        let spans = collector.spans();
        spans
            .iter()
            .filter(|r| r.span.name == process(&second))
            .count()
            == 2
            && spans.iter().any(|r| r.span.name == process(&f.queue))
    })
    .await;
    // Every span is in the producer's trace, and came from this service.
    let spans = collector.spans();
    assert!(
        collector.errors.lock().unwrap().is_empty(),
        "undecodable bodies"
    );
    for r in &spans {
        assert_eq!(
            hex(&r.span.trace_id),
            TRACE,
            "span {} in another trace",
            r.span.name
        );
        assert_eq!(r.service_name.as_deref(), Some("orders-svc"));
    }
    let by_id = |id: &[u8]| spans.iter().find(|r| r.span.span_id == id).map(|r| &r.span);

    // The first handler: a consumer span under the producer's, with the
    // messaging attributes.
    let a = &spans
        .iter()
        .find(|r| r.span.name == process(&f.queue))
        .unwrap()
        .span;
    assert_eq!(hex(&a.parent_span_id), PRODUCER_SPAN);
    assert_eq!(a.kind, KIND_CONSUMER);
    assert_eq!(a.trace_state, "vendor=abc");
    for (k, v) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.subscription.name", f.queue.as_str()),
        (
            "messaging.rabbitmq.destination.routing_key",
            f.queue.as_str(),
        ),
        ("messaging.message.id", "trace-1"),
        ("warren.handler", "first"),
        ("warren.attempt", "1"),
        ("warren.outcome", "ack"),
    ] {
        assert_eq!(attr(a, k).as_deref(), Some(v), "{k} of {}", a.name);
    }
    assert!(attr(a, "warren.module.digest").is_some_and(|d| d.starts_with("sha256:")));
    let children = |p: &Span| -> Vec<String> {
        let mut names: Vec<String> = spans
            .iter()
            // Its own steps: a later attempt's span is a child too.
            .filter(|r| r.span.parent_span_id == p.span_id && !r.span.name.starts_with("process "))
            .map(|r| r.span.name.clone())
            .collect();
        names.sort();
        names
    };
    let publish = format!("publish {second}");
    assert_eq!(
        children(a),
        ["claim", publish.as_str(), "run", "settle"],
        "children of {}",
        a.name
    );
    let out = spans
        .iter()
        .map(|r| &r.span)
        .find(|s| s.name == publish)
        .unwrap();
    assert_eq!(out.kind, KIND_PRODUCER);
    assert_eq!(
        attr(out, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some(second.as_str())
    );

    // The second handler: attempt 1 under the first handler's publish,
    // attempt 2 under attempt 1; both failed with the guest's kind.
    let mut b: Vec<_> = spans
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name == process(&second))
        .collect();
    b.sort_by_key(|s| attr(s, "warren.attempt"));
    let (b1, b2) = (b[0], b[1]);
    assert_eq!(attr(b1, "warren.attempt").as_deref(), Some("1"));
    assert_eq!(
        b1.parent_span_id, out.span_id,
        "attempt 1's parent is the publish"
    );
    assert_eq!(attr(b1, "warren.outcome").as_deref(), Some("retry"));
    assert_eq!(attr(b1, "error.type").as_deref(), Some("retry"));
    assert_eq!(b1.status.as_ref().map(|s| s.code), Some(2), "status error");
    assert_eq!(attr(b2, "warren.attempt").as_deref(), Some("2"));
    assert_eq!(
        b2.parent_span_id, b1.span_id,
        "attempt 2's parent is attempt 1"
    );
    assert_eq!(attr(b2, "warren.outcome").as_deref(), Some("dead_letter"));
    assert_eq!(attr(b2, "warren.handler").as_deref(), Some("second"));
    for s in [b1, b2] {
        assert_eq!(
            children(s),
            ["claim", "run", "settle"],
            "children of attempt"
        );
        assert!(
            by_id(&s.parent_span_id).is_some(),
            "parent of {} missing",
            s.name
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }

    // The dead-letter copy carries the last attempt's context.
    assert_eq!(
        copy.header("traceparent").as_deref(),
        Some(format!("00-{TRACE}-{}-01", hex(&b2.span_id)).as_str())
    );
    assert_eq!(copy.header("tracestate").as_deref(), Some("vendor=abc"));
    // Clean-up of the second handler's wait queues.
    for q in warren_tests::broker::rabbitmqctl(&["-q", "list_queues", "name"]).lines() {
        if q.starts_with(&format!("{second}.retry.")) {
            f.track(q);
        }
    }
}
