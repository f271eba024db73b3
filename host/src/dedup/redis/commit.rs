//! A message's key-value commit in Redis: `kv_commit.lua` called with the
//! message's writes (and its lease, when it holds one), one EVALSHA per
//! message in the batch's pipeline, and with a read cache what the cache
//! keeps of it afterwards.

use std::time::{Duration, Instant};

use ::redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};

use super::{RedisStore, Via, evalsha};
use crate::dedup::kv::{self, Commit, KvOp, KvWrites};
use crate::dedup::read_cache::expiry;
use crate::dedup::{DONE, DedupError, Lease, MAX_TTL_MS, ttl_millis};

impl RedisStore {
    /// Commits each message's key-value writes, with its done-marker when
    /// it holds a lease, in one round trip: one result per message.
    pub(in crate::dedup) async fn commit_many(
        &self,
        items: &[(Option<&Lease>, &KvWrites)],
        window: Duration,
        check_only: bool,
    ) -> Vec<Result<Commit, DedupError>> {
        let prefix = &self.shared.prefix;
        // Each item's data keys, in op order.
        let data_keys: Vec<Vec<String>> = items
            .iter()
            .map(|(_, writes)| {
                let ns = &writes.namespace;
                let keys = writes
                    .ops
                    .iter()
                    .map(|op| kv::data_key(prefix, ns, op.key()));
                keys.collect()
            })
            .collect();
        // With a read cache, a commit goes over its tracking connection,
        // which then keeps the committed values (`read_cache.rs`).
        let tracked = match (&self.cache, check_only) {
            (Some(cache), false) => cache.track_commit(data_keys.concat()),
            _ => None,
        };
        let track = tracked.is_some();
        let mode = |lease: bool| match (check_only, lease, track) {
            (false, true, false) => "1",
            (false, true, true) => "1t",
            (false, false, false) => "0",
            (false, false, true) => "0t",
            (true, true, _) => "c1",
            (true, false, _) => "c0",
        };
        let window_ms = ttl_millis(window);
        let mut names = Vec::with_capacity(items.len());
        let calls = items
            .iter()
            .zip(&data_keys)
            .map(|((lease, writes), data)| {
                let index = kv::index_key(prefix, &writes.namespace);
                let key = match lease {
                    Some(l) => l.key.clone(),
                    None => index.clone(),
                };
                let mut key_refs = vec![key.as_str(), index.as_str()];
                key_refs.extend(data.iter().map(String::as_str));
                let mut cmd = evalsha(&self.shared.kv_commit, &key_refs, ops_size(&writes.ops));
                names.push(key);
                match lease {
                    Some(l) => cmd.arg(mode(true)).arg(&l.owner).arg(window_ms).arg(DONE),
                    None => cmd.arg(mode(false)).arg("").arg(window_ms).arg(DONE),
                };
                for op in &writes.ops {
                    op_args(&mut cmd, op);
                }
                cmd
            })
            .collect();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut via = tracked.as_ref().map(|t| Via {
            conn: t.conn.clone(),
            resent: false,
        });
        // Before the commit goes out: a TTL the ops set runs from no
        // later than this, so the cache lets go of such a key no later
        // than Redis does.
        let sent = Instant::now();
        let replies: Vec<Result<CommitReply, DedupError>> = self
            .eval_many::<Vec<Value>>(
                "kv commit",
                &self.shared.kv_commit,
                calls,
                &keys,
                via.as_mut(),
            )
            .await
            .into_iter()
            .map(|reply| {
                reply.and_then(|r| commit_reply(r).map_err(|e| self.error("kv commit", "-", &e)))
            })
            .collect();
        if let Some(tracked) = tracked {
            // Sent again after a NOSCRIPT, some commits ran out of the
            // batch's order: which one wrote a key last is then not known.
            let resent = via.is_some_and(|v| v.resent);
            let mut written = Vec::new();
            let mut unknown = Vec::new();
            for ((reply, data), (_, writes)) in replies.iter().zip(&data_keys).zip(items) {
                match reply {
                    Ok((1, _, values)) if !resent => {
                        written.extend(known_after(&writes.ops, data, sent));
                        written.extend(
                            values
                                .iter()
                                .map(|(k, v, pttl)| (k.clone(), v.clone(), expiry(*pttl))),
                        );
                    }
                    Ok((1, _, _)) => unknown.extend(data.iter().cloned()),
                    Ok(_) => {}
                    Err(_) => unknown.extend(data.iter().cloned()),
                }
            }
            tracked.finish(written, &unknown);
        } else if let (Some(cache), false) = (&self.cache, check_only) {
            // Whatever came back (a lost reply may hide a commit that went
            // in), this process's next read of a key it wrote goes to the
            // server: it reads its own writes without waiting for the push.
            cache.forget(data_keys.iter().flatten().map(String::as_str));
        }
        replies
            .into_iter()
            .map(|reply| {
                let (code, key, _) = reply?;
                Ok(match code {
                    1 => Commit::Done,
                    0 => Commit::Lost,
                    2 => Commit::Conflict(format!(
                        "key {key:?} changed before the message committed"
                    )),
                    _ => Commit::NotACounter(format!(
                        "key {key:?} does not hold a counter, or the counter would leave ±{}",
                        kv::MAX_COUNTER
                    )),
                })
            })
            .collect()
    }
}

