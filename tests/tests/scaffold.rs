//! `warren new` end to end, for each language: scaffold a project into a
//! temporary directory, build it with its own `build.sh` (which installs its
//! pinned toolchain if missing), check the module with the `warren` binary,
//! and run one message through it in the real runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use warren::runtime::{HandlerEnv, Limits, Outcome, Runtime, RuntimeConfig};
use warren::scaffold::scaffold;
use warren_tests::{message, warren_bin};

fn builds_checks_and_runs(lang: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    let dest = dir.path().join(&name);
    let files = scaffold(lang, &name, &dest).unwrap();
    assert!(files.contains(&dest.join("wit/handler.wit")), "{files:?}");

    let build = Command::new("bash")
        .arg("build.sh")
        .current_dir(&dest)
        .output()
        .expect("run bash build.sh");
    assert!(
        build.status.success(),
        "{lang}: build.sh failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let module = dest.join(format!("{name}.wasm"));

    let check = Command::new(warren_bin())
        .arg("check")
        .arg(&module)
        .output()
        .expect("run warren check");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{lang}: warren check failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("world:   warren:handler/handler@0.2.0 (ok)"),
        "{stdout}"
    );

    runs_one_message(lang, &module);
}

/// The template handler publishes the body to the input routing key + ".out"
/// and acks, and rejects an empty body.
fn runs_one_message(lang: &str, module: &Path) {
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 1,
        max_memory_bytes: 256 << 20,
        cache_dir: Some(warren_tests::module_cache_dir()),
    })
    .unwrap();
    let module = rt.compile(&std::fs::read(module).unwrap()).unwrap();
    let env = Arc::new(HandlerEnv {
        name: "hello".into(),
        config: BTreeMap::new(),
        publish_allow: vec![String::new()],
        // The default limits (64 MiB of memory, a 5 s deadline), as a new
        // handler gets them.
        limits: Limits::default(),
        kv: None,
    });
    let permit = rt.try_acquire().unwrap();
    // Guests run as futures; a one-thread runtime is all they need here.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let done = tokio
        .block_on(rt.run(&module, &env, &message("hi there"), &permit))
        .unwrap();
    assert_eq!(done.outcome, Outcome::Ack, "{lang}");
    assert_eq!(done.publishes.len(), 1, "{lang}");
    assert_eq!(done.publishes[0].routing_key, "test.out", "{lang}");
    assert_eq!(done.publishes[0].body, b"hi there", "{lang}");

    let done = tokio
        .block_on(rt.run(&module, &env, &message(""), &permit))
        .unwrap();
    assert_eq!(done.outcome, Outcome::Reject("empty body".into()), "{lang}");
}

#[test]
fn rust_project_builds_checks_and_runs() {
    builds_checks_and_runs("rust");
}

#[test]
fn python_project_builds_checks_and_runs() {
    builds_checks_and_runs("python");
}

#[test]
fn js_project_builds_checks_and_runs() {
    builds_checks_and_runs("js");
}

#[test]
fn c_project_builds_checks_and_runs() {
    builds_checks_and_runs("c");
}
