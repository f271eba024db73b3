//! A RabbitMQ node of the test's own, on its own port and data directory, for
//! the tests that stop and restart the broker: the shared node on 5672 stays
//! up for every other test running in parallel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::free_port;

#[derive(Debug)]
pub struct PrivateBroker {
    node: String,
    pub port: u16,
    dir: tempfile::TempDir,
    dist_port: u16,
}

impl PrivateBroker {
    /// Starts a fresh node and waits until it accepts connections.
    pub fn start() -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        // The Debian wrapper runs the node as the rabbitmq user.
        std::fs::set_permissions(
            dir.path(),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
        )
        .unwrap();
        let b = PrivateBroker {
            node: format!("warren-test-{id}@localhost"),
            port: free_port(),
            dist_port: free_port(),
            dir,
        };
        std::fs::write(b.dir.path().join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(b.dir.path().join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(
            b.dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n",
                b.port
            ),
        )
        .unwrap();
        b.boot();
        b
    }

    fn env(&self, cmd: &mut Command) {
        let d: &Path = self.dir.path();
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"));
    }

    fn boot(&self) {
        let mut cmd = Command::new("rabbitmq-server");
        self.env(&mut cmd);
        let status = cmd.arg("-detached").status().expect("run rabbitmq-server");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed for node {}",
            self.node
        );
        // `-detached` returns before the node registers with epmd, and
        // `await_startup` fails at once for a node epmd does not know yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let mut cmd = Command::new("rabbitmqctl");
            self.env(&mut cmd);
            let out = cmd
                .args(["-q", "-n", &self.node, "await_startup", "--timeout", "30"])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} did not start: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `rabbitmqctl -n NODE ARGS...`; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("rabbitmqctl");
        self.env(&mut cmd);
        let out = cmd
            .arg("-q")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}",
            self.node,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the whole node (not just the app): connections drop, the port
    /// closes; durable queues and persistent messages stay on disk.
    pub fn stop(&self) {
        self.ctl(&["stop"]);
    }

    /// Starts the stopped node again with the same data.
    pub fn restart(&self) {
        self.boot();
    }

    /// `rabbitmqctl stop_app`: the node stays up, the broker application
    /// stops (connections are closed with `connection-forced`); what an
    /// operator does for a broker restart. Faster than [`PrivateBroker::stop`].
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// `rabbitmqctl start_app`, after [`PrivateBroker::stop_app`]; returns
    /// once the broker accepts connections again.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.ctl(&["await_startup", "--timeout", "60"]);
    }

    /// The node's OS process id (from its pid file).
    fn os_pid(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .expect("the node's pid file")
            .trim()
            .to_string()
    }

    /// SIGSTOP to the node: its sockets stay open and nothing answers, a
    /// broker that went silent without a reset. Resume it before anything
    /// else talks to it (its `Drop` does).
    pub fn pause(&self) -> Paused<'_> {
        let pid = self.os_pid();
        let ok = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(ok.success(), "kill -STOP {pid}");
        Paused { broker: self, pid }
    }

    /// Waits until `port` stops (or starts) accepting connections.
    pub fn wait_port(&self, open: bool, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() != open {
            assert!(
                std::time::Instant::now() < deadline,
                "port {} not {} within {timeout:?}",
                self.port,
                if open { "open" } else { "closed" }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A node stopped with [`PrivateBroker::pause`]; resumed when dropped.
#[derive(Debug)]
pub struct Paused<'a> {
    pub broker: &'a PrivateBroker,
    pid: String,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let mut cmd = Command::new("rabbitmqctl");
        self.env(&mut cmd);
        let _ = cmd.arg("-q").arg("-n").arg(&self.node).arg("stop").output();
    }
}
