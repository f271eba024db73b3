//! `warren new LANG NAME`: writes a ready-to-build handler project in one of
//! the languages warren has examples for (Rust, Python, JavaScript, C, Go).
//!
//! The templates are embedded in the binary, so the command works without
//! warren's source tree: the files under `host/templates/<lang>/`, the WIT
//! contract (`wit/handler.wit`, copied into every project as
//! `wit/handler.wit`), and the pieces the examples already keep pinned (the
//! JavaScript lockfile of `guests/js/`, the C and Go componentize tools of
//! `guests/c/componentize/` and `guests/go/componentize/`, the C JSON
//! parser of `guests/c/common/`), so a template cannot drift from the examples
//! that CI builds. `{{name}}` in a template becomes the project's name.
//!
//! It does not build anything or touch the network; each project's
//! `build.sh` does that.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The languages `warren new` knows, in the order the help lists them.
pub const LANGUAGES: [&str; 5] = ["rust", "python", "js", "c", "go"];

/// The contract, the same file for every language.
const WIT: &str = include_str!("../../wit/handler.wit");

/// A project file: its path in the project and its template text.
type File = (&'static str, &'static str);

/// The handler world plus `wasi:http/outgoing-handler` (guests/wit-http,
/// with the WASI packages it names), as `wit/http/` of the projects whose
/// toolchain takes one world and adds no `wasi:http` of its own (Python,
/// C): their template handler calls HTTP.
const WIT_HTTP: &[File] = &[
    (
        "wit/http/handler-http.wit",
        include_str!("../../guests/wit-http/handler-http.wit"),
    ),
    (
        "wit/http/deps/cli.wit",
        include_str!("../../guests/wit-http/deps/cli.wit"),
    ),
    (
        "wit/http/deps/clocks.wit",
        include_str!("../../guests/wit-http/deps/clocks.wit"),
    ),
    (
        "wit/http/deps/filesystem.wit",
        include_str!("../../guests/wit-http/deps/filesystem.wit"),
    ),
    (
        "wit/http/deps/http.wit",
        include_str!("../../guests/wit-http/deps/http.wit"),
    ),
    (
        "wit/http/deps/io.wit",
        include_str!("../../guests/wit-http/deps/io.wit"),
    ),
    (
        "wit/http/deps/random.wit",
        include_str!("../../guests/wit-http/deps/random.wit"),
    ),
    (
        "wit/http/deps/sockets.wit",
        include_str!("../../guests/wit-http/deps/sockets.wit"),
    ),
];

const RUST: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../templates/rust/Cargo.toml.tmpl"),
    ),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    (
        "src/helpers.rs",
        include_str!("../templates/rust/src/helpers.rs"),
    ),
    ("build.sh", include_str!("../templates/rust/build.sh")),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];

const PYTHON: &[File] = &[
    ("app.py", include_str!("../templates/python/app.py")),
    (
        "warren_helpers.py",
        include_str!("../templates/python/warren_helpers.py"),
    ),
    ("build.sh", include_str!("../templates/python/build.sh")),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
];

const JS: &[File] = &[
    (
        "package.json",
        include_str!("../templates/js/package.json.tmpl"),
    ),
    // The examples' lockfile: the same pinned tools, under the project's name.
    (
        "package-lock.json",
        include_str!("../../guests/js/package-lock.json"),
    ),
    ("handler.js", include_str!("../templates/js/handler.js")),
    ("warren.js", include_str!("../templates/js/warren.js")),
    ("build.sh", include_str!("../templates/js/build.sh")),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/gitignore")),
];

