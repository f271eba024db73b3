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
        #[command(flatten)]
        fleet: FleetFlags,
        #[command(flatten)]
        canary: CanaryFlags,
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
        #[command(flatten)]
        fleet: FleetFlags,
        #[arg(long)]
        handler: String,
    },
    /// List a running host's handlers, their live and previous digests and
    /// counters.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        fleet: FleetFlags,
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
    /// Write a new ed25519 signing key: PREFIX.key (secret, mode 0600) and
    /// PREFIX.pub (the public key, for `[deploy] trusted_keys`).
    Keygen {
        /// Where to write the two files (PREFIX.key and PREFIX.pub).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a module with a key from `warren keygen`: the signature goes
    /// into the module as its last custom section (a previous signature is
    /// replaced).
    Sign {
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed module (default: over MODULE).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The component file (.wasm).
        module: PathBuf,
    },
    /// Run a handler module on messages from files, in the same sandbox,
    /// with the same limits and host imports as `warren run`, without a
    /// broker or Redis: one message (--body), or every case file of a
    /// directory (--cases; exits 1 if any case fails).
    Test(TestArgs),
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

/// `--fleet` and where the fleet is: through the broker instead of one
/// host's admin endpoint.
#[derive(clap::Args, Debug)]
pub struct FleetFlags {
    /// Act on every host of the fleet, through the broker's control
    /// exchange, instead of one host's admin endpoint.
    #[arg(long)]
    fleet: bool,
    /// The fleet's broker (default: from --config, `[fleet] url` or
    /// `amqp.url`).
    #[arg(long, env = "WARREN_FLEET_URL", hide_env_values = true)]
    amqp: Option<String>,
    /// A host's config file, to take the broker URL and the control
    /// exchange from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The control exchange (default: from --config, or warren.fleet).
    #[arg(long)]
    exchange: Option<String>,
    /// How long every host gets to report, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// How long hosts get to answer the ping that finds them, in ms.
    #[arg(long, default_value_t = 2000)]
    discover_ms: u64,
}

/// `--canary` and its companions (with `--fleet` only).
#[derive(clap::Args, Debug)]
pub struct CanaryFlags {
    /// Run the module on PERCENT (1 to 100) of the first attempts of every
    /// host first, beside the live version, then promote it everywhere or
    /// roll it back everywhere by its failure rate (docs/fleet.md).
    #[arg(long, value_name = "PERCENT")]
    canary: Option<u8>,
    /// How long the canary runs before it is promoted (e.g. 90s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    canary_window: std::time::Duration,
    /// How long after the window hosts wait for the decision before they
    /// drop the candidate by themselves (should this command die).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    canary_grace: std::time::Duration,
    /// Promoting needs at least this many first attempts on the candidate.
    #[arg(long, default_value_t = 20)]
    canary_min_messages: u64,
    /// How many percentage points the candidate's failure rate may exceed
    /// the live version's.
    #[arg(long, default_value_t = 5.0)]
    canary_margin: f64,
}

impl CanaryFlags {
    fn args(&self) -> Option<crate::fleet::CanaryArgs> {
        Some(crate::fleet::CanaryArgs {
            percent: self.canary?,
            window: self.canary_window,
            grace: self.canary_grace,
            rule: crate::canary::Rule {
                min_messages: self.canary_min_messages,
                margin_points: self.canary_margin,
            },
        })
    }
}

/// `90s`, `5m`, `500ms` or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 5m, 500ms)"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

impl FleetFlags {
    fn args(self) -> anyhow::Result<crate::fleet::FleetArgs> {
        use anyhow::Context as _;
        // Only the keys needed here are read: the deployer's machine need
        // not have the hosts' module files the full validation checks.
        let (mut url, mut exchange) = (None, None);
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let v: toml::Value = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
            let s = |t: &str, k: &str| v.get(t)?.get(k)?.as_str().map(str::to_string);
            url = s("fleet", "url").or_else(|| s("amqp", "url"));
            exchange = s("fleet", "exchange");
        }
        let url = self
            .amqp
            .or(url)
            .or_else(|| std::env::var(crate::config::ENV_AMQP_URL).ok())
            .context("no broker for --fleet: give --amqp URL or --config FILE")?;
        crate::amqp::validate_url(&url)
            .map_err(anyhow::Error::msg)
            .context("--amqp")?;
        crate::logging::hide(crate::config::secrets_of_url(&url));
        Ok(crate::fleet::FleetArgs {
            url,
            exchange: self
                .exchange
                .or(exchange)
                .unwrap_or_else(|| "warren.fleet".into()),
            discover: std::time::Duration::from_millis(self.discover_ms),
            timeout: std::time::Duration::from_secs(self.timeout),
        })
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
            fleet,
            canary,
            handler,
            module,
            ..
        } if fleet.fleet => match canary.args() {
            Some(c) => crate::fleet::canary(&fleet.args()?, &c, &handler, &module),
            None => crate::fleet::deploy(&fleet.args()?, &handler, &module),
        },
        Command::Deploy {
            canary: CanaryFlags {
                canary: Some(_), ..
            },
            ..
        } => anyhow::bail!("--canary needs --fleet: a canary runs on every host of the fleet"),
        Command::Rollback { fleet, handler, .. } if fleet.fleet => {
            crate::fleet::rollback(&fleet.args()?, &handler)
        }
        Command::Status { fleet, .. } if fleet.fleet => crate::fleet::status(&fleet.args()?),
        Command::Deploy {
            admin,
            handler,
            module,
            ..
        } => admin
            .client()
            .deploy(&handler, &module)
            .map(|r| print!("{}", crate::client::describe_report(&r))),
        Command::Rollback { admin, handler, .. } => admin
            .client()
            .rollback(&handler)
            .map(|r| print!("{}", crate::client::describe_report(&r))),
        Command::Status { admin, .. } => admin
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
        Command::Keygen { out } => keygen(&out),
        Command::Sign { key, out, module } => sign(&key, &module, out.as_deref()),
        Command::Check { module } => Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .and_then(|rt| crate::check::check(&rt, &module))
        .map(|report| print!("{report}")),
        Command::Test(args) => test(args),
    }
}

