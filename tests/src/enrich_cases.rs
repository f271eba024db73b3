//! The 1,000 inputs of the `enrich` tests, shared by the runtime-level
//! test (`polyglot.rs`) and the `warren run` one (`polyglot_run.rs`): JSON
//! objects, JSON that is not an object and text that is not JSON, made by a
//! fixed-seed generator, with what `enrich` must do with each.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

pub const NOT_AN_OBJECT: &str = "body is not a JSON object: ";
pub const ROUTING_KEY: &str = "orders.created";

/// What the test expects of one body, from the way it was made.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
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
pub struct Case {
    pub body: Vec<u8>,
    pub attempt: u32,
    pub correlation_id: Option<String>,
    pub expect: Expect,
}

/// A small deterministic generator (xorshift64*), so the inputs are the same
/// on every run without a dependency.
#[derive(Debug)]
pub struct Rng(u64);

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
pub const CHARS: &[char] = &[
    'a', 'b', 'z', 'Q', '0', '9', ' ', '-', '_', '.', '"', '\\', '/', '\n', '\t', '\r', '\u{0}',
    '\u{1}', '\u{1f}', '\u{7f}', 'é', 'ß', 'Ω', '中', '\u{2028}', '😀', '🦀',
];

/// Keys include the two the handler sets (it overwrites them) and names
/// that are special somewhere (`__proto__` in JavaScript, integer-like keys
/// that JavaScript orders first).
pub const KEYS: &[&str] = &[
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

pub fn string(rng: &mut Rng) -> String {
    let len = rng.below(12);
    (0..len).map(|_| *rng.pick(CHARS)).collect()
}

/// Integers stay within ±(2^53 - 1), where JavaScript numbers are exact.
pub fn integer(rng: &mut Rng) -> i64 {
    const MAX: i64 = (1 << 53) - 1;
    match rng.below(6) {
        0 => 0,
        1 => *rng.pick(&[MAX, -MAX, 1, -1, i64::from(u32::MAX), 255]),
        2 => rng.below(100) as i64,
        3 => -(rng.below(1_000_000) as i64),
        _ => (rng.next() >> 11) as i64 * if rng.below(2) == 0 { 1 } else { -1 },
    }
}

pub fn value(rng: &mut Rng, depth: u32) -> Value {
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

pub fn object(rng: &mut Rng, depth: u32) -> Map<String, Value> {
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
pub fn text(rng: &mut Rng, v: &Value) -> Vec<u8> {
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
pub fn fixed_cases() -> Vec<(Vec<u8>, Expect)> {
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
pub fn cases() -> Vec<Case> {
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
pub fn canonical(v: &Value) -> String {
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

/// What the test itself computes for an object body: the object with the
/// configured field and the attempt set.
pub fn expected_output(case: &Case, field: &str, value: &str) -> Value {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&case.body) else {
        panic!("case expected to be an object is not: {:?}", case.body)
    };
    object.insert(field.into(), Value::String(value.into()));
    object.insert("attempt".into(), Value::from(case.attempt));
    Value::Object(object)
}
