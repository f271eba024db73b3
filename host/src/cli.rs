//! The command line: what `warren` accepts ([`Cli`]) and every subcommand
//! but `run`, which the binary itself drives (it owns the process: the
//! tokio runtime and the signals).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::runtime::{Runtime, RuntimeConfig};

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Run sandboxed WebAssembly message handlers on RabbitMQ"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume the configured queues and run each message through its handler.
    Run {
        /// The config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Upload a module to a running host and make it the handler's live
    /// version (validated first; a refused module changes nothing).
    Deploy {
        #[command(flatten)]
        admin: AdminArgs,
        /// The handler to deploy to.
        #[arg(long)]
        handler: String,
        /// The component file (.wasm).
        module: PathBuf,
    },
    /// Make a handler's previous version live again.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        handler: String,
    },
    /// List a running host's handlers, their live and previous digests and
    /// counters.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Write a ready-to-build handler project: rust, python, js, c or go.
    New {
        /// The language: rust, python, js, c or go.
        lang: String,
        /// The handler's name (lowercase letters, digits, '-', '_').
        name: String,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Compile a handler module, check it against the warren:handler world,
    /// and print its digest, size, imports, exports and compile time.
    Check {
        /// The component file (.wasm).
        module: PathBuf,
    },
    /// Run a handler module on messages from files, in the same sandbox,
    /// with the same limits and host imports as `warren run`, without a
    /// broker or Redis: one message (--body), or every case file of a
    /// directory (--cases; exits 1 if any case fails).
    Test(TestArgs),
}

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The component file (.wasm).
    pub module: PathBuf,
    /// The message body: a file, or - for stdin.
    #[arg(
        long,
        value_name = "FILE|-",
        required_unless_present = "cases",
        conflicts_with = "cases"
    )]
    pub body: Option<PathBuf>,
    /// A text header on the message (repeatable).
    #[arg(long = "header", value_name = "K=V", requires = "body")]
    pub headers: Vec<String>,
    /// The message's routing key.
    #[arg(long, default_value = crate::trial::DEFAULT_ROUTING_KEY)]
    pub routing_key: String,
    /// The message's content type.
    #[arg(long, requires = "body")]
    pub content_type: Option<String>,
    /// A directory of case files (*.toml), each a message and what is
    /// expected of it (docs/testing.md).
    #[arg(long, value_name = "DIR")]
    pub cases: Option<PathBuf>,
    /// Write what each case did as its expectation, where it was missing or
    /// not met.
    #[arg(long, requires = "cases")]
    pub update: bool,
    /// The handler's settings: a host config file, or one handler's table
    /// on its own (timeout_ms, memory_mb, [config], [publish], ...).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which [[handler]] of a host config file, when it has several.
    #[arg(long, requires = "config")]
    pub handler: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The host's admin endpoint.
    #[arg(
        long,
        env = "WARREN_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    admin: String,
    /// Bearer token, when the endpoint requires one.
    #[arg(long, env = "WARREN_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminArgs {
    fn client(self) -> crate::client::Admin {
        crate::client::Admin {
            url: self.admin,
            token: self.token,
        }
    }
}

/// Runs every subcommand but `run` (which the caller handles).
pub fn other(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { .. } => {
            anyhow::bail!("`warren run` is run by the binary, not by cli::other")
        }
        Command::New { lang, name, dir } => {
            let dest = dir.unwrap_or_else(|| PathBuf::from(&name));
            crate::scaffold::scaffold(&lang, &name, &dest).map(|files| {
                println!("wrote a {lang} handler in {}:", dest.display());
                for f in files {
                    println!("  {}", f.display());
                }
                println!(
                    "next: cd {} && bash build.sh && warren test {name}.wasm --cases cases --config handler.toml && warren check {name}.wasm && warren deploy --handler {name} {name}.wasm",
                    dest.display()
                );
            })
        }
        Command::Deploy {
            admin,
            handler,
            module,
        } => admin
            .client()
            .deploy(&handler, &module)
            .map(|r| print!("{}", crate::client::describe_report(&r))),
        Command::Rollback { admin, handler } => admin
            .client()
            .rollback(&handler)
            .map(|r| print!("{}", crate::client::describe_report(&r))),
        Command::Status { admin } => admin
            .client()
            .status()
            .map(|r| print!("{}", crate::client::describe_status(&r))),
        Command::Check { module } => Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .and_then(|rt| crate::check::check(&rt, &module))
        .map(|report| print!("{report}")),
        Command::Test(args) => test(args),
    }
}

/// `warren test`: the settings, the message or cases, the verdict as the
/// exit status.
fn test(args: TestArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Read as _;

    use crate::trial::{self, Settings, Style};

    let settings = match &args.config {
        Some(path) => Settings::load(path, args.handler.as_deref())?,
        None => Settings::defaults(),
    };
    let style = Style::detect();
    let mut out = std::io::stdout().lock();
    if let Some(dir) = &args.cases {
        let s = trial::run_cases(&args.module, &settings, dir, args.update, style, &mut out)?;
        if s.failed > 0 {
            anyhow::bail!(
                "{} of {} cases failed",
                s.failed,
                s.passed + s.failed + s.updated
            );
        }
        return Ok(());
    }
    let body_path = args
        .body
        .as_ref()
        .expect("clap requires --body without --cases");
    let body = if body_path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("cannot read the body from stdin")?;
        b
    } else {
        std::fs::read(body_path)
            .with_context(|| format!("cannot read body file {}", body_path.display()))?
    };
    let mut table = std::collections::BTreeMap::new();
    for kv in &args.headers {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--header {kv:?}: write it as NAME=VALUE"))?;
        table.insert(k.to_string(), toml::Value::String(v.to_string()));
    }
    let mut msg = crate::runtime::Message::synthetic(body, "warren-test", &args.routing_key);
    msg.content_type = args.content_type.clone();
    msg.headers = trial::headers_from_toml(&table)?;
    if !trial::run_one(&args.module, &settings, &msg, style, &mut out)? {
        anyhow::bail!("the handler did not come to an outcome (see above)");
    }
    Ok(())
}
