//! Shared by `stamp-a` and `stamp-b`: two versions of one handler for the
//! hot-deploy tests. Each publishes `<VERSION> <input body>` to the config
//! key `out_routing_key` (default: the input routing key + `.out`) and acks,
//! so every output says which version handled it.

use warren_guest::{Handler, Message, Outbound, Outcome};

pub struct Stamp;

impl Handler for Stamp {
    fn handle(msg: Message) -> Outcome {
        let queue = warren_guest::config("out_routing_key")
            .unwrap_or_else(|| format!("{}.out", msg.routing_key));
        let mut body = crate::VERSION.as_bytes().to_vec();
        body.push(b' ');
        body.extend_from_slice(&msg.body);
        match warren_guest::publish(Outbound::new("", queue, body)) {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::reject(format!("cannot publish: {e:?}")),
        }
    }
}

warren_guest::export!(Stamp);
