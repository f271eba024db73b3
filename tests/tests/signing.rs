//! Signed modules: `warren keygen`, `warren sign`, `warren check` showing
//! the signer, and `[deploy] trusted_keys` / `require_signed` refusing an
//! unsigned module, a bad signature and an unknown key on every local path
//! (the config at start, a file change, an admin upload). The fleet path
//! is in `fleet.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use warren_tests::fixture::Fixture;
use warren_tests::process::{Warren, admin_cli, config};
use warren_tests::{guest, warren_bin};

fn warren(args: &[&str]) -> Output {
    Command::new(warren_bin())
        .args(args)
        .output()
        .expect("run warren")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A key pair in `dir`: the secret key file and the public key text.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let prefix = dir.join(name);
    let o = warren(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let public = std::fs::read_to_string(prefix.with_extension("pub")).unwrap();
    (prefix.with_extension("key"), public.trim().to_string())
}

/// `guest` signed with `key`, written to `dir/out`.
fn signed(dir: &Path, guest_name: &str, key: &Path, out: &str) -> PathBuf {
    let dest = dir.join(out);
    let o = warren(&[
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
        guest(guest_name).to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    dest
}

fn trust(public: &str) -> String {
    format!("[deploy]\ntrusted_keys = [\"{public}\"]\nrequire_signed = true\n")
}

#[test]
fn keygen_sign_and_check_show_the_signer() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "team");
    assert!(
        public.starts_with("ed25519:") && public.len() == 8 + 64,
        "{public}"
    );
    // The secret key is for its owner only, and is never overwritten.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = warren(&["keygen", "--out", dir.path().join("team").to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again).1.contains("cannot create key file"),
        "{:?}",
        text(&again)
    );

    let module = signed(dir.path(), "echo", &key, "echo.wasm");
    let o = warren(&["check", module.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("signed:  signed by {public} (signature valid)")),
        "{out}"
    );
    let o = warren(&["check", guest("echo").to_str().unwrap()]);
    assert!(text(&o).0.contains("signed:  unsigned"), "{:?}", text(&o));

    // One byte changed in the code: the signature no longer matches.
    let mut bytes = std::fs::read(&module).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let tampered = dir.path().join("tampered.wasm");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = warren(&["check", tampered.to_str().unwrap()]);
    let all = format!("{}{}", text(&o).0, text(&o).1);
    assert!(
        all.contains("bad signature") || all.contains("is refused"),
        "{all}"
    );

    // A bad key file is named.
    std::fs::write(dir.path().join("bad.key"), "nope").unwrap();
    let o = warren(&[
        "sign",
        "--key",
        dir.path().join("bad.key").to_str().unwrap(),
        guest("echo").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("is not a warren secret key"),
        "{:?}",
        text(&o)
    );
}

#[test]
fn require_signed_refuses_an_unsigned_module_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keygen(dir.path(), "ops");
    let (other, _) = keygen(dir.path(), "stranger");
    let untrusted = signed(dir.path(), "echo", &other, "theirs.wasm");
    let cases = [
        (
            guest("echo"),
            "module is not signed, and deploy.require_signed is set".to_string(),
        ),
        (untrusted, "which is not in deploy.trusted_keys".to_string()),
    ];
    for (module, reason) in cases {
        let text = config(&module, "h", "t-signing-start-unused", None, "").replacen(
            "[[handler]]",
            &format!("{}\n[[handler]]", trust(&public)),
            1,
        );
        let mut w = Warren::start(&text, None);
        assert!(!w.wait(Duration::from_secs(30)).success());
        let logs = w.logs();
        assert!(
            logs.contains("module") && logs.contains("is refused"),
            "{logs}"
        );
        assert!(logs.contains(&reason), "{logs}");
    }
    // Without any trusted key, require_signed is a config error.
    let text = config(&guest("echo"), "h", "t-signing-start-unused", None, "").replacen(
        "[[handler]]",
        "[deploy]\nrequire_signed = true\n\n[[handler]]",
        1,
    );
    let mut w = Warren::start(&text, None);
    assert!(!w.wait(Duration::from_secs(30)).success());
    assert!(
        w.logs().contains("key deploy.require_signed"),
        "{}",
        w.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_and_file_changes_are_refused_unless_signed_by_a_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "ops");
    let (other, _) = keygen(dir.path(), "stranger");
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let module = signed(&live, "stamp_a", &key, "handler.wasm");
    let f = Fixture::new("signed")
        .module(module.clone())
        .handler("stamp")
        .section(&trust(&public))
        .start()
        .await;
    let port = f.port();
    let live_digest = || {
        let (_, body) = f.w().admin_get("/handlers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v[0]["live"]["digest"].as_str().unwrap().to_string(),
            v[0]["live"]["signer"].as_str().map(str::to_string),
        )
    };
    let first = live_digest();
    assert_eq!(first.1.as_deref(), Some(public.as_str()));

    // Admin upload: unsigned, untrusted, tampered.
    let theirs = signed(dir.path(), "stamp_b", &other, "theirs.wasm");
    let mut tampered = std::fs::read(signed(dir.path(), "stamp_b", &key, "t.wasm")).unwrap();
    let at = tampered.len() / 3;
    tampered[at] ^= 0x40;
    let tampered_path = dir.path().join("tampered.wasm");
    std::fs::write(&tampered_path, &tampered).unwrap();
    for (m, reason) in [
        (
            guest("stamp_b"),
            "module is not signed, and deploy.require_signed is set",
        ),
        (theirs.clone(), "which is not in deploy.trusted_keys"),
        (tampered_path.clone(), "bad signature by ed25519:"),
    ] {
        let o = admin_cli(port, &["deploy", "--handler", "stamp", m.to_str().unwrap()]);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{} was accepted", m.display());
        assert!(
            err.contains("module refused") && err.contains(reason),
            "{err}"
        );
        assert_eq!(live_digest(), first);
        // A shadow candidate runs guest code on the host like any version:
        // the same check refuses it before it is compiled.
        let admin = format!("http://127.0.0.1:{port}");
        let o = warren(&[
            "shadow",
            "--handler",
            "stamp",
            "--messages",
            "1",
            "--timeout-s",
            "10",
            "--admin",
            &admin,
            m.to_str().unwrap(),
        ]);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "shadow of {} ran: {out}", m.display());
        assert!(err.contains(reason), "{err}");
        let (status, body) = f.w().admin_get("/handlers/stamp/shadow");
        assert_eq!(status, 404, "a refused candidate is running: {body}");
    }

    // Signed by the trusted key: deployed, and the report names the signer.
    let ours = signed(dir.path(), "stamp_b", &key, "ours.wasm");
    let o = admin_cli(
        port,
        &["deploy", "--handler", "stamp", ours.to_str().unwrap()],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let after = live_digest();
    assert_ne!(after.0, first.0);
    assert_eq!(after.1.as_deref(), Some(public.as_str()));
    f.rabbit.publish(&f.queue, "s1", b"one").await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].body_str(), "v-b one");

    // File watch: an unsigned file renamed over the module is refused.
    let mut w_log_len = f.w().logs().len();
    for (m, reason) in [
        (guest("stamp_a"), "module is not signed"),
        (theirs, "not in deploy.trusted_keys"),
    ] {
        let tmp = live.join(".next.tmp");
        std::fs::copy(&m, &tmp).unwrap();
        std::fs::rename(&tmp, &module).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let logs = f.w().logs();
            let new = &logs[w_log_len..];
            if new.contains("changed module file refused") {
                assert!(new.contains(reason), "{new}");
                w_log_len = logs.len();
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no refusal in:\n{new}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(live_digest(), after);
    }
}
