//! The enrich handler in Rust, Python, JavaScript, C and Go, held to one
//! behaviour: 1,000 deterministic bodies (objects, JSON that is not an object,
//! text that is not JSON at all) through all five components in the real
//! runtime. For each body the five must agree on the outcome, publish the
//! same JSON object (compared after sorting keys recursively) and, on a
//! reject, say why.
//!
//! The components come from `bash guests/build-all.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use warren::runtime::{
    Completed, HandlerEnv, Limits, Module, Outcome, RunError, Runtime, RuntimeConfig,
};
use warren_tests::enrich_cases::{
    Case, Expect, NOT_AN_OBJECT, ROUTING_KEY, canonical, cases, expected_output,
};
use warren_tests::{guest, message};

/// The five builds of enrich, by language, and their files in guests/build/.
const LANGUAGES: [(&str, &str); 5] = [
    ("rust", "enrich"),
    ("python", "enrich_python"),
    ("js", "enrich_js"),
    ("c", "enrich_c"),
    ("go", "enrich_go"),
];

struct Setup {
    runtime: Runtime,
    modules: Vec<(&'static str, Module)>,
}

/// One runtime and the five modules, each compiled on its own thread (the
/// interpreted ones take seconds).
fn setup() -> Setup {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 1,
        max_memory_bytes: 256 << 20,
        cache_dir: Some(warren_tests::module_cache_dir()),
    })
    .unwrap();
    let modules = std::thread::scope(|s| {
        let handles: Vec<_> = LANGUAGES
            .iter()
            .map(|&(lang, file)| {
                let runtime = &runtime;
                s.spawn(move || {
                    let bytes = std::fs::read(guest(file)).unwrap();
                    let module = runtime
                        .compile(&bytes)
                        .unwrap_or_else(|e| panic!("{lang}: {file}.wasm is refused: {e}"));
                    (lang, module)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    Setup { runtime, modules }
}

fn env(config: &[(&str, &str)], publish_allow: &[&str]) -> Arc<HandlerEnv> {
    Arc::new(HandlerEnv {
        name: "enrich".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        publish_allow: publish_allow.iter().map(|s| s.to_string()).collect(),
        limits: Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 256 << 20,
            ..Limits::default()
        },
        kv: None,
        http: None,
        metrics: None,
    })
}

/// One language's results, in case order, and the time each message took
/// (fresh instance + `handle` + drop).
struct Run {
    lang: &'static str,
    results: Vec<Result<Completed, RunError>>,
    times: Vec<Duration>,
}

/// Runs every case through every language, one language after the other so
/// that the times logged are not skewed by the others.
fn run_all(setup: &Setup, env: &Arc<HandlerEnv>, cases: &[Case]) -> Vec<Run> {
    let permit = setup.runtime.try_acquire().expect("a free permit");
    // Guests run as futures; a one-thread runtime is all they need here.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    setup
        .modules
        .iter()
        .map(|(lang, module)| {
            let mut results = Vec::with_capacity(cases.len());
            let mut times = Vec::with_capacity(cases.len());
            for case in cases {
                let mut msg = message(case.body.clone());
                msg.routing_key = ROUTING_KEY.into();
                msg.attempt = case.attempt;
                msg.correlation_id = case.correlation_id.clone();
                let started = Instant::now();
                results.push(tokio.block_on(setup.runtime.run(module, env, &msg, &permit)));
                times.push(started.elapsed());
            }
            Run {
                lang,
                results,
                times,
            }
        })
        .collect()
}

/// Checks one case's five results against each other and the expectation.
fn check_case(
    i: usize,
    case: &Case,
    results: &[(&str, &Result<Completed, RunError>)],
    (field, value, exchange, routing_key): (&str, &str, &str, &str),
) {
    let body = String::from_utf8_lossy(&case.body);
    let done: Vec<(&str, &Completed)> = results
        .iter()
        .map(|(lang, r)| match r {
            Ok(c) => (*lang, c),
            Err(e) => panic!("case {i} ({body:?}): {lang} failed to run: {e}"),
        })
        .collect();
    match &case.expect {
        Expect::Object => {
            let want = canonical(&expected_output(case, field, value));
            for (lang, c) in &done {
                assert_eq!(
                    c.outcome,
                    Outcome::Ack,
                    "case {i} ({body:?}): {lang} did not ack"
                );
                assert_eq!(c.publishes.len(), 1, "case {i}: {lang} publishes");
                let out = &c.publishes[0];
                assert_eq!(out.exchange, exchange, "case {i}: {lang} exchange");
                assert_eq!(out.routing_key, routing_key, "case {i}: {lang} routing key");
                assert_eq!(
                    out.content_type.as_deref(),
                    Some("application/json"),
                    "case {i}: {lang} content type"
                );
                assert_eq!(
                    out.correlation_id, case.correlation_id,
                    "case {i}: {lang} correlation id"
                );
                let got: Value = serde_json::from_slice(&out.body).unwrap_or_else(|e| {
                    panic!(
                        "case {i}: {lang} published invalid JSON ({e}): {:?}",
                        String::from_utf8_lossy(&out.body)
                    )
                });
                assert_eq!(
                    canonical(&got),
                    want,
                    "case {i} ({body:?}): {lang} published something else"
                );
            }
        }
        expect => {
            for (lang, c) in &done {
                let Outcome::Reject(reason) = &c.outcome else {
                    panic!(
                        "case {i} ({body:?}): {lang} did not reject: {:?}",
                        c.outcome
                    )
                };
                assert!(c.publishes.is_empty(), "case {i}: {lang} published");
                let why = reason.strip_prefix(NOT_AN_OBJECT).unwrap_or_else(|| {
                    panic!("case {i} ({body:?}): {lang} reason {reason:?} lacks the common start")
                });
                match expect {
                    Expect::NotAnObject(kind) => {
                        assert_eq!(why, format!("it is {kind}"), "case {i} ({body:?}): {lang}")
                    }
                    _ => assert!(
                        why.trim().len() >= 5 && !why.starts_with("it is "),
                        "case {i} ({body:?}): {lang} does not name the parse problem: {reason:?}"
                    ),
                }
            }
        }
    }
}

/// The median and mean of a language's per-message times, for the log.
fn summary(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    format!(
        "median {:.0} us, p99 {:.0} us, mean {:.0} us",
        sorted[sorted.len() / 2].as_secs_f64() * 1e6,
        sorted[sorted.len() * 99 / 100].as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    )
}

#[test]
fn five_languages_agree_on_a_thousand_bodies() {
    let setup = setup();
    let cases = cases();
    assert_eq!(cases.len(), 1000);
    let kinds = |e: fn(&Expect) -> bool| cases.iter().filter(|c| e(&c.expect)).count();
    let objects = kinds(|e| *e == Expect::Object);
    let invalid = kinds(|e| *e == Expect::Invalid);
    eprintln!(
        "{objects} objects, {} other JSON values, {invalid} bodies that are not JSON",
        cases.len() - objects - invalid
    );
    assert!(objects > 500 && invalid > 100);

    let env = env(&[], &[""]);
    let runs = run_all(&setup, &env, &cases);
    for run in &runs {
        eprintln!("enrich {:<6}: {}", run.lang, summary(&run.times));
    }
    let default_key = format!("{ROUTING_KEY}.out");
    for (i, case) in cases.iter().enumerate() {
        let results: Vec<_> = runs.iter().map(|r| (r.lang, &r.results[i])).collect();
        check_case(i, case, &results, ("enriched", "", "", &default_key));
    }
}

/// The config keys change the field, its value and where the result goes;
/// a publish the host refuses becomes a reject with the host's reason, the
/// same in every language. One test, so the modules are compiled once.
#[test]
fn config_is_obeyed_and_a_refused_publish_is_a_reject() {
    let setup = setup();
    let cases: Vec<Case> = cases().into_iter().take(150).collect();
    let value = "polyglot ✓ \"quoted\"\n";
    let custom = env(
        &[
            ("field", "source"),
            ("value", value),
            ("out_exchange", "enriched"),
            ("out_routing_key", "orders.enriched"),
        ],
        &["enriched"],
    );
    let runs = run_all(&setup, &custom, &cases);
    for (i, case) in cases.iter().enumerate() {
        let results: Vec<_> = runs.iter().map(|r| (r.lang, &r.results[i])).collect();
        check_case(
            i,
            case,
            &results,
            ("source", value, "enriched", "orders.enriched"),
        );
    }

    // By default the handler publishes to the default exchange, which this
    // handler may not.
    let refused = env(&[], &["elsewhere"]);
    let object = Case {
        body: br#"{"id":1}"#.to_vec(),
        attempt: 1,
        correlation_id: None,
        expect: Expect::Object,
    };
    for run in run_all(&setup, &refused, &[object]) {
        let lang = run.lang;
        let done = run.results[0].as_ref().unwrap();
        assert_eq!(
            done.outcome,
            Outcome::Reject(
                "cannot publish: handler enrich may not publish to exchange \"\"; \
                 allowed: [\"elsewhere\"]"
                    .into()
            ),
            "{lang}"
        );
        assert!(done.publishes.is_empty(), "{lang}");
    }
}