const C: &[File] = &[
    ("handler.c", include_str!("../templates/c/handler.c")),
    (
        "warren_helpers.h",
        include_str!("../templates/c/warren_helpers.h"),
    ),
    (
        "warren_helpers.c",
        include_str!("../templates/c/warren_helpers.c"),
    ),
    // The examples' JSON parser and writer.
    ("json.h", include_str!("../../guests/c/common/json.h")),
    ("json.c", include_str!("../../guests/c/common/json.c")),
    ("build.sh", include_str!("../templates/c/build.sh")),
    ("README.md", include_str!("../templates/c/README.md")),
    (".gitignore", include_str!("../templates/c/gitignore")),
    // The examples' build tool, lockfile included.
    (
        "componentize/Cargo.toml",
        include_str!("../../guests/c/componentize/Cargo.toml"),
    ),
    (
        "componentize/Cargo.lock",
        include_str!("../../guests/c/componentize/Cargo.lock"),
    ),
    (
        "componentize/src/main.rs",
        include_str!("../../guests/c/componentize/src/main.rs"),
    ),
];

const GO: &[File] = &[
    ("handler.go", include_str!("../templates/go/handler.go")),
    (
        "warren_helpers.go",
        include_str!("../templates/go/warren_helpers.go"),
    ),
    ("build.sh", include_str!("../templates/go/build.sh")),
    ("README.md", include_str!("../templates/go/README.md")),
    (".gitignore", include_str!("../templates/go/gitignore")),
    // Go's template makes no HTTP request (its componentize tool builds the
    // handler world only), so its settings grant none and its cases answer
    // none; the rest is COMMON's.
    ("handler.toml", include_str!("../templates/go/handler.toml")),
    (
        "cases/hello.toml",
        include_str!("../templates/go/cases/hello.toml"),
    ),
    (
        "cases/not-json.toml",
        include_str!("../templates/common/cases/not-json.toml"),
    ),
    (
        "cases/returning-tenant.toml",
        include_str!("../templates/go/cases/returning-tenant.toml"),
    ),
    // The examples' build tool, lockfile included.
    (
        "componentize/Cargo.toml",
        include_str!("../../guests/go/componentize/Cargo.toml"),
    ),
    (
        "componentize/Cargo.lock",
        include_str!("../../guests/go/componentize/Cargo.lock"),
    ),
    (
        "componentize/src/main.rs",
        include_str!("../../guests/go/componentize/src/main.rs"),
    ),
];

/// What every project but Go's gets besides its language's files: the
/// settings `warren test --config` reads (with the `[http]` grant and the
/// `lookup_url` of the template's tenant lookup) and the cases it runs,
/// which the template handler passes.
const COMMON: &[File] = &[
    (
        "handler.toml",
        include_str!("../templates/common/handler.toml"),
    ),
    (
        "cases/hello.toml",
        include_str!("../templates/common/cases/hello.toml"),
    ),
    (
        "cases/not-json.toml",
        include_str!("../templates/common/cases/not-json.toml"),
    ),
    (
        "cases/returning-tenant.toml",
        include_str!("../templates/common/cases/returning-tenant.toml"),
    ),
    (
        "cases/lookup.toml",
        include_str!("../templates/common/cases/lookup.toml"),
    ),
];

/// The name the JavaScript examples' lockfile carries, replaced by the
/// project's.
const JS_LOCK_NAME: &str = "\"name\": \"warren-js-handlers\"";

