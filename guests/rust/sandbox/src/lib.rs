//! A handler that misbehaves on request, for testing the sandbox and the
//! consumer's outcome handling. The mode is the `mode` config key if set,
//! otherwise the message body:
//!
//! When the `out_routing_key` config key is set, every mode that acks first
//! publishes a record of the message to that queue (through the default
//! exchange): the body, or for `retry-twice` the attempt that acked.
//!
//! - `ack`: ack.
//! - `count`: publish `count N` to `sandbox.count`, N being how many
//!   messages this instance has served, then ack.
//! - `panic`: panic (a trap).
//! - `loop`: spin forever (stopped by the CPU deadline).
//! - `oom`: allocate until the memory cap stops it.
//! - `recurse`: recurse until the stack overflows.
//! - `escape`: try to read files, list `/`, read environment variables and
//!   open a socket; publish what it found to `sandbox.report` and ack.
//! - `logspam`: write 10,000 log lines and as much to stdout, then ack.
//! - `retry`: ask to be retried after `retry_delay_ms` (config, default 100).
//! - `retry-twice`: retry on attempts 1 and 2, ack on the third.
//! - `reject`: reject with a reason.
//! - `publish-denied`: publish to an exchange not allowed, report the error
//!   as the reject reason.
//! - `publish3`: publish three messages to `out_routing_key` (default
//!   `sandbox.out`) and ack.
//! - `sleep:N...`: busy-wait N milliseconds of wall time, then ack.
//! - `sleep N...`: sleep N milliseconds in `std::thread::sleep` (a blocking
//!   WASI poll, where no wasm code runs for the epoch to stop), then ack.
//! - `scribble`: count the pages of two static arrays (one in the data
//!   image, every byte 0xA5; one zero-initialised) that differ from how the
//!   module starts, publish `stale N` to `sandbox.scribble`, then write to
//!   every other page of both: far more separate runs of dirty pages than
//!   one scan of the host's slot reset reports at a time. A fresh instance
//!   must always see `stale 0`.

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use warren_guest::{Handler, Level, Message, Outbound, Outcome};

struct Sandbox;

/// Messages this instance has served (`count` mode): 1 in a fresh instance.
static SERVED: AtomicU32 = AtomicU32::new(0);

/// Pages per array in `scribble` mode.
const SCRIBBLE_PAGES: usize = 96;
const PAGE: usize = 4096;
/// Page-aligned, so that writing to every other page leaves separate runs.
#[repr(align(4096))]
struct Pages(UnsafeCell<[u8; SCRIBBLE_PAGES * PAGE]>);
// SAFETY: a guest instance is single-threaded and runs one call at a time.
unsafe impl Sync for Pages {}
/// In the module's data image: every byte starts as 0xA5.
static IMAGED: Pages = Pages(UnsafeCell::new([0xA5; SCRIBBLE_PAGES * PAGE]));
/// Zero-initialised: past the data image.
static ZEROED: Pages = Pages(UnsafeCell::new([0; SCRIBBLE_PAGES * PAGE]));

