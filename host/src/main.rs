//! The `warren` command: parse the command line, start logging, and call
//! the library; for `warren run`, load the config, start the tokio runtime
//! and the signal listener, and hand both to [`warren::app::serve`].

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use warren::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. }) {
        warren::app::ensure_thread_stacks();
    } else {
        restore_sigpipe();
    }
    warren::logging::init();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        other => warren::cli::other(other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The log writer redacts its lines; this one bypasses it.
            eprintln!("error: {}", warren::logging::redact(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// The short commands print to stdout like any Unix tool: `warren check
/// x.wasm | head` must end quietly when `head` closes the pipe, not panic
/// in `println!`. Rust ignores SIGPIPE; the default ends the process. Only
/// writes to a pipe raise it: Rust's sockets send with `MSG_NOSIGNAL`, so
/// the commands that talk to a broker or a host are unaffected. `warren
/// run` keeps it ignored (it never prints to stdout).
fn restore_sigpipe() {
    sigpipe::reset();
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = warren::app::load_config(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren")
        .build()?;
    let hard_deadline = Duration::from_millis(config.runtime.shutdown_timeout_ms)
        + warren::shutdown::HARD_DEADLINE_MARGIN;
    let result = rt.block_on(async {
        let (trigger, signal) = warren::shutdown::channel();
        tokio::spawn(async move {
            if let Err(e) = warren::shutdown::listen(trigger, hard_deadline).await {
                tracing::error!(error = %e, "cannot listen for signals");
            }
        });
        tracing::info!(
            config = %path.display(),
            handlers = config.handlers.len(),
            version = env!("CARGO_PKG_VERSION"),
            "warren starting"
        );
        warren::app::serve(&config, signal).await?;
        tracing::info!("warren stopped");
        Ok(())
    });
    rt.shutdown_timeout(warren::shutdown::RUNTIME_STOP);
    result
}