/// Writes a new `lang` handler project called `name` into `dest` and returns
/// the paths of the files written. `dest` may exist only as an empty
/// directory. The name must suit every language's package rules: a lowercase
/// letter, then lowercase letters, digits, `-` or `_`.
pub fn scaffold(lang: &str, name: &str, dest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = match lang {
        "rust" => RUST,
        "python" => PYTHON,
        "js" => JS,
        "c" => C,
        "go" => GO,
        _ => bail!(
            "unknown handler language {lang:?}: warren new knows {}",
            LANGUAGES.join(", ")
        ),
    };
    check_name(name)?;
    if dest.exists() {
        let mut entries = std::fs::read_dir(dest)
            .with_context(|| format!("{} exists and is not a directory", dest.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} already exists and is not empty: give a new or empty directory",
                dest.display()
            );
        }
    }

    let mut written = Vec::new();
    let wit = [("wit/handler.wit", WIT)];
    let common = if lang == "go" { &[] } else { COMMON };
    let wit_http = if matches!(lang, "python" | "c") {
        WIT_HTTP
    } else {
        &[]
    };
    for &(rel, template) in files.iter().chain(common).chain(&wit).chain(wit_http) {
        let mut text = template.replace("{{name}}", name);
        if rel == "package-lock.json" {
            text = text.replacen(JS_LOCK_NAME, &format!("\"name\": \"{name}\""), 2);
        }
        let path = dest.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if rel.ends_with(".sh") {
            make_executable(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!(
            "invalid handler name {name:?}: use a lowercase letter, then lowercase letters, digits, '-' or '_' (at most 64)"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_gets_the_wit_a_build_script_and_a_readme() {
        for lang in LANGUAGES {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("proj");
            let files = scaffold(lang, "my-handler", &dest).unwrap();
            for want in [
                "wit/handler.wit",
                "build.sh",
                "README.md",
                ".gitignore",
                "handler.toml",
                "cases/hello.toml",
            ] {
                assert!(files.contains(&dest.join(want)), "{lang}: no {want}");
            }
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                assert!(
                    !text.contains("{{name}}"),
                    "{lang}: {} keeps a placeholder",
                    f.display()
                );
            }
            let readme = std::fs::read_to_string(dest.join("README.md")).unwrap();
            assert!(readme.starts_with("# my-handler\n"), "{lang}");
            assert!(readme.contains("warren check my-handler.wasm"), "{lang}");
        }
    }

    #[test]
    fn the_http_languages_get_the_lookup_case_and_their_world() {
        for lang in LANGUAGES {
            let dir = tempfile::tempdir().unwrap();
            let files = scaffold(lang, "x", dir.path()).unwrap();
            let has = |rel: &str| files.contains(&dir.path().join(rel));
            let settings = std::fs::read_to_string(dir.path().join("handler.toml")).unwrap();
            // Go's template makes no request: no grant, no lookup case.
            let http = lang != "go";
            assert_eq!(has("cases/lookup.toml"), http, "{lang}");
            assert_eq!(
                settings.contains("allow = [\"https://tenants.example.com\"]"),
                http,
                "{lang}"
            );
            assert_eq!(
                settings.contains("lookup_url = \"https://tenants.example.com\""),
                http,
                "{lang}"
            );
            // Python and C build against the handler-http world, kept next
            // to (not in) the handler world's package.
            let world = matches!(lang, "python" | "c");
            for rel in ["wit/http/handler-http.wit", "wit/http/deps/http.wit"] {
                assert_eq!(has(rel), world, "{lang}: {rel}");
            }
        }
    }

    #[test]
    fn js_lockfile_carries_the_project_name() {
        let dir = tempfile::tempdir().unwrap();
        scaffold("js", "orders", dir.path()).unwrap();
        let lock = std::fs::read_to_string(dir.path().join("package-lock.json")).unwrap();
        assert!(!lock.contains("warren-js-handlers"));
        assert_eq!(lock.matches("\"name\": \"orders\"").count(), 2);
    }

    #[test]
    fn refuses_an_unknown_language_naming_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let err = scaffold("cobol", "x", dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown handler language \"cobol\": warren new knows rust, python, js, c, go"
        );
    }

    #[test]
    fn refuses_a_non_empty_destination_and_a_bad_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = scaffold("rust", "x", dir.path()).unwrap_err().to_string();
        assert!(err.contains("already exists and is not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );

        let empty = tempfile::tempdir().unwrap();
        for bad in ["", "My", "1x", "a b", "../up"] {
            let err = scaffold("c", bad, empty.path()).unwrap_err().to_string();
            assert!(err.starts_with("invalid handler name"), "{bad:?}: {err}");
        }
    }
}
