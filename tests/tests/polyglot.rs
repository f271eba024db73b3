//! The enrich handler in Rust, Python, JavaScript and C, held to one
//! behaviour: 1,000 deterministic bodies (objects, JSON that is not an object,
//! text that is not JSON at all) through all four components in the real
//! runtime. For each body the four must agree on the outcome, publish the
//! same JSON object (compared after sorting keys recursively) and, on a
//! reject, say why.
//!
//! The components come from `bash guests/build-all.sh`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use warren::runtime::{
    Completed, HandlerEnv, Limits, Module, Outcome, RunError, Runtime, RuntimeConfig,
};
use warren_tests::{guest, message};

/// The four builds of enrich, by language, and their files in guests/build/.
const LANGUAGES: [(&str, &str); 4] = [
    ("rust", "enrich"),
    ("python", "enrich_python"),
    ("js", "enrich_js"),
    ("c", "enrich_c"),
];

const NOT_AN_OBJECT: &str = "body is not a JSON object: ";
const ROUTING_KEY: &str = "orders.created";

/// What the test expects of one body, from the way it was made.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// A JSON object: acked, published with the two fields added.
    Object,
    /// Valid JSON that is not an object: rejected with exactly this reason
    /// after the common start.
    NotAnObject(&'static str),
    /// Not JSON at all: rejected, naming the parse problem.
    Invalid,
}

/// One input: the body, the attempt number and correlation id it is sent
/// with, and what should happen.
#[derive(Debug)]
struct Case {
    body: Vec<u8>,
    attempt: u32,
    correlation_id: Option<String>,
    expect: Expect,
}

/// A small deterministic generator (xorshift64*), so the inputs are the same
/// on every run without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Characters strings are made of: escapes, control characters, multi-byte
/// UTF-8 and a character outside the BMP (a surrogate pair in JavaScript).
const CHARS: &[char] = &[
    'a', 'b', 'z', 'Q', '0', '9', ' ', '-', '_', '.', '"', '\\', '/', '\n', '\t', '\r', '\u{0}',
    '\u{1}', '\u{1f}', '\u{7f}', 'é', 'ß', 'Ω', '中', '\u{2028}', '😀', '🦀',
];

/// Keys include the two the handler sets (it overwrites them) and names
/// that are special somewhere (`__proto__` in JavaScript, integer-like keys
/// that JavaScript orders first).
const KEYS: &[&str] = &[
    "id",
    "name",
    "customer",
    "items",
    "total",
    "note",
    "tags",
    "a",
    "b",
    "",
    "0",
    "17",
    "__proto__",
    "attempt",
    "enriched",
    "ключ",
    "😀",
];

fn string(rng: &mut Rng) -> String {
    let len = rng.below(12);
    (0..len).map(|_| *rng.pick(CHARS)).collect()
}

/// Integers stay within ±(2^53 - 1), where JavaScript numbers are exact.
fn integer(rng: &mut Rng) -> i64 {
    const MAX: i64 = (1 << 53) - 1;
    match rng.below(6) {
        0 => 0,
        1 => *rng.pick(&[MAX, -MAX, 1, -1, i64::from(u32::MAX), 255]),
        2 => rng.below(100) as i64,
        3 => -(rng.below(1_000_000) as i64),
        _ => (rng.next() >> 11) as i64 * if rng.below(2) == 0 { 1 } else { -1 },
    }
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let leaf = depth >= 4 || rng.below(3) != 0;
    match (leaf, rng.below(5)) {
        (true, 0) => Value::Null,
        (true, 1) => Value::Bool(rng.below(2) == 0),
        (true, 2) => Value::from(integer(rng)),
        (true, _) => Value::String(string(rng)),
        (false, 0 | 1) => Value::Array((0..rng.below(5)).map(|_| value(rng, depth + 1)).collect()),
        (false, _) => Value::Object(object(rng, depth + 1)),
    }
}

fn object(rng: &mut Rng, depth: u32) -> Map<String, Value> {
    (0..rng.below(6))
        .map(|_| {
            let key = if rng.below(4) == 0 {
                string(rng)
            } else {
                rng.pick(KEYS).to_string()
            };
            (key, value(rng, depth))
        })
        .collect()
}

/// Serialises `v` compactly or pretty, sometimes with surrounding whitespace.
fn text(rng: &mut Rng, v: &Value) -> Vec<u8> {
    let mut s = if rng.below(3) == 0 {
        serde_json::to_string_pretty(v).unwrap()
    } else {
        serde_json::to_string(v).unwrap()
    };
    if rng.below(5) == 0 {
        s = format!(" \t\r\n{s}\n ");
    }
    s.into_bytes()
}

