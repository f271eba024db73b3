//! `warren test`, the binary, with no broker: the enrich cases (the
//! checked-in ones and the 1,000 inputs of the polyglot tests written as
//! case files) pass in every language; a broken expectation fails with a
//! readable diff and exit status 1; `--update` records what a case did;
//! one message prints its outcome, outputs, log lines and time; and a
//! hostile guest ends with the same classification under `warren test` as
//! under `warren run` with the same config file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use warren_tests::enrich_cases::{Expect, NOT_AN_OBJECT, ROUTING_KEY, cases, expected_output};
use warren_tests::fixture::Fixture;
use warren_tests::{guest, repo_root, warren_bin};

/// The five builds of enrich, by language, and their files in guests/build/.
const LANGUAGES: [(&str, &str); 5] = [
    ("rust", "enrich"),
    ("python", "enrich_python"),
    ("js", "enrich_js"),
    ("c", "enrich_c"),
    ("go", "enrich_go"),
];

/// `warren test ARGS`, with the compiled-module cache in a temporary
/// directory of the tests' own rather than the user's.
fn warren_test(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(warren_bin());
    cmd.arg("test")
        .args(args)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("warren-test-xdg-cache"),
        )
        .env_remove("NO_COLOR")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run warren test");
    if let Some(bytes) = stdin {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `warren test` on every case in `dir`, with the handler settings in
/// `settings`.
fn run_cases(module: &str, dir: &Path, settings: &Path) -> Output {
    warren_test(
        &[
            path_str(&guest(module)),
            "--cases",
            path_str(dir),
            "--config",
            path_str(settings),
        ],
        None,
    )
}

fn enrich_settings() -> PathBuf {
    repo_root().join("guests/cases/enrich.toml")
}

#[test]
fn the_enrich_cases_pass_in_every_language() {
    let cases = repo_root().join("guests/cases/enrich");
    let n = std::fs::read_dir(&cases).unwrap().count();
    for (lang, file) in LANGUAGES {
        let o = run_cases(file, &cases, &enrich_settings());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{lang}: {}", text(&o));
        assert_eq!(out.matches("PASS ").count(), n, "{lang}: {out}");
        assert!(
            out.contains(&format!("ok: {n} cases, {n} passed, 0 failed")),
            "{lang}: {out}"
        );
        // Not a terminal: no colour codes, no progress line.
        assert!(!out.contains('\x1b'), "{lang}: {out:?}");
        assert!(!String::from_utf8_lossy(&o.stderr).contains('\r'), "{lang}");
    }
}

/// The polyglot tests' 1,000 inputs as case files, with the expectation
/// the test computes itself (the reason of a body that is not JSON only
/// by its start: each language names the parse error its own way).
fn write_thousand_cases(dir: &Path) {
    for (i, case) in cases().iter().enumerate() {
        let mut input = toml::Table::new();
        match std::str::from_utf8(&case.body) {
            Ok(t) => input.insert("body".into(), t.into()),
            Err(_) => input.insert("body_hex".into(), hex::encode(&case.body).into()),
        };
        input.insert("routing_key".into(), ROUTING_KEY.into());
        input.insert("attempt".into(), i64::from(case.attempt).into());
        if let Some(c) = &case.correlation_id {
            input.insert("correlation_id".into(), c.as_str().into());
        }
        let mut expect = toml::Table::new();
        match &case.expect {
            Expect::Object => {
                expect.insert("outcome".into(), "ack".into());
                let mut out = toml::Table::new();
                out.insert("routing_key".into(), format!("{ROUTING_KEY}.out").into());
                out.insert("content_type".into(), "application/json".into());
                if let Some(c) = &case.correlation_id {
                    out.insert("correlation_id".into(), c.as_str().into());
                }
                let want: Value = expected_output(case, "enriched_by", "warren");
                out.insert("body_json".into(), want.to_string().into());
                expect.insert("publish".into(), vec![toml::Value::Table(out)].into());
            }
            Expect::NotAnObject(kind) => {
                expect.insert("outcome".into(), "reject".into());
                expect.insert(
                    "reason".into(),
                    format!("{NOT_AN_OBJECT}it is {kind}").into(),
                );
            }
            Expect::Invalid => {
                expect.insert("outcome".into(), "reject".into());
                expect.insert("reason_starts_with".into(), NOT_AN_OBJECT.into());
            }
        }
        let mut file = toml::Table::new();
        file.insert("input".into(), input.into());
        file.insert("expect".into(), expect.into());
        std::fs::write(
            dir.join(format!("case-{i:04}.toml")),
            toml::to_string(&file).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn the_thousand_polyglot_inputs_as_case_files_pass_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    write_thousand_cases(dir.path());
    for (lang, file) in LANGUAGES {
        let o = run_cases(file, dir.path(), &enrich_settings());
        let out = String::from_utf8_lossy(&o.stdout);
        let failures: Vec<&str> = out.lines().filter(|l| !l.starts_with("PASS ")).collect();
        assert!(
            o.status.success(),
            "{lang}: {}\n{}",
            failures.join("\n"),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains("ok: 1000 cases, 1000 passed, 0 failed"),
            "{lang}: {}",
            failures.join("\n")
        );
    }
}

#[test]
fn a_broken_expectation_fails_with_a_readable_diff_and_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let src = repo_root().join("guests/cases/enrich");
    for name in ["object.toml", "array.toml"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    // The object's expected attempt and the array's reason, both wrong.
    let object = dir.path().join("object.toml");
    let text_before = std::fs::read_to_string(&object).unwrap();
    let broken = text_before.replace("\"attempt\": 2}'", "\"attempt\": 3}'");
    assert_ne!(broken, text_before);
    std::fs::write(&object, broken).unwrap();
    let array = dir.path().join("array.toml");
    let broken = std::fs::read_to_string(&array)
        .unwrap()
        .replace("it is an array", "it is a list");
    std::fs::write(&array, broken).unwrap();

    let o = run_cases("enrich", dir.path(), &enrich_settings());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // The JSON body as a diff of pretty, key-sorted values: the wrong
    // field and nothing else is marked.
    assert!(out.contains("FAIL object "), "{out}");
    assert!(
        out.contains("publish[0].body_json: - expected / + got"),
        "{out}"
    );
    assert!(
        out.contains("      -   \"attempt\": 3,\n      +   \"attempt\": 2,\n"),
        "{out}"
    );
    assert!(
        out.contains("          \"enriched_by\": \"warren\",\n"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("      -")).count(),
        2,
        "{out}"
    );
    // A one-line value on two lines.
    assert!(
        out.contains(
            "FAIL array "
        ) && out.contains(
            "    reason:\n      - expected: body is not a JSON object: it is a list\n      + got:      body is not a JSON object: it is an array\n"
        ),
        "{out}"
    );
    assert!(out.contains("FAILED: 2 cases, 0 passed, 2 failed"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("error: 2 of 2 cases failed"),
        "{}",
        text(&o)
    );
}

#[test]
fn update_records_what_a_case_did_and_keeps_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("new.toml");
    let input = "# written by hand\n[input]\nrouting_key = \"a.b\"\nbody = '{\"x\": null}'\n";
    std::fs::write(&case, input).unwrap();
    let (module, settings) = (guest("enrich"), enrich_settings());
    let args = [
        path_str(&module),
        "--cases",
        path_str(dir.path()),
        "--config",
        path_str(&settings),
    ];

    // No expectation: a failure that says how to record one.
    let o = warren_test(&args, None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("FAIL new ")
            && String::from_utf8_lossy(&o.stdout).contains("run with --update"),
        "{}",
        text(&o)
    );

    let mut update = args.to_vec();
    update.push("--update");
    let o = warren_test(&update, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("UPDATED new "),
        "{}",
        text(&o)
    );
    let written = std::fs::read_to_string(&case).unwrap();
    assert!(written.starts_with(input.trim_end()), "{written}");
    assert!(
        written.contains("[expect]\noutcome = \"ack\"\n"),
        "{written}"
    );
    assert!(written.contains("routing_key = \"a.b.out\""), "{written}");
    assert!(
        written.contains(r#"body_json = '{"attempt":1,"enriched_by":"warren","x":null}'"#)
            || written.contains(r#"body_json = '{"x":null,"enriched_by":"warren","attempt":1}'"#),
        "{written}"
    );

    // And it now passes as written.
    let o = warren_test(&args, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("PASS new "),
        "{}",
        text(&o)
    );
}

#[test]
fn one_message_prints_the_outcome_outputs_logs_and_time() {
    let o = warren_test(
        &[
            path_str(&guest("enrich")),
            "--body",
            "-",
            "--header",
            "tenant=acme",
            "--routing-key",
            "orders.created",
            "--config",
            path_str(&enrich_settings()),
        ],
        Some(br#"{"id": 7}"#),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "outcome:  ack\n",
        "outputs:  1 (sent on ack)\n",
        "  [0] exchange:    \"\"\n",
        "      routing key: \"orders.created.out\"\n",
        "      content-type: \"application/json\"\n",
        "      body (43 bytes): {\"attempt\":1,\"enriched_by\":\"warren\",\"id\":7}\n",
        "logs:     none\n",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("time:     ") && l.ends_with(" ms (instantiate and handle)")),
        "{out}"
    );

    // The sandbox guest's log flood: its lines, and what the caps dropped.
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, "logspam").unwrap();
    let o = warren_test(
        &[path_str(&guest("sandbox")), "--body", path_str(&body)],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("outcome:  ack\n"), "{out}");
    assert!(out.contains("logs:\n  info: "), "{out}");
    assert!(out.contains("\n  stdout: "), "{out}");
    assert!(out.contains("dropped:  "), "{out}");
}

/// A body over the handler's limit ends under `warren test` as under
/// `warren run`: no guest runs, the outcome is `body-too-large` with the
/// reason `warren run` dead-letters it with, and the exit status is 1; a
/// body at the limit is handled; a case file can expect the refusal.
#[test]
fn a_body_over_the_handlers_limit_ends_as_warren_run_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.toml");
    std::fs::write(
        &settings,
        "max_message_bytes = 64\n[config]\nfield = \"enriched_by\"\nvalue = \"warren\"\n",
    )
    .unwrap();
    // `{"pad":""}` is 10 bytes.
    let body = |len: usize| format!("{{\"pad\":\"{}\"}}", "x".repeat(len - 10));
    let run = |b: &str| {
        warren_test(
            &[
                path_str(&guest("enrich")),
                "--body",
                "-",
                "--config",
                path_str(&settings),
            ],
            Some(b.as_bytes()),
        )
    };

    let o = run(&body(64));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("outcome:  ack\n"),
        "{}",
        text(&o)
    );

    let o = run(&body(65));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "outcome:  body-too-large (message body is 65 bytes; handler ",
        " takes at most 64 (max_message_bytes, and the guest's memory_mb))\n",
        "warren run dead-letters it at once, before any guest runs",
        "outputs:",
        "logs:     none\n",
    ] {
        if want == "outputs:" {
            assert!(!out.contains(want), "a refused body has no outputs:\n{out}");
        } else {
            assert!(out.contains(want), "{want:?} not in:\n{out}");
        }
    }

    let cases = dir.path().join("cases");
    std::fs::create_dir(&cases).unwrap();
    std::fs::write(
        cases.join("over.toml"),
        format!(
            "[input]\nbody = {:?}\n\n[expect]\noutcome = \"body-too-large\"\nreason_starts_with = \"message body is 65 bytes; handler \"\n",
            body(65)
        ),
    )
    .unwrap();
    let o = run_cases("enrich", &cases, &settings);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("PASS over"),
        "{}",
        text(&o)
    );
}

