//! The `warren` command: parse the command line, start logging, call the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren::runtime::{Runtime, RuntimeConfig};

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
    /// Compile a handler module, check it against the warren:handler world,
    /// and print its digest, size, imports, exports and compile time.
    Check {
        /// The component file (.wasm).
        module: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    warren::logging::init();
    let result = match cli.command {
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
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