/// What each data key holds after a commit of `ops` went in, for the keys
/// whose last op says so on its own (a set, a delete, a compare-and-swap;
/// not an increment, whose sum is the store's): the data key, its value
/// (none: absent) and when it expires. `kv_commit.lua` answers the others.
fn known_after(
    ops: &[KvOp],
    data: &[String],
    sent: Instant,
) -> Vec<(String, Option<Vec<u8>>, Option<Instant>)> {
    let mut last: Vec<(&str, &KvOp)> = Vec::with_capacity(ops.len());
    for (op, key) in ops.iter().zip(data) {
        match last.iter_mut().find(|(k, _)| *k == key.as_str()) {
            Some(slot) => slot.1 = op,
            None => last.push((key, op)),
        }
    }
    last.into_iter()
        .filter_map(|(key, op)| {
            let (value, expires) = match op {
                KvOp::Set { value, ttl_ms, .. } => (
                    Some(value.clone()),
                    ttl_ms.map(|t| sent + Duration::from_millis(t.clamp(1, MAX_TTL_MS))),
                ),
                KvOp::Delete { .. } => (None, None),
                KvOp::CompareAndSwap { new, .. } => (new.clone(), None),
                KvOp::Increment { .. } => return None,
            };
            Some((key.to_owned(), value, expires))
        })
        .collect()
}

/// What `kv_commit.lua` answers: its code, the key it names, and with a
/// read cache the value and PTTL of each written data key that an
/// increment left (see [`known_after`] for the others).
type CommitReply = (i64, String, Vec<(String, Option<Vec<u8>>, i64)>);

fn commit_reply(reply: Vec<Value>) -> RedisResult<CommitReply> {
    let bad = || RedisError::from((ErrorKind::TypeError, "kv commit: an unexpected reply"));
    let mut it = reply.into_iter();
    let code: i64 = ::redis::from_owned_redis_value(it.next().ok_or_else(bad)?)?;
    let key: String = ::redis::from_owned_redis_value(it.next().ok_or_else(bad)?)?;
    let mut values = Vec::new();
    while let Some(k) = it.next() {
        let k: String = ::redis::from_owned_redis_value(k)?;
        let v: Vec<u8> = ::redis::from_owned_redis_value(it.next().ok_or_else(bad)?)?;
        let pttl: i64 = ::redis::from_owned_redis_value(it.next().ok_or_else(bad)?)?;
        let value = match v.split_first() {
            Some((b'=', rest)) => Some(rest.to_vec()),
            Some((b'-', [])) => None,
            _ => return Err(bad()),
        };
        values.push((k, value, pttl));
    }
    Ok((code, key, values))
}

/// Adds `op` to a commit's arguments as `kv_commit.lua` reads them: its
/// kind, the key as the handler named it, and what the kind takes.
fn op_args(cmd: &mut Cmd, op: &KvOp) {
    match op {
        KvOp::Set { key, value, ttl_ms } => {
            cmd.arg("s").arg(key).arg(&value[..]);
            match ttl_ms {
                Some(t) => cmd.arg((*t).clamp(1, MAX_TTL_MS)),
                None => cmd.arg(""),
            };
        }
        KvOp::Delete { key } => {
            cmd.arg("d").arg(key);
        }
        KvOp::Increment { key, delta } => {
            cmd.arg("i").arg(key).arg(*delta);
        }
        KvOp::CompareAndSwap { key, expected, new } => {
            cmd.arg("c")
                .arg(key)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.as_deref().unwrap_or_default())
                .arg(if new.is_some() { "1" } else { "0" })
                .arg(new.as_deref().unwrap_or_default());
        }
    }
}

/// How many arguments, and about how many bytes of them, a commit of `ops`
/// adds after its keys: the command's buffers are sized once.
fn ops_size(ops: &[KvOp]) -> (usize, usize) {
    ops.iter().fold((5, 64), |(n, b), op| {
        let (args, bytes) = match op {
            KvOp::Set { value, .. } => (4, value.len() + 20),
            KvOp::Delete { .. } => (2, 0),
            KvOp::Increment { .. } => (3, 20),
            KvOp::CompareAndSwap { expected, new, .. } => (
                6,
                expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len),
            ),
        };
        (n + args, b + bytes + 1 + op.key().len())
    })
}