/// A header nested deeper than `warren run` hands to a guest ends under
/// `warren test` as live: `invalid-headers` with the host's reason, no
/// guest run; 32 levels are handled.
#[test]
fn a_header_nested_too_deep_ends_as_warren_run_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let case = |depth: usize, expect: &str| {
        format!(
            "[input]\nbody = \"{{}}\"\n\n[input.headers]\ndeep = {}\n\n[expect]\n{expect}\n",
            nested(depth)
        )
    };
    std::fs::write(
        dir.path().join("at-the-limit.toml"),
        case(32, "outcome = \"ack\"\n\n[[expect.publish]]\nexchange = \"\"\nrouting_key = \"test.out\"\ncontent_type = \"application/json\"\nbody_json = '{\"attempt\": 1, \"enriched_by\": \"warren\"}'"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("too-deep.toml"),
        case(
            33,
            "outcome = \"invalid-headers\"\nreason = 'header \"deep\" nests 33 levels deep; at most 32 are accepted'",
        ),
    )
    .unwrap();
    let o = run_cases("enrich", dir.path(), &enrich_settings());
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("PASS at-the-limit"), "{}", text(&o));
    assert!(out.contains("PASS too-deep"), "{}", text(&o));
}

/// The sandbox guest's misbehaviours, the error kind `warren run` files each
/// under, and what `warren test` prints for it.
const HOSTILE: [(&str, &str, &str); 4] = [
    (
        "loop",
        "timeout",
        "handler exceeded its time limit of 500 ms",
    ),
    ("oom", "memory", "handler exceeded its memory cap of 16 MiB"),
    ("recurse", "stack-overflow", "handler overflowed its stack"),
    ("panic", "trap", "handler trapped: "),
];

