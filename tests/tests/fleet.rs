//! Fleet deploys through the broker: `warren deploy --fleet` to three
//! hosts under load, a host that starts after the deploy, refusals by
//! every host (unsigned, untrusted key) with the reason in the report,
//! `warren rollback --fleet`, `warren status --fleet`, an interpreted
//! guest of ~18 MiB, and who may deploy (broker permissions).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use warren_tests::broker::{AMQP_URL, Rabbit, connections, consumer_tags, rabbitmqctl};
use warren_tests::fixture::Fixture;
use warren_tests::fleet_plane::{
    Plane, digest_of, err, fleet_hosts, id_of, live, out, reports, wait_following,
};
use warren_tests::process::{eventually, unique};
use warren_tests::{guest, warren_bin};

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_deploy_under_load_reaches_every_host_once_and_keeps_their_connections() {
    let plane = Plane::new(&["stamp"]);
    let mut f = fleet_hosts(&plane, "stamp", "", 3).await;
    wait_following(&mut f);
    let q = f.queue.clone();
    let before: Vec<_> = f
        .warrens
        .iter()
        .map(|w| connections(&format!("pid {}", w.pid())))
        .collect();
    let tags_before: BTreeSet<String> = consumer_tags(&q).into_iter().collect();
    assert_eq!(tags_before.len(), 3);

    // 2,000 messages a second for 10 seconds from a task of its own.
    let target = q.clone();
    let load = tokio::spawn(async move {
        let r = Rabbit::connect().await;
        let started = Instant::now();
        let mut sent = 0usize;
        for tick in 0..100u32 {
            let due = started + Duration::from_millis(100) * tick;
            tokio::time::sleep_until(due.into()).await;
            let batch: Vec<_> = (sent..sent + 200)
                .map(|i| (Some(format!("f-{i}")), format!("f-{i}").into_bytes()))
                .collect();
            r.publish_many(&target, batch).await;
            sent += 200;
        }
        println!(
            "load: {sent} messages in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        sent
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = guest("stamp_b");
    let deploy = {
        let b = b.clone();
        let args = ["deploy", "--handler", "stamp", b.to_str().unwrap()].map(str::to_string);
        let plane_ex = plane.exchange.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(warren_bin())
                .args(&args)
                .args(["--fleet", "--amqp", AMQP_URL, "--exchange", &plane_ex])
                .args(["--discover-ms", "1500", "--timeout", "300"])
                .output()
                .unwrap()
        })
    };
    let o = deploy.await.unwrap();
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    println!("{}", out(&o));
    let sent = load.await.unwrap();

    // One report per host, each matching what that host's /handlers says.
    let by_host = reports(&o);
    assert_eq!(by_host.len(), 3, "{}", out(&o));
    let new = digest_of(&b);
    for w in &f.warrens {
        let line = &by_host[&id_of(w)];
        assert!(line.contains(" deployed "), "{line}");
        assert!(line.contains(&format!("-> {}", &new[..19])), "{line}");
        assert_eq!(live(w).0, new);
    }
    assert!(
        out(&o).contains("summary: 3 deployed, 0 unchanged, 0 refused"),
        "{}",
        out(&o)
    );

    // Every input handled exactly once, by one version or the other.
    let mut got = f
        .rabbit
        .collect(&f.out, sent, Duration::from_secs(180))
        .await;
    f.settle(sent as u64, Duration::from_secs(60)).await;
    got.extend(f.rabbit.drain(&f.out).await);
    let mut per_input: BTreeMap<String, usize> = BTreeMap::new();
    let mut versions = BTreeSet::new();
    for g in &got {
        let body = g.body_str();
        let (version, input) = body.split_once(' ').unwrap();
        versions.insert(version.to_string());
        *per_input.entry(input.to_string()).or_default() += 1;
    }
    assert_eq!(per_input.len(), sent, "inputs missing from the output");
    assert!(
        per_input.values().all(|&n| n == 1),
        "an input came out twice"
    );
    assert_eq!(versions, BTreeSet::from(["v-a".into(), "v-b".into()]));

    // The same connections and consumers on every host.
    let after: Vec<_> = f
        .warrens
        .iter()
        .map(|w| connections(&format!("pid {}", w.pid())))
        .collect();
    assert_eq!(after, before);
    let tags_after: BTreeSet<String> = consumer_tags(&q).into_iter().collect();
    assert_eq!(tags_after, tags_before);

    // `warren status --fleet` lists all three on the new version.
    let s = plane.cli(&["status"]);
    assert!(s.status.success(), "{}", err(&s));
    for w in &f.warrens {
        let row = out(&s)
            .lines()
            .find(|l| l.starts_with(&id_of(w)))
            .unwrap_or_else(|| panic!("{} missing:\n{}", id_of(w), out(&s)))
            .to_string();
        assert!(row.contains(&new[..19]), "{row}");
    }

    // A host started now runs the fleet's version, not its config file's.
    let started = f.launch();
    let ready_at = Instant::now();
    let port = started.admin.unwrap();
    let mut took = None;
    eventually(
        Duration::from_secs(30),
        "the late host on the fleet's version",
        || {
            let ok = warren_tests::process::http_get(port, "/handlers")
                .1
                .contains(&new);
            if ok && took.is_none() {
                took = Some(ready_at.elapsed());
            }
            async move { ok }
        },
    )
    .await;
    println!(
        "late host: fleet version live {:?} after it was consuming",
        took.unwrap()
    );
    let late = f.warrens.last().unwrap();
    assert!(
        late.logs().contains("fleet deploy applied"),
        "{}",
        late.logs()
    );

    // Rolled back everywhere: to each host's configured module, the only
    // version before the fleet's first.
    let o = plane.cli(&["rollback", "--handler", "stamp"]);
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    assert_eq!(reports(&o).len(), 4, "{}", out(&o));
    let a = digest_of(&guest("stamp_a"));
    for w in &f.warrens {
        assert_eq!(live(w).0, a);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_and_untrusted_modules_are_refused_by_every_host_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let prefix = dir.path().join(name);
        let o = Command::new(warren_bin())
            .args(["keygen", "--out", prefix.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success());
        (
            prefix.with_extension("key"),
            std::fs::read_to_string(prefix.with_extension("pub"))
                .unwrap()
                .trim()
                .to_string(),
        )
    };
    let sign = |key: &Path, g: &str, out: &str| -> PathBuf {
        let dest = dir.path().join(out);
        let o = Command::new(warren_bin())
            .args(["sign", "--key", key.to_str().unwrap(), "--out"])
            .arg(&dest)
            .arg(guest(g))
            .output()
            .unwrap();
        assert!(o.status.success());
        dest
    };
    let (ours, public) = keygen("ops");
    let (theirs, _) = keygen("stranger");
    let start = sign(&ours, "stamp_a", "a.wasm");
    let plane = Plane::new(&["stamp"]);
    let mut f = Fixture::new("fleet-sig")
        .module(start.clone())
        .handler("stamp")
        .section(&plane.section())
        .section(&format!(
            "[deploy]\ntrusted_keys = [\"{public}\"]\nrequire_signed = true\n"
        ))
        .processes(3)
        .start()
        .await;
    wait_following(&mut f);
    let old = digest_of(&start);

    let untrusted = sign(&theirs, "stamp_b", "b-theirs.wasm");
    for (module, reason) in [
        (
            guest("stamp_b"),
            "module is not signed, and deploy.require_signed is set",
        ),
        (untrusted, "which is not in deploy.trusted_keys"),
    ] {
        let o = plane.cli(&["deploy", "--handler", "stamp", module.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", out(&o));
        println!("{}{}", out(&o), err(&o));
        let by_host = reports(&o);
        assert_eq!(by_host.len(), 3, "{}", out(&o));
        for w in &f.warrens {
            let line = &by_host[&id_of(w)];
            assert!(
                line.contains(" refused ") && line.contains(reason),
                "{line}"
            );
            assert_eq!(live(w).0, old);
        }
        assert!(
            err(&o).contains("3 refused, 0 did not answer"),
            "{}",
            err(&o)
        );
    }

    // The old version kept serving on every host.
    f.rabbit
        .publish_many(
            &f.queue,
            (0..60).map(|i| (Some(format!("s-{i}")), format!("s-{i}").into_bytes())),
        )
        .await;
    let got = f.rabbit.collect(&f.out, 60, Duration::from_secs(30)).await;
    assert!(got.iter().all(|g| g.body_str().starts_with("v-a ")));
    f.settle(60, Duration::from_secs(20)).await;
    f.assert_nothing_more().await;

    // Signed by the trusted key: deployed everywhere, the signer reported.
    let good = sign(&ours, "stamp_b", "b.wasm");
    let o = plane.cli(&["deploy", "--handler", "stamp", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    for w in &f.warrens {
        assert_eq!(live(w), (digest_of(&good), Some(public.clone())));
    }
    assert!(
        out(&o).contains(&format!("signer {}", &public[..19])),
        "{}",
        out(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interpreted_guest_of_18_mib_deploys_through_the_broker() {
    let python = guest("enrich_python");
    assert!(std::fs::metadata(&python).unwrap().len() > 10 << 20);
    let plane = Plane::new(&["enrich"]);
    let mut f = Fixture::new("fleet-py")
        .guest("enrich")
        .handler("enrich")
        .section(&plane.section())
        .section(&format!(
            "[runtime]\ncache_dir = \"{}\"\n",
            warren_tests::module_cache_dir().display()
        ))
        .extra("memory_mb = 256\n")
        .processes(2)
        .start()
        .await;
    wait_following(&mut f);
    let o = plane.cli(&["deploy", "--handler", "enrich", python.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    for w in &f.warrens {
        assert_eq!(live(w).0, digest_of(&python));
    }
}

/// A broker user and vhost of the test's own, deleted on drop.
struct BrokerUsers {
    vhost: String,
    users: Vec<String>,
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        for u in &self.users {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", u])
                .output();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.vhost])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_user_cannot_push_a_module_and_a_deployer_can() {
    let plane = Plane::new(&["stamp"]);
    let id = unique("perm");
    let vhost = id.clone();
    let (host_user, deployer) = (format!("{id}-host"), format!("{id}-deployer"));
    let _users = BrokerUsers {
        vhost: vhost.clone(),
        users: vec![host_user.clone(), deployer.clone()],
    };
    rabbitmqctl(&["add_vhost", &vhost]);
    let x = plane.exchange.replace('.', "\\.");
    // As docs/fleet.md has them, for this test's exchange name.
    let host_perms = [
        format!("^({x}|{x}\\.replies|amq\\.gen-.*)$"),
        format!("^({x}\\.replies|amq\\.gen-.*)$"),
        format!("^({x}|{x}\\..*|amq\\.gen-.*)$"),
    ];
    let deployer_perms = [
        format!("^({x}|{x}\\..*|amq\\.gen-.*)$"),
        format!("^({x}|{x}\\..*|amq\\.gen-.*)$"),
        format!("^({x}|{x}\\..*|amq\\.gen-.*)$"),
    ];
    for (user, perms) in [(&host_user, &host_perms), (&deployer, &deployer_perms)] {
        rabbitmqctl(&["add_user", user, "secret-pw"]);
        let mut args = vec!["set_permissions", "-p", vhost.as_str(), user.as_str()];
        args.extend(perms.iter().map(String::as_str));
        rabbitmqctl(&args);
    }
    let url_of = |user: &str| format!("amqp://{user}:secret-pw@127.0.0.1:5672/{vhost}");
    let mut plane = plane;
    plane.url = url_of(&deployer);

    // The host consumes on the shared broker as usual; its fleet link is
    // in the fleet's vhost, as the host user.
    let mut f = Fixture::new("fleet-perm")
        .guest("stamp_a")
        .handler("stamp")
        .section(&format!(
            "[fleet]\nexchange = \"{}\"\nurl = \"{}\"\n",
            plane.exchange,
            url_of(&host_user)
        ))
        .start()
        .await;
    wait_following(&mut f);

    // The host user cannot write a desired version: refused by the broker.
    let b = guest("stamp_b");
    let o = plane.cli_as(
        &url_of(&host_user),
        &["deploy", "--handler", "stamp", b.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    println!("{}{}", out(&o), err(&o));
    assert!(
        err(&o).contains("ACCESS_REFUSED") || err(&o).contains("access to"),
        "{}",
        err(&o)
    );
    assert!(!err(&o).contains("secret-pw"), "{}", err(&o));
    assert_eq!(live(f.w()).0, digest_of(&guest("stamp_a")));

    // The deployer can; the host applies it.
    let o = plane.cli(&["deploy", "--handler", "stamp", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    assert_eq!(live(f.w()).0, digest_of(&b));

    // Now that the stream exists, the host user still cannot write to it,
    // neither through the control exchange nor the default exchange.
    let o = plane.cli_as(
        &url_of(&host_user),
        &["deploy", "--handler", "stamp", b.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    println!("{}{}", out(&o), err(&o));
    assert!(err(&o).contains("ACCESS_REFUSED"), "{}", err(&o));
    let conn = lapin::Connection::connect(&url_of(&host_user), Default::default())
        .await
        .unwrap();
    for (ex, key) in [
        (plane.exchange.clone(), "deploy.stamp".to_string()),
        (String::new(), format!("{}.stamp", plane.exchange)),
    ] {
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        let sent = async {
            ch.basic_publish(
                ex.as_str().into(),
                key.as_str().into(),
                Default::default(),
                b"\0asm",
                Default::default(),
            )
            .await?
            .await
        }
        .await;
        assert!(sent.is_err(), "a host published to {ex:?} {key:?}");
    }
    assert_eq!(live(f.w()).0, digest_of(&b));
}
