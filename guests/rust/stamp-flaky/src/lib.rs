//! Version c of the stamp handler, a bad new version for the canary tests:
//! it traps on the messages whose body hashes (FNV-1a 64) to 0, 1 or 2
//! modulo 10, about 30% of them, and stamps the others like `stamp-a` and
//! `stamp-b`. The choice depends on the body only, so a test can tell
//! which inputs trap, and a retry of one on this version traps again.

use warren_guest::{Handler, Message, Outbound, Outcome};

const VERSION: &str = "v-c";

/// Whether this version traps on `body`; the tests repeat this function.
pub fn traps(body: &[u8]) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 10 < 3
}

pub struct Flaky;

impl Handler for Flaky {
    fn handle(msg: Message) -> Outcome {
        if traps(&msg.body) {
            // A panic is a trap (`unreachable`) in the sandbox.
            panic!("stamp v-c fails on this message");
        }
        let queue = warren_guest::config("out_routing_key")
            .unwrap_or_else(|| format!("{}.out", msg.routing_key));
        let mut body = VERSION.as_bytes().to_vec();
        body.push(b' ');
        body.extend_from_slice(&msg.body);
        match warren_guest::publish(Outbound::new("", queue, body)) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::reject(format!("cannot publish: {e:?}")),
        }
    }
}

warren_guest::export!(Flaky);