#[tokio::test(flavor = "multi_thread")]
async fn hostile_guests_end_as_warren_run_classifies_them() {
    let f = Fixture::new("authors-hostile")
        .guest("sandbox")
        .handler("hostile")
        .extra("timeout_ms = 500\nmemory_mb = 16\n[handler.retry]\nmax_attempts = 1\n")
        .start()
        .await;
    // warren run: each one dead-lettered, with its kind.
    for (body, _, _) in HOSTILE {
        f.rabbit.publish(&f.queue, body, body.as_bytes()).await;
    }
    let dead = f
        .rabbit
        .collect(&f.dead, HOSTILE.len(), Duration::from_secs(60))
        .await;
    f.settle(HOSTILE.len() as u64, Duration::from_secs(30))
        .await;

    // warren test with the very config file the host runs.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warren.toml");
    std::fs::write(&config, f.config(f.port())).unwrap();
    let cases = dir.path().join("cases");
    std::fs::create_dir(&cases).unwrap();
    for (body, kind, reason) in HOSTILE {
        let under_run = dead
            .iter()
            .find(|d| d.message_id.as_deref() == Some(body))
            .unwrap_or_else(|| panic!("{body} was not dead-lettered"));
        assert_eq!(
            under_run.header("x-warren-error-kind").as_deref(),
            Some(kind),
            "{body}"
        );

        let body_file = dir.path().join(body);
        std::fs::write(&body_file, body).unwrap();
        let o = warren_test(
            &[
                path_str(&guest("sandbox")),
                "--body",
                path_str(&body_file),
                "--config",
                path_str(&config),
            ],
            None,
        );
        assert_eq!(o.status.code(), Some(1), "{body}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("outcome:  {kind} ({reason}")),
            "{body}: {}",
            text(&o)
        );
        // And as a case, the same.
        std::fs::write(
            cases.join(format!("{body}.toml")),
            format!(
                "[input]\nbody = \"{body}\"\n[expect]\noutcome = \"{kind}\"\nreason_starts_with = \"{reason}\"\n"
            ),
        )
        .unwrap();
    }
    let o = warren_test(
        &[
            path_str(&guest("sandbox")),
            "--cases",
            path_str(&cases),
            "--config",
            path_str(&config),
            "--handler",
            "hostile",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok: 4 cases, 4 passed, 0 failed"),
        "{}",
        text(&o)
    );
}

#[test]
fn case_files_that_cannot_run_fail_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("typo.toml"), "[input]\nbodi = \"x\"\n").unwrap();
    std::fs::write(
        dir.path().join("http.toml"),
        "[input]\nbody = \"{}\"\n[[http]]\nurl = \"http://example.test/\"\nverb = \"GET\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("kv.toml"),
        "[input]\nbody = \"{}\"\n[kv]\ngone = false\n",
    )
    .unwrap();
    let o = warren_test(
        &[path_str(&guest("enrich")), "--cases", path_str(dir.path())],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FAIL typo: ") && out.contains("typo.toml") && out.contains("bodi"),
        "{out}"
    );
    assert!(
        out.contains("FAIL http: ") && out.contains("http.toml") && out.contains("verb"),
        "{out}"
    );
    assert!(
        out.contains("FAIL kv: ") && out.contains("kv.toml") && out.contains("kv.\"gone\""),
        "{out}"
    );

    // An unknown handler in a host config names the ones there are.
    let cfg = dir.path().join("warren.toml");
    std::fs::write(
        &cfg,
        "[[handler]]\nname = \"a\"\nqueue = \"qa\"\nmodule = \"a.wasm\"\n",
    )
    .unwrap();
    let o = warren_test(
        &[
            path_str(&guest("enrich")),
            "--cases",
            path_str(dir.path()),
            "--config",
            path_str(&cfg),
            "--handler",
            "b",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no handler named \"b\"; the file has a"),
        "{}",
        text(&o)
    );
}

