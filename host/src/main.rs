//! The `warren` command: parse the command line, start logging, call the
//! library with a shutdown signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use warren::config::Config;
use warren::runtime::{Runtime, RuntimeConfig};
use warren::server::Host;

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "Run sandboxed WebAssembly message handlers on RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

#[derive(clap::Args, Debug)]
struct AdminArgs {
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
    fn client(self) -> warren::client::Admin {
        warren::client::Admin {
            url: self.admin,
            token: self.token,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    warren::logging::init();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::New { lang, name, dir } => {
            let dest = dir.unwrap_or_else(|| PathBuf::from(&name));
            warren::scaffold::scaffold(&lang, &name, &dest).map(|files| {
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
            .map(|r| print!("{}", warren::client::describe_report(&r))),
        Command::Rollback { admin, handler } => admin
            .client()
            .rollback(&handler)
            .map(|r| print!("{}", warren::client::describe_report(&r))),
        Command::Status { admin } => admin
            .client()
            .status()
            .map(|r| print!("{}", warren::client::describe_status(&r))),
        Command::Check { module } => Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .and_then(|rt| warren::check::check(&rt, &module))
        .map(|report| print!("{report}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Past the in-flight deadline (`shutdown_timeout_ms`) and the supervisor's
/// close budget: when a stop still running is cut short. Under a second,
/// so SIGTERM always ends the process within `shutdown_timeout_ms` plus one.
const HARD_DEADLINE_MARGIN: Duration = Duration::from_millis(850);
/// How long the runtime waits, once `serve` returned, for tasks and blocking
/// threads it still has (a guest run ends by its own deadline anyway).
const RUNTIME_STOP: Duration = Duration::from_millis(100);

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren")
        .build()?;
    let hard_deadline =
        Duration::from_millis(config.runtime.shutdown_timeout_ms) + HARD_DEADLINE_MARGIN;
    let result = rt.block_on(async {
        let (trigger, signal) = warren::shutdown::channel();
        tokio::spawn(async move {
            if let Err(e) = warren::shutdown::listen(trigger, hard_deadline).await {
                tracing::error!(error = %e, "cannot listen for signals");
            }
        });
        tracing::info!(config = %path.display(), handlers = config.handlers.len(), version = env!("CARGO_PKG_VERSION"), "warren starting");
        let host = Host::start(&config, signal.clone()).await?;
        if let Some(addr) = config.admin.listen {
            let listener = warren::admin::bind(addr).await?;
            tracing::info!(listen = %listener.local_addr()?, "admin endpoint up");
            tokio::spawn(warren::admin::serve(listener, host.clone(), config.admin.token.clone(), signal.clone()));
        }
        let _watcher = warren::watch::start(host.shared.clone(), host.handlers.clone())?;
        host.serve(&config).await?;
        tracing::info!("warren stopped");
        Ok(())
    });
    rt.shutdown_timeout(RUNTIME_STOP);
    result
}
