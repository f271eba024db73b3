//! The fleet tests' control plane: a control exchange of each test's own,
//! the `warren ... --fleet` commands against it, and reading their reports
//! and the hosts' `/handlers`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use warren::runtime::Digest;

use std::time::Duration;

use crate::broker::AMQP_URL;
use crate::fixture::{Fixture, Running};
use crate::process::{TOOL_LIMIT, Warren, output_within, unique};
use crate::warren_bin;

/// A control exchange of the test's own, deleted (with its streams) on
/// drop.
#[derive(Debug)]
pub struct Plane {
    pub exchange: String,
    pub streams: Vec<String>,
    pub url: String,
}

impl Plane {
    pub fn new(handlers: &[&str]) -> Plane {
        let exchange = unique("fleet");
        Plane {
            streams: handlers.iter().map(|h| format!("{exchange}.{h}")).collect(),
            exchange,
            url: AMQP_URL.into(),
        }
    }

    pub fn section(&self) -> String {
        format!("[fleet]\nexchange = \"{}\"\n", self.exchange)
    }

    /// `warren ARGS --fleet --amqp URL --exchange X`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(&self.url, args)
    }

    pub fn cli_as(&self, url: &str, args: &[&str]) -> Output {
        Command::new(warren_bin())
            .args(args)
            .args(["--fleet", "--amqp", url, "--exchange", &self.exchange])
            // Generous: a host compiles the module before it answers, and
            // an 18 MiB interpreted guest on a loaded 2-core machine took
            // over 90 s. No test waits for this to run out.
            .args(["--discover-ms", "1500", "--timeout", "300"])
            .output()
            .expect("run warren")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        for s in &self.streams {
            let mut cmd = Command::new("rabbitmqctl");
            cmd.args(["-q", "delete_queue", s]);
            let _ = output_within(&mut cmd, TOOL_LIMIT);
        }
        // No rabbitmqctl command deletes an exchange; the broker API over
        // AMQP does.
        let (ex, url) = (self.exchange.clone(), self.url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(conn) =
                    lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
                else {
                    return;
                };
                for name in [ex.clone(), format!("{ex}.replies")] {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(name.as_str().into(), Default::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "cleaned up".into()).await;
            });
        })
        .join();
    }
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn digest_of(path: &Path) -> String {
    Digest::of(&std::fs::read(path).unwrap()).to_string()
}

/// Each host's (fleet id, live digest, live signer) from its `/handlers`.
pub fn live(w: &Warren) -> (String, Option<String>) {
    let (_, body) = w.admin_get("/handlers");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v[0]["live"]["digest"].as_str().unwrap().to_string(),
        v[0]["live"]["signer"].as_str().map(str::to_string),
    )
}

/// The report lines of a fleet command, by host id (`HOSTNAME.PID`).
pub fn reports(o: &Output) -> BTreeMap<String, String> {
    let host = hostname();
    out(o)
        .lines()
        .filter(|l| l.starts_with(&format!("{host}.")))
        .map(|l| {
            let id = l.split_whitespace().next().unwrap().to_string();
            (id, l.to_string())
        })
        .collect()
}

pub fn hostname() -> String {
    String::from_utf8(Command::new("hostname").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

pub fn id_of(w: &Warren) -> String {
    format!("{}.{}", hostname(), w.pid())
}

/// `n` hosts of `handler` on `stamp_a`, in the plane's fleet.
pub async fn fleet_hosts(plane: &Plane, handler: &str, extra_sections: &str, n: usize) -> Running {
    Fixture::new("fleet")
        .guest("stamp_a")
        .handler(handler)
        .extra("consumers = 16\nprefetch = 128\n")
        .section(&plane.section())
        .section(extra_sections)
        .processes(n)
        .start()
        .await
}

/// Waits until every host follows the handler's stream or, before the
/// first deploy, has its ping queue bound (its log says it follows the
/// fleet).
pub fn wait_following(f: &mut Running) {
    for w in &mut f.warrens {
        w.wait_log("following the fleet", Duration::from_secs(30));
    }
}