impl Handler for Sandbox {
    fn handle(msg: Message) -> Outcome {
        let mode = warren_guest::config("mode")
            .unwrap_or_else(|| String::from_utf8_lossy(&msg.body).trim().to_string());
        match mode.as_str() {
            "ack" => ack_with(msg.body),
            "count" => {
                let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
                match warren_guest::publish(Outbound::new(
                    "",
                    "sandbox.count",
                    format!("count {n}"),
                )) {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::reject(format!("{e:?}")),
                }
            }
            "scribble" => {
                let stale = scribble();
                let out = Outbound::new("", "sandbox.scribble", format!("stale {stale}"));
                match warren_guest::publish(out) {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::reject(format!("{e:?}")),
                }
            }
            "panic" => panic!("the sandbox guest panics on purpose"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recurse" => Outcome::reject(format!("depth {}", recurse(black_box(1)))),
            "escape" => {
                let report = escape_report();
                let out = Outbound::new("", "sandbox.report", report.clone());
                match warren_guest::publish(out) {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::reject(format!("{report}; publish failed: {e:?}")),
                }
            }
            "logspam" => {
                for i in 0..10_000 {
                    warren_guest::log(
                        Level::Info,
                        &format!("log line {i} of a guest that will not stop talking"),
                    );
                    println!("stdout line {i} of a guest that will not stop talking");
                }
                Outcome::Ack
            }
            "retry" => {
                let delay = warren_guest::config("retry_delay_ms")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(100);
                Outcome::retry_after(delay, "the sandbox guest asked for a retry")
            }
            "retry-twice" if msg.attempt < 3 => {
                Outcome::retry(format!("attempt {} is too early", msg.attempt))
            }
            "retry-twice" => ack_with(format!("attempt {}", msg.attempt).into_bytes()),
            "reject" => Outcome::reject("the sandbox guest rejects this on purpose"),
            "publish-denied" => {
                match warren_guest::publish(Outbound::new("forbidden", "x", "nope")) {
                    Ok(()) => Outcome::Ack,
                    Err(e) => Outcome::reject(format!("publish refused: {e:?}")),
                }
            }
            "publish3" => {
                let queue =
                    warren_guest::config("out_routing_key").unwrap_or_else(|| "sandbox.out".into());
                for i in 0..3 {
                    if let Err(e) = warren_guest::publish(Outbound::new(
                        "",
                        queue.as_str(),
                        format!("part {i}"),
                    )) {
                        return Outcome::reject(format!("publish {i} refused: {e:?}"));
                    }
                }
                Outcome::Ack
            }
            other if other.starts_with("sleep ") => {
                // Anything after the number is ignored, so that tests can
                // make bodies unique.
                let ms = other.split_whitespace().nth(1).and_then(|n| n.parse().ok());
                match ms {
                    Some(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        ack_with(msg.body)
                    }
                    None => Outcome::reject(format!("not a sleep in milliseconds: {other:?}")),
                }
            }
            // `sleep:N`, optionally followed by anything that is not a digit
            // (so that tests can make bodies unique).
            other => match other.strip_prefix("sleep:").and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            }) {
                Some(ms) => {
                    let until = Instant::now() + Duration::from_millis(ms);
                    while Instant::now() < until {
                        black_box(());
                    }
                    ack_with(msg.body)
                }
                None => Outcome::reject(format!("unknown sandbox mode {other:?}")),
            },
        }
    }
}

/// Acks, first publishing `record` to `out_routing_key` when that is set.
fn ack_with(record: Vec<u8>) -> Outcome {
    let Some(queue) = warren_guest::config("out_routing_key") else {
        return Outcome::Ack;
    };
    match warren_guest::publish(Outbound::new("", queue, record)) {
        Ok(()) => Outcome::Ack,
        Err(e) => Outcome::reject(format!("cannot publish the record: {e:?}")),
    }
}

/// Counts the pages of `IMAGED` and `ZEROED` that are not as the module
/// starts them, then writes to every other page of both.
fn scribble() -> usize {
    // SAFETY: a guest instance runs one call at a time, and no reference to
    // either array outlives this function.
    let (imaged, zeroed) = unsafe { (&mut *IMAGED.0.get(), &mut *ZEROED.0.get()) };
    let mut stale = 0;
    for (array, initial) in [(&mut *imaged, 0xA5u8), (&mut *zeroed, 0)] {
        stale += array
            .chunks(PAGE)
            .filter(|page| page.iter().any(|&b| b != initial))
            .count();
    }
    for array in [imaged, zeroed] {
        for page in array.chunks_mut(PAGE).step_by(2) {
            page[0] = black_box(0x5A);
            page[PAGE / 2] = black_box(0x5A);
        }
    }
    stale
}

/// Recursion on scalars, which live in wasm locals and so on the host's
/// native stack, where wasmtime's stack limit catches them. (A guest whose
/// frames live in linear memory overruns its own shadow stack first, which
/// shows up as an out-of-bounds trap.)
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == 0 {
        0
    } else {
        recurse(black_box(depth + 1)).wrapping_add(depth)
    }
}

/// Tries every kind of ambient authority and says what it got, one
/// `name=result` per line.
fn escape_report() -> String {
    let mut lines = Vec::new();
    lines.push(format!(
        "read_file={:?}",
        std::fs::read_to_string("/etc/passwd")
            .map(|s| s.len())
            .map_err(|e| e.kind())
    ));
    lines.push(format!(
        "read_dir={:?}",
        std::fs::read_dir("/")
            .map(|d| d.count())
            .map_err(|e| e.kind())
    ));
    lines.push(format!(
        "cwd_file={:?}",
        std::fs::read("Cargo.toml")
            .map(|b| b.len())
            .map_err(|e| e.kind())
    ));
    lines.push(format!("env_home={:?}", std::env::var("HOME").ok()));
    lines.push(format!("env_count={}", std::env::vars().count()));
    lines.push(format!("args_count={}", std::env::args().count()));
    lines.push(format!(
        "tcp={:?}",
        std::net::TcpStream::connect("127.0.0.1:5672")
            .map(|_| "connected")
            .map_err(|e| e.kind())
    ));
    lines.join("\n")
}

warren_guest::export!(Sandbox);