/// Hand-written bodies for the corners of the grammar.
fn fixed_cases() -> Vec<(Vec<u8>, Expect)> {
    let mut cases: Vec<(Vec<u8>, Expect)> = Vec::new();
    let mut add = |body: &[u8], expect: Expect| cases.push((body.to_vec(), expect));
    // Objects written in ways serde_json itself would not write them.
    add(br#"{}"#, Expect::Object);
    add(br#"{"a":1,"a":2}"#, Expect::Object);
    add(br#"{"a":{"x":1},"b":[],"a":"again"}"#, Expect::Object);
    add(br#"{"k":"\u00e9\ud83d\ude00\u0000\/\b\f"}"#, Expect::Object);
    add(
        br#"{"attempt":"overwritten","enriched":false}"#,
        Expect::Object,
    );
    add(
        br#"{"big":9007199254740991,"neg":-9007199254740991,"zero":0}"#,
        Expect::Object,
    );
    add(
        b"{\"deep\":[[[[[[[[[[{\"x\":[[]]}]]]]]]]]]]}",
        Expect::Object,
    );
    add("{\"raw\":\"é中😀\u{2028}\"}".as_bytes(), Expect::Object);
    // JSON, but not an object.
    for (body, kind) in [
        (&b"[]"[..], "an array"),
        (b"[1,2,{\"a\":3}]", "an array"),
        (b"\"a string\"", "a string"),
        (b"\"\"", "a string"),
        (b"42", "a number"),
        (b"-7", "a number"),
        (b"true", "a boolean"),
        (b"false", "a boolean"),
        (b"null", "null"),
        (b" \n[ ]\t", "an array"),
    ] {
        add(body, Expect::NotAnObject(kind));
    }
    // Not JSON.
    for body in [
        &b""[..],
        b"   ",
        b"not json",
        b"{",
        b"}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"[1,2,]",
        b"{'a':1}",
        b"{a:1}",
        b"{\"a\" 1}",
        b"{1:2}",
        b"{\"a\":NaN}",
        b"{\"a\":Infinity}",
        b"{\"a\":-Infinity}",
        b"{\"a\":01}",
        b"{\"a\":1.}",
        b"{\"a\":.5}",
        b"{\"a\":+1}",
        b"{\"a\":-}",
        b"{\"a\":1} x",
        b"{} {}",
        b"{\"a\":\"\\x\"}",
        b"{\"a\":\"\\u12\"}",
        b"{\"a\":\"line\nbreak\"}",
        b"{\"a\":\"tab\tinside\"}",
        b"{\"a\":\"\xff\"}",
        b"{\"a\":\"\xc0\xaf\"}",
        b"{\"a\":\"\xed\xa0\x80\"}",
        b"{\"a\":\"\xe4\xb8\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\udc00\"}",
        b"{\"a\":\"\\ud800\\u0041\"}",
        b"\xef\xbb\xbf{}",
        b"{\"a\":tru}",
        b"{\"a\":nul}",
        b"\x00",
        b"{\"unterminated",
    ] {
        add(body, Expect::Invalid);
    }
    cases
}

/// The 1,000 inputs: the fixed corners, then generated bodies.
fn cases() -> Vec<Case> {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut bodies = fixed_cases();
    while bodies.len() < 1000 {
        let body = match rng.below(10) {
            // Objects, most of the time.
            0..=5 => {
                let v = Value::Object(object(&mut rng, 0));
                (text(&mut rng, &v), Expect::Object)
            }
            // A larger object, to get past small buffers.
            6 if rng.below(4) == 0 => {
                let items: Vec<Value> = (0..500).map(|_| value(&mut rng, 2)).collect();
                (text(&mut rng, &json!({ "items": items })), Expect::Object)
            }
            // Arrays and other JSON values.
            6 | 7 => {
                let v = value(&mut rng, 0);
                let kind = match v {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Array(_) => "an array",
                    Value::Object(_) => continue,
                };
                (text(&mut rng, &v), Expect::NotAnObject(kind))
            }
            // A cut-off object: its opening brace is never closed.
            8 => {
                let full = serde_json::to_vec(&Value::Object(object(&mut rng, 0))).unwrap();
                let cut = rng.below(full.len() as u64 - 1) as usize;
                (full[..cut].to_vec(), Expect::Invalid)
            }
            // An object with one byte replaced by something that breaks it.
            _ => {
                let mut full = serde_json::to_vec(&json!({ "k": string(&mut rng) })).unwrap();
                let at = rng.below(full.len() as u64) as usize;
                full[at] = *rng.pick(b"\xff\x80{[:,'x\x01");
                let expect = match serde_json::from_slice::<Value>(&full) {
                    Ok(Value::Object(_)) => Expect::Object,
                    Ok(_) => continue,
                    Err(_) => Expect::Invalid,
                };
                (full, expect)
            }
        };
        bodies.push(body);
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (body, expect))| Case {
            body,
            attempt: 1 + (i % 5) as u32,
            correlation_id: (i % 2 == 0).then(|| format!("corr-{i}")),
            expect,
        })
        .collect()
}

/// `v` with every object's keys in sorted order, as compact JSON text.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).unwrap()
}

struct Setup {
    runtime: Runtime,
    modules: Vec<(&'static str, Module)>,
}

/// One runtime and the four modules, each compiled on its own thread (the
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
                results.push(setup.runtime.run(module, env, &msg, &permit));
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

/// What the test itself computes for an object body: the object with the
/// configured field and the attempt set.
fn expected_output(case: &Case, field: &str, value: &str) -> Value {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&case.body) else {
        panic!("case expected to be an object is not: {:?}", case.body)
    };
    object.insert(field.into(), Value::String(value.into()));
    object.insert("attempt".into(), Value::from(case.attempt));
    Value::Object(object)
}

/// Checks one case's four results against each other and the expectation.
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
fn four_languages_agree_on_a_thousand_bodies() {
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