/// The fetcher's settings: HTTP to `prices.test` only, a short request
/// time-out and a small response cap.
fn fetcher_settings(dir: &Path) -> PathBuf {
    let path = dir.join("fetcher.toml");
    std::fs::write(
        &path,
        "timeout_ms = 5000\n[http]\nallow = [\"http://prices.test\"]\ntimeout_ms = 300\nmax_response_bytes = 100\n",
    )
    .unwrap();
    path
}

/// `[[http]]`: a case's requests are answered from the file (never sent:
/// `prices.test` does not exist), in the handler's sandbox with its grant;
/// a request the case does not list fails the case naming the URL, and so
/// does a listed one that is not made; `--update` records the rest and
/// keeps the answers, wherever in the file they are.
#[test]
fn http_requests_are_answered_from_the_case_file() {
    let dir = tempfile::tempdir().unwrap();
    let settings = fetcher_settings(dir.path());
    let cases = dir.path().join("cases");
    std::fs::create_dir(&cases).unwrap();
    let case = |name: &str, text: &str| std::fs::write(cases.join(name), text).unwrap();
    // Two requests, the second with a body; the answers come after an
    // [expect] table that --update replaces.
    case(
        "a-answered.toml",
        &(r#"[input]
body = """get http://prices.test/price/a
post http://PRICES.test:80/log hello
get http://prices.test/big
get http://prices.test/slow"""

[expect]
outcome = "reject"

[[http]]
url = "http://prices.test/price/a"
[http.response]
body_json = '{"price_cents": 250}'

[[http]]
method = "POST"
url = "http://prices.test/log"
body = "hello"
[http.response]
status = 201
body = "logged"

[[http]]
url = "http://prices.test/big"
[http.response]
body = "BIG"

[[http]]
url = "http://prices.test/slow"
error = "timeout"
"#
        .replace("BIG", &"x".repeat(300))),
    );
    case(
        "b-unexpected.toml",
        "[input]\nbody = \"get http://prices.test/other?q=1\"\n",
    );
    case(
        "c-unused.toml",
        "[input]\nbody = \"\"\n[[http]]\nurl = \"http://prices.test/never\"\n",
    );
    // Outside the grant: refused before any answer is looked at, as on a
    // host; the listed answer is then unused.
    case(
        "d-not-allowed.toml",
        "[input]\nbody = \"get http://elsewhere.test/\"\n[[http]]\nurl = \"http://elsewhere.test/\"\n",
    );
    let fetcher = guest("fetcher");
    let args = [
        path_str(&fetcher),
        "--cases",
        path_str(&cases),
        "--config",
        path_str(&settings),
    ];
    let o = warren_test(&[&args[..], &["--update"]].concat(), None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("UPDATED a-answered"), "{out}");
    assert!(
        out.contains("FAIL b-unexpected")
            && out.contains("unexpected request GET http://prices.test/other?q=1"),
        "{out}"
    );
    assert!(
        out.contains("FAIL c-unused") && out.contains("a request GET http://prices.test/never"),
        "{out}"
    );
    assert!(
        out.contains("FAIL d-not-allowed") && out.contains("a request GET http://elsewhere.test/"),
        "{out}"
    );
    let written = std::fs::read_to_string(cases.join("a-answered.toml")).unwrap();
    let parsed: toml::Table = toml::from_str(&written).unwrap();
    assert_eq!(parsed["http"].as_array().unwrap().len(), 4, "{written}");
    let expect = &parsed["expect"];
    assert_eq!(expect["outcome"].as_str(), Some("ack"), "{written}");
    let transcript = expect["publish"][0]["body"].as_str().unwrap();
    let lines: Vec<&str> = transcript.lines().collect();
    assert_eq!(
        lines[0], r#"status=200 body={"price_cents":250}"#,
        "{written}"
    );
    assert_eq!(lines[1], "status=201 body=logged", "{written}");
    // Cut off at max_response_bytes with the error a server's body gets,
    // and a read time-out for the answer that never comes.
    assert!(
        lines[2].starts_with("err=") && lines[2].contains("exceeds limit: 100 bytes"),
        "{written}"
    );
    assert!(
        lines[3].starts_with("err=") && lines[3].contains("ConnectionReadTimeout"),
        "{written}"
    );

    // The recorded expectation passes; the others still fail.
    let o = warren_test(&args, None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("PASS a-answered"), "{out}");
    assert!(out.contains("FAILED: 4 cases, 1 passed, 3 failed"), "{out}");
}

