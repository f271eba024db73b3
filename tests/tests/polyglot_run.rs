//! The `enrich` handler in each language under `warren run`, against the real
//! broker: the same 1,000 inputs (some not JSON objects) go in; every object
//! comes out once, enriched, byte-identical (after sorting keys) to what the
//! test computes itself, and so identical across the five languages; every
//! other input lands in `<queue>.dead` with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use warren_tests::broker::Rabbit;
use warren_tests::enrich_cases::{Case, Expect, NOT_AN_OBJECT, canonical, cases};
use warren_tests::process::{Warren, config, unique};
use warren_tests::{guest, module_cache_dir};

/// What `enrich` must publish for an object body on its first attempt.
fn expected(case: &Case) -> String {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&case.body) else {
        panic!("not an object: {:?}", case.body)
    };
    object.insert("enriched_by".into(), Value::String("warren".into()));
    object.insert("attempt".into(), Value::from(1));
    canonical(&Value::Object(object))
}

async fn enrich_under_warren_run(module: &str) {
    let q = unique(module);
    let (out, dead) = (format!("{q}.out"), format!("{q}.dead"));
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let extra = format!(
        "timeout_ms = 10000\nmemory_mb = 128\n[handler.dedup]\nlease_ms = 30000\n[handler.config]\nfield = \"enriched_by\"\nvalue = \"warren\"\nout_routing_key = \"{out}\"\n"
    );
    let cfg = config(&guest(module), "enrich", &q, None, &extra).replacen(
        "[[handler]]",
        &format!(
            "[runtime]\ncache_dir = \"{}\"\n\n[[handler]]",
            module_cache_dir().display()
        ),
        1,
    );
    let mut w = Warren::start(&cfg, None);
    // Interpreted guests compile for a while the first time on a machine.
    w.wait_log("consuming", Duration::from_secs(240));

    let all = cases();
    r.declare(&q).await;
    r.publish_many(
        &q,
        all.iter()
            .enumerate()
            .map(|(i, c)| (Some(format!("p-{i}")), c.body.clone())),
    )
    .await;
    let objects = all.iter().filter(|c| c.expect == Expect::Object).count();
    let got = r.collect(&out, objects, Duration::from_secs(180)).await;
    let rejected = r
        .collect(&dead, all.len() - objects, Duration::from_secs(60))
        .await;

    // Outputs: one per object input, found by the deterministic id warren
    // gave it, equal to the test's own computation.
    let by_id: BTreeMap<String, String> = got
        .iter()
        .map(|g| {
            (
                g.message_id.clone().unwrap(),
                canonical(&serde_json::from_slice(&g.body).unwrap()),
            )
        })
        .collect();
    assert_eq!(by_id.len(), objects, "{module}: an output came twice");
    for (i, case) in all
        .iter()
        .enumerate()
        .filter(|(_, c)| c.expect == Expect::Object)
    {
        let id = warren::pipeline::output_message_id("enrich", &format!("p-{i}"), 0);
        assert_eq!(
            by_id.get(&id),
            Some(&expected(case)),
            "{module}: input {i} ({:?})",
            String::from_utf8_lossy(&case.body)
        );
    }
    // Dead letters: every other input, with the reason.
    for g in &rejected {
        let i: usize = g
            .message_id
            .as_deref()
            .unwrap()
            .trim_start_matches("p-")
            .parse()
            .unwrap();
        assert_eq!(
            g.header("x-warren-error-kind").as_deref(),
            Some("reject"),
            "{module}: input {i}"
        );
        let reason = g.header("x-warren-reason").unwrap();
        let why = reason
            .strip_prefix(NOT_AN_OBJECT)
            .unwrap_or_else(|| panic!("{module}: input {i}: {reason}"));
        match all[i].expect {
            Expect::NotAnObject(kind) => {
                assert_eq!(why, format!("it is {kind}"), "{module}: input {i}")
            }
            Expect::Invalid => assert!(!why.is_empty(), "{module}: input {i} names no parse error"),
            Expect::Object => panic!("{module}: object input {i} was rejected: {reason}"),
        }
        assert_eq!(
            g.body, all[i].body,
            "{module}: the dead letter is not the input"
        );
    }
    r.delete(&[&q, &out, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_enrich_under_warren_run() {
    enrich_under_warren_run("enrich").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_enrich_under_warren_run() {
    enrich_under_warren_run("enrich_python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn js_enrich_under_warren_run() {
    enrich_under_warren_run("enrich_js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c_enrich_under_warren_run() {
    enrich_under_warren_run("enrich_c").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn go_enrich_under_warren_run() {
    enrich_under_warren_run("enrich_go").await;
}
