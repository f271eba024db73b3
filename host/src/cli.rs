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
    /// Write a ready-to-build handler project: rust, python, js or c.
    New {
        /// The language: rust, python, js or c.
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
    /// Run a candidate module beside a handler's live version on a sample of
    /// the live messages of one host, compare outcomes and outputs (the
    /// candidate publishes nothing), and report agreement.
    Shadow {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        handler: String,
        /// The candidate component file (.wasm).
        module: PathBuf,
        /// Compare one message in this many (1: every one).
        #[arg(long, default_value_t = 1)]
        every: u64,
        /// Stop after this many comparisons.
        #[arg(long, default_value_t = 100)]
        messages: u64,
        /// Stop after this many seconds, however many were compared.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
    /// Work a handler's dead-letter queue through the broker: list, show
    /// or replay its messages.
    Dlq {
        #[command(subcommand)]
        action: DlqCommand,
    },
}

/// `warren dlq` subcommands.
#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// One line per dead-lettered message: id, when, kind, attempt, module,
    /// reason.
    List(DlqArgs),
    /// Every message with its properties, headers and body, warren's
    /// headers decoded (earlier failures included).
    Show(DlqArgs),
    /// Move messages back to the work queue as first attempts with their
    /// message ids; each is removed from the dead-letter queue only after
    /// the broker confirmed its copy.
    Replay {
        #[command(flatten)]
        args: DlqArgs,
        /// Print what would be moved; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// What every `warren dlq` command takes.
#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    /// The config file the hosts run with (for the broker, the queues and
    /// the bookkeeping key).
    #[arg(short, long)]
    config: PathBuf,
    /// The handler whose dead-letter queue to work.
    #[arg(long)]
    handler: String,
    /// Only messages whose reason contains this (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// Only messages of this error kind (reject, timeout, trap, retry...).
    #[arg(long)]
    kind: Option<String>,
    /// Only messages last handled by a module whose digest starts with this.
    #[arg(long)]
    module: Option<String>,
    /// Only messages dead-lettered at or after this: 30m, 2h, 7d ago, a
    /// UTC time (2026-11-29T19:30:00Z) or seconds since the epoch.
    #[arg(long)]
    since: Option<String>,
    /// Only messages dead-lettered before this (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only the message with this message id.
    #[arg(long)]
    id: Option<String>,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<usize>,
}

impl DlqCommand {
    fn request(self) -> anyhow::Result<(PathBuf, crate::dlq::Request)> {
        use crate::dlq::{Action, Filter, Request, parse_time};
        let (args, action) = match self {
            DlqCommand::List(a) => (a, Action::List),
            DlqCommand::Show(a) => (a, Action::Show),
            DlqCommand::Replay { args, dry_run } => (args, Action::Replay { dry_run }),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let time = |flag: &str, v: Option<String>| {
            v.map(|v| parse_time(&v, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
                .transpose()
        };
        let filter = Filter {
            since: time("since", args.since)?,
            until: time("until", args.until)?,
            reason: args.reason,
            kind: args.kind,
            module: args.module,
            id: args.id,
        };
        let req = Request {
            handler: args.handler,
            action,
            filter,
            limit: args.limit,
        };
        Ok((args.config, req))
    }
}

/// `warren shadow`: starts the comparison, reports progress on stderr
/// until `messages` were compared or `timeout_s` passed, then stops it and
/// prints its report.
fn shadow(
    admin: crate::client::Admin,
    handler: &str,
    module: &std::path::Path,
    every: u64,
    messages: u64,
    timeout_s: u64,
) -> anyhow::Result<()> {
    let started = admin.shadow_start(handler, module, every)?;
    eprintln!(
        "shadow run of {} on handler {handler} started; comparing one message in {every}",
        started["candidate"].as_str().unwrap_or("?")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    let mut last = u64::MAX;
    loop {
        let r = admin.shadow_report(handler, false)?;
        let compared = r["compared"].as_u64().unwrap_or(0);
        if compared != last {
            eprintln!("compared {compared} of {messages} ...");
            last = compared;
        }
        if compared >= messages || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let r = admin.shadow_report(handler, true)?;
    print!("{}", crate::client::describe_shadow(&r));
    Ok(())
}

/// `warren dlq ...`: on a runtime of its own, one thread is plenty.
fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let (path, req) = command.request()?;
    let config = crate::config::Config::load(&path)?;
    // Before anything can print a URL: a client library's error may embed
    // its password.
    crate::logging::hide(config.secrets());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    rt.block_on(crate::dlq::run(&config, &req, &mut out))
        .map(|_| ())
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
                    "next: cd {} && bash build.sh, then warren check the .wasm it prints",
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
        Command::Dlq { action } => dlq(action),
        Command::Shadow {
            admin,
            handler,
            module,
            every,
            messages,
            timeout_s,
        } => shadow(
            admin.client(),
            &handler,
            &module,
            every,
            messages,
            timeout_s,
        ),
        Command::Check { module } => Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .and_then(|rt| crate::check::check(&rt, &module))
        .map(|report| print!("{report}")),
    }
}
