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
        Command::Check { module } => Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .and_then(|rt| crate::check::check(&rt, &module))
        .map(|report| print!("{report}")),
    }
}