/// `[kv]` and `[expect.kv]`: a case starts the handler's namespace with
/// values, the handler reads them and its own writes, and what an ack
/// commits is compared key by key; a retry commits nothing; a call the
/// store refuses is the guest's error and writes nothing.
#[test]
fn the_key_value_store_starts_from_the_case_and_its_writes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let case = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    case(
        "a-counts.toml",
        r#"[input]
body = """inc total:acme 5
get last
set last order-7
get last
del stale
list total:"""

[kv]
"total:acme" = 10
"total:zed" = "1"
stale = { hex = "00ff" }

[expect]
outcome = "ack"

[[expect.publish]]
routing_key = "test.out"
correlation_id = "a-counts"
body = """total:acme+5=15
last=nil
set
last=order-7
del
list=total:acme,total:zed"""

[expect.kv]
"total:acme" = 15
last = "order-7"
stale = false
"#,
    );
    case(
        "b-retry-writes-nothing.toml",
        "[input]\nbody = \"inc n 1\\nquiet\\nretry\"\n[expect]\noutcome = \"retry\"\nreason = \"asked to\"\n",
    );
    case(
        "c-wrong.toml",
        "[input]\nbody = \"inc n 2\\nquiet\"\n[kv]\nn = 1\n[expect]\noutcome = \"ack\"\n[expect.kv]\nn = 4\nother = 1\n",
    );
    case(
        "d-not-a-counter.toml",
        "[input]\nbody = \"inc n 2\\nquiet\"\n[kv]\nn = \"abc\"\n[expect]\noutcome = \"ack\"\n",
    );
    let o = warren_test(
        &[path_str(&guest("counter")), "--cases", path_str(dir.path())],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("PASS a-counts"), "{out}");
    assert!(out.contains("PASS b-retry-writes-nothing"), "{out}");
    assert!(
        out.contains("FAIL c-wrong")
            && out.contains(r#"kv["n"]"#)
            && out.contains(r#"kv["other"]"#)
            && out.contains("(not written)"),
        "{out}"
    );
    // Not a counter: the guest's increment call fails at once (the guest
    // gets the error, as on a host), so nothing is buffered or written.
    assert!(out.contains("PASS d-not-a-counter"), "{out}");

    // One message: the writes and what they commit to are printed.
    let o = warren_test(
        &[path_str(&guest("counter")), "--body", "-"],
        Some(b"inc hits 3\nset who me\nquiet"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("kv:       2 writes, committed with the done-marker:")
            && out.contains(r#""hits" = 3"#)
            && out.contains(r#""who" = "me""#),
        "{out}"
    );
}
