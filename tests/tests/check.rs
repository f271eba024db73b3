//! `warren check` as a user runs it: the binary, its stdout, stderr and exit
//! code, for a good module and for each kind of refusal.

use std::process::{Command, Output};

use warren::runtime::Digest;
use warren_tests::{guest, warren_bin};

fn check(path: &std::path::Path) -> Output {
    Command::new(warren_bin())
        .arg("check")
        .arg(path)
        .output()
        .expect("run warren check")
}

#[test]
fn good_module_prints_its_facts() {
    let path = guest("echo");
    let bytes = std::fs::read(&path).unwrap();
    let out = check(&path);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("module:  {}", path.display()));
    assert_eq!(lines[1], "world:   warren:handler/handler@0.2.0 (ok)");
    assert_eq!(lines[2], format!("digest:  {}", Digest::of(&bytes)));
    assert_eq!(lines[3], format!("size:    {} bytes", bytes.len()));
    assert_eq!(lines[4], "signed:  unsigned");
    let ms = lines[5]
        .strip_prefix("compile: ")
        .and_then(|s| s.strip_suffix(" ms"))
        .unwrap();
    assert!(ms.parse::<f64>().unwrap() > 0.0, "{}", lines[5]);
    assert_eq!(lines[6], "imports:");
    let exports_at = lines.iter().position(|l| *l == "exports:").unwrap();
    let imports = &lines[7..exports_at];
    assert!(
        imports.contains(&"  warren:handler/host@0.2.0"),
        "{imports:?}"
    );
    assert!(
        imports
            .iter()
            .all(|i| i.starts_with("  wasi:") || i.starts_with("  warren:")),
        "{imports:?}"
    );
    assert_eq!(&lines[exports_at + 1..], ["  handle"]);
}

/// A module built against the previous contract (`wit/0.1.0`) is still
/// accepted, and said to be of that world.
#[test]
fn a_module_built_against_0_1_0_is_accepted_as_such() {
    let out = check(&guest("echo_v01"));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[1], "world:   warren:handler/handler@0.1.0 (ok)");
    assert!(lines.contains(&"  warren:handler/host@0.1.0"), "{stdout}");
    assert!(!stdout.contains("@0.2.0"), "{stdout}");
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "just some text\n").unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "error: module {} is refused: not a WebAssembly file (no \\0asm header)\n",
            path.display()
        )
    );
}

#[test]
fn a_core_module_is_refused_with_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "error: module {} is refused: a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`\n",
            path.display()
        )
    );
}

#[test]
fn a_component_of_another_world_is_refused_naming_what_is_missing() {
    let path = guest("other_world");
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "error: module {} is refused: does not implement warren:handler/handler@0.2.0: it does not export a function `handle`\n",
            path.display()
        )
    );
}

#[test]
fn a_missing_file_is_named() {
    let out = check(std::path::Path::new("no/such/module.wasm"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: cannot read module no/such/module.wasm: "),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let out = Command::new(warren_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("warren {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// `warren check x.wasm | head -1`: the reader closes the pipe early, and
/// warren ends quietly as a Unix tool does (by SIGPIPE), not with a panic
/// from `println!` on a broken pipe.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Stdio;
    let mut child = Command::new(warren_bin())
        .arg("check")
        .arg(guest("echo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warren check");
    // Closed before warren has compiled the module and printed anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.signal() == Some(SIGPIPE) || out.status.success(),
        "{:?}: {stderr}",
        out.status
    );
}

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;
