//! A RabbitMQ node of the test's own, on its own port and data directory, for
//! the tests that stop and restart the broker: the shared node on 5672 stays
//! up for every other test running in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{TOOL_LIMIT, free_port, output_within};

/// One RabbitMQ node: its name, ports and data directory, and how to boot,
/// command and kill it. [`PrivateBroker`] owns one in a temporary
/// directory; a [`crate::rabbit_cluster`] keeps three in a directory that
/// outlives the test process.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub port: u16,
    pub dist_port: u16,
    pub dir: PathBuf,
}

impl Node {
    /// A node named `warren-<tag>-<random>@localhost` on free ports, its
    /// files under `dir` (created, writable by the node's user), not
    /// booted yet.
    pub fn configure(tag: &str, dir: PathBuf) -> Node {
        Self::configure_with(tag, |_| dir)
    }

    /// [`Node::configure`] in a directory under `parent` named for the node.
    pub fn configure_under(tag: &str, parent: &Path) -> Node {
        Self::configure_with(tag, |name| parent.join(name))
    }

    fn configure_with(tag: &str, dir: impl FnOnce(&str) -> PathBuf) -> Node {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("warren-{tag}-{id}@localhost");
        let node = Node {
            dir: dir(&name),
            name,
            port: free_port(),
            dist_port: free_port(),
        };
        std::fs::create_dir_all(&node.dir).unwrap();
        // The Debian wrapper runs the node as the rabbitmq user.
        std::fs::set_permissions(
            &node.dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
        )
        .unwrap();
        std::fs::write(node.dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(node.dir.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(
            node.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n",
                node.port
            ),
        )
        .unwrap();
        node
    }

    fn env(&self, cmd: &mut Command) {
        let d: &Path = &self.dir;
        cmd.env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"));
    }

    /// Starts the node (with whatever data it has) and waits until it
    /// accepts connections.
    pub fn boot(&self) {
        let mut cmd = Command::new("rabbitmq-server");
        self.env(&mut cmd);
        let status = cmd
            .arg("-detached")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run rabbitmq-server");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed for node {}",
            self.name
        );
        // `-detached` returns before the node registers with epmd, and
        // `await_startup` fails at once for a node epmd does not know yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut cmd = Command::new("rabbitmqctl");
            self.env(&mut cmd);
            cmd.args(["-q", "-n", &self.name, "await_startup", "--timeout", "30"]);
            let out = output_within(&mut cmd, TOOL_LIMIT).unwrap_or_else(|e| panic!("{e}"));
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} did not start: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `rabbitmqctl -n NODE ARGS...`; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.try_ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rabbitmqctl -n NODE ARGS...`, whatever it comes to; a hang past
    /// [`TOOL_LIMIT`] panics, naming the command.
    pub fn try_ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("rabbitmqctl");
        self.env(&mut cmd);
        cmd.arg("-q").arg("-n").arg(&self.name).args(args);
        output_within(&mut cmd, TOOL_LIMIT).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Whether the node's AMQP port accepts connections.
    pub fn listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// The node's OS process id (from its pid file).
    pub fn os_pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("pid"))
            .expect("the node's pid file")
            .trim()
            .to_string()
    }

    /// `kill -9` of the node's VM: no goodbye to anyone, its port closed by
    /// the kernel. Returns once the process is gone.
    pub fn kill9(&self) {
        let pid = self.os_pid();
        let ok = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(ok.success(), "kill -KILL {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} (pid {pid}) still there after kill -9",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A RabbitMQ node of the test's own, deleted with its data when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    node: Node,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts a fresh node and waits until it accepts connections.
    pub fn start() -> PrivateBroker {
        Self::start_with("")
    }

    /// [`PrivateBroker::start`] with more lines of `rabbitmq.conf` (a TLS
    /// listener, say).
    pub fn start_with(conf: &str) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::configure("test", dir.path().to_path_buf());
        let path = node.dir.join("rabbitmq.conf");
        let base = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{base}{conf}")).unwrap();
        node.boot();
        PrivateBroker {
            port: node.port,
            node,
            _dir: dir,
        }
    }

    fn boot(&self) {
        self.node.boot()
    }

    /// `rabbitmqctl -n NODE ARGS...`; its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.node.ctl(args)
    }

    pub fn url(&self) -> String {
        self.node.url()
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

    /// SIGSTOP to the node: its sockets stay open and nothing answers, a
    /// broker that went silent without a reset. Resume it before anything
    /// else talks to it (its `Drop` does).
    pub fn pause(&self) -> Paused<'_> {
        let pid = self.node.os_pid();
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
        let _ = self.node.try_ctl(&["stop"]);
    }
}
