//! Shared helpers for the black-box tests: where the built guests and the
//! `warren` binary are, and how to make a message.
//!
//! The guests are built by `bash guests/rust/build.sh` and the binary by
//! `cargo build`; `tests/run.sh` does both before running the tests.

use std::path::{Path, PathBuf};

use warren::runtime::Message;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The built guest `name` (e.g. `echo`, `sandbox`), from `guests/build/`.
pub fn guest(name: &str) -> PathBuf {
    let path = repo_root()
        .join("guests/build")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {} is not built: run `bash guests/build-all.sh` (tests/run.sh does)",
        path.display()
    );
    path
}

/// A compiled-module cache shared by the test processes, so the interpreted
/// guests (tens of MiB) are compiled once per machine, not once per test.
pub fn module_cache_dir() -> PathBuf {
    std::env::temp_dir().join("warren-test-module-cache")
}

/// The `warren` binary that `cargo build` put next to this test executable.
pub fn warren_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/warren
    let exe = std::env::current_exe().expect("current test executable");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("warren{}", std::env::consts::EXE_SUFFIX)))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        path.exists(),
        "warren binary not found at {}: run `cargo build -p warren` (tests/run.sh does)",
        path.display()
    );
    path
}

/// A message with `body` and every property unset, on its first attempt.
pub fn message(body: impl Into<Vec<u8>>) -> Message {
    Message::synthetic(body.into(), "test-message", "test")
}

pub mod broker;
pub mod browser;
pub mod enrich_cases;
pub mod fixture;
pub mod fleet_plane;
pub mod http_server;
pub mod multi_memory;
pub mod otlp_receiver;
pub mod private_broker;
pub mod process;
pub mod rabbit_cluster;
pub mod raw_amqp;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;
pub mod relay;
pub mod tally;
pub mod tls_certs;
