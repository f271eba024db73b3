//! Hot deploys against a running `warren run`: swaps under load, refusals,
//! rollback, the compile cache, and deploy-on-file-change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use warren::runtime::Digest;
use warren_tests::broker::{Rabbit, connections, consumer_tags};
use warren_tests::fixture::Fixture;
use warren_tests::guest;
use warren_tests::process::{Warren, admin_cli};

fn deploy(port: u16, handler: &str, module: &Path) -> Output {
    let module = module.to_str().unwrap();
    admin_cli(port, &["deploy", "--handler", handler, module])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn live_digest(w: &Warren) -> String {
    let (_, body) = w.admin_get("/handlers");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v[0]["live"]["digest"].as_str().unwrap().to_string()
}

fn digest_of(path: &Path) -> String {
    Digest::of(&std::fs::read(path).unwrap()).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_deploys_under_load_lose_and_repeat_nothing_and_keep_the_connection() {
    let f = Fixture::new("hot")
        .guest("stamp_a")
        .handler("stamp")
        .extra("consumers = 16\nprefetch = 128\n")
        .start()
        .await;
    let (r, q, out, port) = (&f.rabbit, &f.queue, &f.out, f.port());
    let me = format!("pid {}", f.w().pid());
    let conn_before = connections(&me);
    let tags_before = consumer_tags(q);
    assert_eq!(conn_before.len(), 1);
    assert_eq!(tags_before.len(), 1);

    // 2,000 messages a second for 20 seconds, from a task of its own.
    let target = q.clone();
    let load = tokio::spawn(async move {
        let r = Rabbit::connect().await;
        let started = Instant::now();
        let mut sent = 0usize;
        for tick in 0..200u32 {
            let due = started + Duration::from_millis(100) * tick;
            tokio::time::sleep_until(due.into()).await;
            let batch: Vec<_> = (sent..sent + 200)
                .map(|i| (Some(format!("h-{i}")), format!("h-{i}").into_bytes()))
                .collect();
            r.publish_many(&target, batch).await;
            sent += 200;
        }
        sent
    });

    // 20 deploys alternating two versions, one every ~900 ms.
    let (a, b) = (guest("stamp_a"), guest("stamp_b"));
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let module = if i % 2 == 0 { &b } else { &a };
        let o = deploy(port, "stamp", module);
        assert!(o.status.success(), "deploy {i}: {}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("new:     {}", digest_of(module))),
            "{}",
            stdout(&o)
        );
    }
    let sent = load.await.unwrap();
    assert_eq!(sent, 40_000);

    let mut got = r.collect(out, sent, Duration::from_secs(180)).await;
    f.settle(sent as u64, Duration::from_secs(30)).await;
    got.extend(r.drain(out).await);
    let mut per_input: BTreeMap<String, usize> = BTreeMap::new();
    let mut versions = BTreeSet::new();
    for g in &got {
        let body = g.body_str();
        let (version, input) = body.split_once(' ').unwrap();
        assert!(version == "v-a" || version == "v-b", "{body}");
        versions.insert(version.to_string());
        *per_input.entry(input.to_string()).or_default() += 1;
    }
    assert_eq!(per_input.len(), sent, "inputs missing from the output");
    assert!(
        per_input.values().all(|&n| n == 1),
        "an input came out twice"
    );
    assert_eq!(versions.len(), 2, "only {versions:?} handled messages");
    assert_eq!(f.w().logs().matches("module deployed").count(), 20);

    // The same connection (by broker pid and name) and the same consumer.
    assert_eq!(connections(&me), conn_before);
    assert_eq!(consumer_tags(q), tags_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_modules_are_refused_and_the_old_version_keeps_serving() {
    // The smoke message is a panic for the sandbox guest; echo just echoes.
    let f = Fixture::new("refuse")
        .handler("h")
        .extra("smoke_body = \"panic\"\n")
        .start()
        .await;
    let (r, q, port, w) = (&f.rabbit, &f.queue, f.port(), f.w());
    let echo = digest_of(&guest("echo"));

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not a module").unwrap();
    let cases = [
        (
            text.clone(),
            "not a WebAssembly file (no \\0asm header)".to_string(),
        ),
        (
            guest("other_world"),
            "does not export a function `handle`".to_string(),
        ),
        (
            guest("sandbox"),
            "smoke test failed: handler trapped".to_string(),
        ),
    ];
    for (module, reason) in &cases {
        let o = deploy(port, "h", module);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{} was accepted: {}",
            module.display(),
            stdout(&o)
        );
        let err = stderr(&o);
        assert!(err.starts_with("error: deploy of "), "{err}");
        assert!(
            err.contains("handler \"h\": module refused: ") && err.contains(reason.as_str()),
            "{err}"
        );
        assert_eq!(live_digest(w), echo);
    }
    let o = deploy(port, "nope", &guest("echo"));
    assert!(
        stderr(&o).contains("no handler named \"nope\""),
        "{}",
        stderr(&o)
    );

    // Still serving, on the old version, with nothing failed.
    r.publish_many(
        q,
        (0..100).map(|i| (Some(format!("r-{i}")), format!("r-{i}").into_bytes())),
    )
    .await;
    let got = r.collect(&f.out, 100, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter()
            .map(|g| g.body_str())
            .collect::<BTreeSet<_>>()
            .len(),
        100
    );
    f.settle(100, Duration::from_secs(10)).await;
    f.assert_nothing_more().await;
    assert_eq!(w.metric("warren_deploys_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_previous_digest_and_known_digests_skip_compiling() {
    let f = Fixture::new("rollback")
        .guest("stamp_a")
        .handler("stamp")
        .start()
        .await;
    let (r, q, out, port, w) = (&f.rabbit, &f.queue, &f.out, f.port(), f.w());
    let (a, b) = (digest_of(&guest("stamp_a")), digest_of(&guest("stamp_b")));

    let o = admin_cli(port, &["rollback", "--handler", "stamp"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no previous version to roll back to"),
        "{}",
        stderr(&o)
    );

    let o = deploy(port, "stamp", &guest("stamp_b"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(live_digest(w), b);
    r.publish(q, "1", b"one").await;
    assert_eq!(
        r.collect(out, 1, Duration::from_secs(20)).await[0].body_str(),
        "v-b one"
    );

    let o = admin_cli(port, &["rollback", "--handler", "stamp"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("old:     {b}"))
            && stdout(&o).contains(&format!("new:     {a}")),
        "{}",
        stdout(&o)
    );
    assert_eq!(live_digest(w), a);
    r.publish(q, "2", b"two").await;
    assert_eq!(
        r.collect(out, 1, Duration::from_secs(20)).await[0].body_str(),
        "v-a two"
    );

    // Both digests are known now: deploying either is a swap, no compile.
    let o = deploy(port, "stamp", &guest("stamp_b"));
    assert!(
        stdout(&o).contains("compile: 0.0 ms (memory)"),
        "{}",
        stdout(&o)
    );
    let o = deploy(port, "stamp", &guest("stamp_b"));
    assert!(
        stdout(&o).contains("is already live; nothing changed"),
        "{}",
        stdout(&o)
    );

    let status = admin_cli(port, &["status"]);
    let text = stdout(&status);
    assert!(text.starts_with("HANDLER"), "{text}");
    assert!(text.contains(&b[..19]) && text.contains(&a[..19]), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_and_a_deploy_of_a_cached_module_skip_cranelift() {
    let cache = tempfile::tempdir().unwrap();
    let mut f = Fixture::new("cache")
        .guest("stamp_a")
        .handler("stamp")
        .section(&format!(
            "[runtime]\ncache_dir = \"{}\"\n",
            cache.path().display()
        ))
        .start()
        .await;

    let port = f.port();
    let first = f.w_mut();
    assert!(
        first.logs().contains("compiled_by=\"cranelift\""),
        "{}",
        first.logs()
    );
    let o = deploy(port, "stamp", &guest("stamp_b"));
    assert!(stdout(&o).contains("(cranelift)"), "{}", stdout(&o));
    first.signal("TERM");
    assert!(first.wait(Duration::from_secs(30)).success());

    let second = f.launch();
    let port = second.admin.unwrap();
    assert!(
        second.logs().contains("compiled_by=\"disk-cache\""),
        "{}",
        second.logs()
    );
    let o = deploy(port, "stamp", &guest("stamp_b"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(disk-cache)"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_a_new_module_file_deploys_it() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("handler.wasm");
    std::fs::copy(guest("stamp_a"), &module).unwrap();
    let mut f = Fixture::new("watch")
        .module(module.clone())
        .handler("stamp")
        .start()
        .await;

    // An atomic replace: write next to it, then rename over it.
    let tmp = dir.path().join(".handler.wasm.tmp");
    std::fs::copy(guest("stamp_b"), &tmp).unwrap();
    std::fs::rename(&tmp, &module).unwrap();
    f.w_mut()
        .wait_log("module deployed", Duration::from_secs(10));
    assert_eq!(live_digest(f.w()), digest_of(&guest("stamp_b")));
    f.rabbit.publish(&f.queue, "w", b"after").await;
    assert_eq!(
        f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await[0].body_str(),
        "v-b after"
    );

    // A broken file there is refused, and the live version stays.
    std::fs::write(&tmp, "garbage").unwrap();
    std::fs::rename(&tmp, &module).unwrap();
    f.w_mut()
        .wait_log("changed module file refused", Duration::from_secs(10));
    assert_eq!(live_digest(f.w()), digest_of(&guest("stamp_b")));
}
