//! Isolation between messages for the interpreted guests. A Python or
//! JavaScript component starts from a snapshot of an initialised
//! interpreter (tens of MiB of heap in its memory image), and a fresh
//! instance per message must start from that snapshot every time: nothing a
//! previous message wrote to the heap, to a module-level variable or to the
//! interpreter's own state may show through the pool's slot reuse
//! (copy-on-write images reset in place, pages kept resident between
//! messages).
//!
//! The `counter` guests count their calls in a module-level variable and
//! grow a list on the heap by one entry per call, and say both numbers in
//! their reject reason. In reuse mode the numbers grow, which shows the test
//! can see state that carries over; per message they must stay at one.
//!
//! The components come from `bash guests/build-all.sh`.

use std::collections::BTreeMap;
use std::sync::Arc;

use warren::runtime::{HandlerEnv, Limits, Module, Outcome, Runtime, RuntimeConfig, WarmInstances};
use warren_tests::{guest, message};

const GUESTS: [&str; 2] = ["counter_python", "counter_js"];

fn setup(file: &str) -> (Runtime, Module, Arc<HandlerEnv>) {
    let runtime = Runtime::new(RuntimeConfig {
        // More slots than one: a fresh instance may land in a slot another
        // message of the same module dirtied, or in a new one.
        max_instances: 2,
        max_memory_bytes: 256 << 20,
        cache_dir: Some(warren_tests::module_cache_dir()),
    })
    .unwrap();
    let bytes = std::fs::read(guest(file)).unwrap();
    let module = runtime
        .compile(&bytes)
        .unwrap_or_else(|e| panic!("{file}.wasm is refused: {e}"));
    let env = Arc::new(HandlerEnv {
        name: "counter".into(),
        config: BTreeMap::new(),
        publish_allow: Vec::new(),
        limits: Limits {
            memory_bytes: 256 << 20,
            ..Limits::default()
        },
        kv: None,
        http: None,
        metrics: None,
    });
    (runtime, module, env)
}

fn reason(outcome: Outcome) -> String {
    match outcome {
        Outcome::Reject(reason) => reason,
        other => panic!("the counter guest rejects every message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_fresh_interpreted_instance_sees_nothing_of_earlier_messages() {
    for file in GUESTS {
        let (rt, module, env) = setup(file);
        // Enough messages that every slot is reused many times over, with
        // bodies of different sizes so the heap differs from one to the next.
        for i in 0..40 {
            let permit = rt.acquire().await;
            let body = "x".repeat(1 + i * 97);
            let done = rt.run(&module, &env, &message(body), &permit).await;
            let done = done.unwrap_or_else(|e| panic!("{file}: message {i} failed: {e}"));
            assert_eq!(
                reason(done.outcome),
                "count 1, heap 1",
                "{file}: message {i} saw state from an earlier message"
            );
        }
    }
}

#[tokio::test]
async fn a_reused_interpreted_instance_carries_its_state() {
    for file in GUESTS {
        let (rt, module, env) = setup(file);
        let warm = WarmInstances::default();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let permit = rt.acquire().await;
            let done = rt
                .run_warm(&module, &env, &message("m"), &permit, &warm, 3)
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            seen.push(reason(done.outcome));
        }
        // Three messages on one instance, then a fresh one from the snapshot.
        assert_eq!(
            seen,
            [
                "count 1, heap 1",
                "count 2, heap 2",
                "count 3, heap 3",
                "count 1, heap 1"
            ],
            "{file}"
        );
        warm.clear();
    }
}