/// `warren keygen --out PREFIX`.
fn keygen(prefix: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (secret, public) = (with(".key"), with(".pub"));
    let key = crate::signing::SecretKey::generate();
    // create_new: never overwrite a key someone may already trust.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(|e| anyhow::anyhow!("cannot create key file {}: {e}", secret.display()))?;
    f.write_all(key.to_text().as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write key file {}: {e}", secret.display()))?;
    let pubkey = key.public().to_string();
    std::fs::write(&public, format!("{pubkey}\n"))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", public.display()))?;
    println!("secret key: {} (keep it off the hosts)", secret.display());
    println!("public key: {} ", public.display());
    println!("trust it with, in each host's config:\n  [deploy]\n  trusted_keys = [\"{pubkey}\"]");
    Ok(())
}

/// `warren sign --key FILE MODULE`.
fn sign(
    key: &std::path::Path,
    module: &std::path::Path,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let key = crate::signing::SecretKey::read(key)?;
    let bytes = std::fs::read(module)
        .with_context(|| format!("cannot read module {}", module.display()))?;
    let signed = crate::signing::sign(&bytes, &key)
        .with_context(|| format!("cannot sign module {}", module.display()))?;
    let dest = out.unwrap_or(module);
    // Written next to the destination and renamed over it: a host watching
    // that path never reads half a module.
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = dest
        .file_name()
        .map_or("module".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.signing-{}", std::process::id()));
    std::fs::write(&tmp, &signed).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    println!("signed:  {}", dest.display());
    println!("signer:  {}", key.public());
    println!("digest:  {}", crate::runtime::Digest::of(&signed));
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 minutes").unwrap_err().contains("unit"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
    }
}
