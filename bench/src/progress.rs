//! Progress on stderr, so that stdout carries only the results table.

use std::fmt::Arguments;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// One progress line, prefixed with the seconds since the bench started.
pub fn say(what: Arguments<'_>) {
    eprintln!("[bench {:>6.1}s] {what}", start().elapsed().as_secs_f64());
}

/// Says yes at most once per period: for progress lines in a tight loop.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    last: Instant,
}

impl Every {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: Instant::now(),
        }
    }

    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= self.period {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}
