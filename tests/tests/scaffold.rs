//! From nothing to deployed, for each language, with the `warren` binary
//! and five commands: `warren new LANG NAME`, `bash build.sh` (which
//! installs its pinned toolchain if missing), `warren test NAME.wasm
//! --cases cases --config handler.toml` (the cases the template ships
//! pass), `warren check NAME.wasm` and `warren deploy --handler NAME
//! NAME.wasm` to a host already running another version, which then
//! handles a message with the new one.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use warren::runtime::Digest;
use warren_tests::fixture::Fixture;
use warren_tests::process::admin_cli;
use warren_tests::warren_bin;

/// Runs `cmd` to the end and fails the test, with its output, unless it
/// succeeded.
fn ok(step: &str, cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{step}: cannot run: {e}"));
    assert!(
        o.status.success(),
        "{step} failed ({})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn five_commands_to_a_deployed_handler(lang: &str) {
    let name = format!("hello-{lang}");
    // A host already serving the handler, on another version (stamp_a
    // publishes "v-a <body>"); the project's handler.toml says the same
    // as this [[handler]] table: the default limits and grants.
    let f = Fixture::new(&format!("five-{lang}"))
        .guest("stamp_a")
        .handler(&name)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join(&name);
    let wasm = format!("{name}.wasm");

    // 1. warren new
    let o = ok(
        "warren new",
        Command::new(warren_bin())
            .args(["new", lang, &name])
            .current_dir(dir.path()),
    );
    assert!(
        stdout(&o).contains(&format!("warren test {wasm} --cases cases")),
        "{}",
        stdout(&o)
    );
    // 2. its build
    ok(
        "bash build.sh",
        Command::new("bash").arg("build.sh").current_dir(&project),
    );
    // 3. warren test: the shipped cases pass.
    let o = ok(
        "warren test",
        Command::new(warren_bin())
            .args([
                "test",
                &wasm,
                "--cases",
                "cases",
                "--config",
                "handler.toml",
            ])
            .env(
                "XDG_CACHE_HOME",
                std::env::temp_dir().join("warren-test-xdg-cache"),
            )
            .current_dir(&project),
    );
    // Go's template has no tenant lookup, so no lookup case.
    let cases = if lang == "go" { 3 } else { 4 };
    assert!(
        stdout(&o).contains(&format!("ok: {cases} cases, {cases} passed, 0 failed")),
        "{}",
        stdout(&o)
    );
    // 4. warren check
    let o = ok(
        "warren check",
        Command::new(warren_bin())
            .args(["check", &wasm])
            .current_dir(&project),
    );
    assert!(
        stdout(&o).contains("world:   warren:handler/handler@0.2.0 (ok)"),
        "{}",
        stdout(&o)
    );
    // 5. warren deploy, to the running host.
    let module = project.join(&wasm);
    let o = admin_cli(
        f.port(),
        &["deploy", "--handler", &name, module.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "warren deploy failed:\n{}\n{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let digest = Digest::of(&std::fs::read(&module).unwrap()).to_string();
    assert!(stdout(&o).contains(&digest), "{}", stdout(&o));

    // A message now runs on the deployed version: JSON with handled_by and
    // the count the key-value store keeps, not the old version's stamp; the
    // second message sees the first one's committed count. The host's
    // [[handler]] table sets no lookup_url (and the messages carry no
    // tenant header), so the template makes no HTTP request here. An output
    // goes out before its message's writes are committed with the
    // done-marker (docs/semantics.md), so the second message is sent only
    // once the first is settled.
    for (settled, (id, seen)) in [(1, 1), (3, 2)].into_iter().enumerate() {
        let body = format!(r#"{{"id": {id}}}"#);
        f.rabbit
            .publish(&f.queue, &format!("m-{id}"), body.as_bytes())
            .await;
        let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(60)).await;
        let body: Value = serde_json::from_slice(&got[0].body)
            .unwrap_or_else(|e| panic!("{lang}: not JSON ({e}): {:?}", got[0].body_str()));
        assert_eq!(
            body,
            json!({"id": id, "handled_by": name, "seen": seen}),
            "{lang}"
        );
        f.settle(settled as u64 + 1, Duration::from_secs(30)).await;
    }
    // And one the template refuses lands in the dead-letter queue.
    f.rabbit.publish(&f.queue, "m-2", b"not json").await;
    let dead = f.rabbit.collect(&f.dead, 1, Duration::from_secs(60)).await;
    assert!(
        dead[0]
            .header("x-warren-reason")
            .is_some_and(|r| r.starts_with("body is not a JSON object: ")),
        "{lang}: {:?}",
        dead[0].header("x-warren-reason")
    );
    f.settle(3, Duration::from_secs(30)).await;
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_from_nothing_to_deployed_in_five_commands() {
    five_commands_to_a_deployed_handler("rust").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_from_nothing_to_deployed_in_five_commands() {
    five_commands_to_a_deployed_handler("python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn js_from_nothing_to_deployed_in_five_commands() {
    five_commands_to_a_deployed_handler("js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c_from_nothing_to_deployed_in_five_commands() {
    five_commands_to_a_deployed_handler("c").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn go_from_nothing_to_deployed_in_five_commands() {
    five_commands_to_a_deployed_handler("go").await;
}

/// The README of every project names the five commands.
#[test]
fn every_readme_names_the_five_commands() {
    for lang in warren::scaffold::LANGUAGES {
        let dir = tempfile::tempdir().unwrap();
        let files = warren::scaffold::scaffold(lang, "x-y", &dir.path().join("p")).unwrap();
        let readme = files.iter().find(|f| f.ends_with("README.md")).unwrap();
        let text = std::fs::read_to_string(readme).unwrap();
        for cmd in [
            "bash build.sh",
            "warren test x-y.wasm --cases cases --config handler.toml",
            "warren check x-y.wasm",
            "warren deploy --handler x-y x-y.wasm",
        ] {
            assert!(text.contains(cmd), "{lang}: {cmd:?} not in README");
        }
        assert!(Path::new(readme).exists());
    }
}
