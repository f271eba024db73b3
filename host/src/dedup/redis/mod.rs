//! The Redis dedup store: one connection (`conn`: to one server, to the
//! master Sentinel names, or to a Cluster) shared by every caller in the
//! process, and the four protocol steps as Lua scripts called by SHA. Every
//! step takes a batch, and its script loops over the batch's keys: one
//! EVALSHA per batch (per hash tag in a Cluster), so the per-message cost
//! is the script's work in Redis, not a round trip or a script call. A key
//! whose value has another type fails alone (the scripts call Redis with
//! `pcall` where that can happen and answer that key with the error).
//!
//! `commit.rs` holds the key-value commit (`kv_commit.lua`).
//!
//! It owns the connection, its timeouts and the mapping of Redis errors onto
//! [`DedupError`]. It does not retry a failed call or decide what an
//! unavailable store means for a message; the caller does.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, Value};

use super::conn::{Conn, mask_credentials, reply, resp3_client};
use super::kv;
use super::read_cache::{CacheStats, ReadCache};
use super::{Claim, DONE, DedupError, Lease, new_owner, ttl_millis};
use crate::config::{RedisServers, TlsPem};

mod commit;

/// The bound on one whole store call, including waiting for a reconnect
/// (asking the sentinels again, after a failover) and reloading a script
/// after NOSCRIPT: a dead Redis never holds a message longer than this.
const CALL_DEADLINE: Duration = Duration::from_secs(4);

/// The Redis store. Cheap to clone: the connection and the scripts are
/// shared.
#[derive(Clone)]
pub struct RedisStore {
    /// Cloning the connection shares it; every call clones it because
    /// sending needs `&mut`.
    conn: Conn,
    shared: Arc<Shared>,
    /// Committed key-value values kept in the process (one server only):
    /// see `read_cache.rs`.
    cache: Option<Arc<ReadCache>>,
}

/// What never changes after connecting.
struct Shared {
    prefix: String,
    /// The deployment, without credentials: for logs and error messages.
    server: String,
    claim: Script,
    renew: Script,
    complete: Script,
    release: Script,
    kv_commit: Script,
    kv_list: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.shared.server)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `servers` and loads the scripts, all within a few
    /// seconds.
    pub(super) async fn connect(
        servers: RedisServers<'_>,
        prefix: &str,
        tls: &TlsPem,
        read_cache: usize,
    ) -> Result<Self, DedupError> {
        let connect = async {
            let (conn, server) = Conn::connect(servers, tls).await?;
            // Sentinel and Cluster: no cache (a failover or a moved slot
            // would need its own tracking connection followed; reads go to
            // the master or the key's node every time).
            let cache = match servers {
                RedisServers::Single(url) if read_cache > 0 => Some(ReadCache::new(
                    resp3_client(url, tls)?,
                    server.clone(),
                    read_cache,
                )),
                _ => None,
            };
            let shared = Arc::new(Shared {
                prefix: prefix.to_owned(),
                server,
                claim: Script::new(include_str!("claim.lua")),
                renew: Script::new(include_str!("renew.lua")),
                complete: Script::new(include_str!("complete.lua")),
                release: Script::new(include_str!("release.lua")),
                kv_commit: Script::new(include_str!("kv_commit.lua")),
                kv_list: Script::new(include_str!("kv_list.lua")),
            });
            // Loading up front turns a broken server or a script error
            // into a start-up failure; later calls go by SHA and reload on
            // NOSCRIPT (after a restart or a failover) by themselves.
            for script in [
                &shared.claim,
                &shared.renew,
                &shared.complete,
                &shared.release,
                &shared.kv_commit,
                &shared.kv_list,
            ] {
                conn.load(script).await.map_err(|e| {
                    DedupError::Unavailable(format!("cannot connect to {}: {e}", shared.server))
                })?;
            }
            Ok::<_, DedupError>(Self {
                conn,
                shared,
                cache,
            })
        };
        let store = match tokio::time::timeout(CALL_DEADLINE, connect).await {
            Ok(store) => store?,
            Err(_) => {
                let what = match servers {
                    RedisServers::Single(url) => mask_credentials(url),
                    RedisServers::Sentinel { master_name, .. } => {
                        format!("sentinel master {master_name}")
                    }
                    RedisServers::Cluster(urls) => {
                        let urls: Vec<String> = urls.iter().map(|u| mask_credentials(u)).collect();
                        format!("cluster {}", urls.join(", "))
                    }
                };
                return Err(DedupError::Unavailable(format!(
                    "cannot connect to {what}: timed out after {CALL_DEADLINE:?}"
                )));
            }
        };
        tracing::debug!(server = %store.shared.server, prefix, "connected to the dedup store");
        Ok(store)
    }

    /// How many key-value reads the read cache answered and how many went
    /// to the server; none without a cache.
    pub(super) fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// The server's id of the read cache's tracking connection, while
    /// there is one.
    pub(super) fn cache_client_id(&self) -> Option<i64> {
        self.cache.as_ref().and_then(|c| c.client_id())
    }

    /// Whether keys carry a hash tag (Redis Cluster): see [`super::Store::key_in`].
    pub(super) fn cluster(&self) -> bool {
        self.conn.cluster()
    }

    pub(super) fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "redis {} (prefix {})",
            self.shared.server, self.shared.prefix
        )
    }

    /// The fencing counter the claims of `key` take their tokens from
    /// (`claim.lua`): `<prefix>::fence` on one server and Sentinel, one for
    /// the whole store; `<prefix>:{<tag>}::fence` on a Cluster, one per hash
    /// tag (a handler's key-value namespace), in the slot of the keys it
    /// counts for, as a script's keys must share one (the config refuses
    /// an empty namespace or one with braces, so the tag is always there).
    /// No key from [`super::Store::key_in`] is named so: its handler part
    /// is never empty (the config refuses an empty handler name). One
    /// counter for many keys costs Redis one key in all, where a counter per key was a second key per message for the whole
    /// dedup window; a token is still larger than every token handed out
    /// before it, for that key as for any other. The counter expires a
    /// lease after the last claim that set it to the clock (claim.lua):
    /// losing it costs nothing.
    pub(super) fn counter(&self, key: &str) -> String {
        let prefix = &self.shared.prefix;
        if self.conn.cluster() {
            format!("{prefix}:{{{}}}{COUNTER_SUFFIX}", hash_tag(key))
        } else {
            format!("{prefix}{COUNTER_SUFFIX}")
        }
    }

    /// Claims every key in one round trip: one result per key, in order.
    pub(super) async fn claim_many(
        &self,
        keys: &[&str],
        lease: Duration,
    ) -> Vec<Result<Claim, DedupError>> {
        let lease_ms = ttl_millis(lease);
        let owners: Vec<String> = keys.iter().map(|_| new_owner()).collect();
        let replies = self
            .eval_batch("claim", &self.shared.claim, keys, &owners, true, |cmd| {
                cmd.arg(lease_ms).arg(DONE);
            })
            .await;
        replies
            .into_iter()
            .zip(keys.iter().zip(owners))
            .map(|(reply, (key, owner))| {
                let (outcome, value) = ::redis::from_owned_redis_value::<(i64, i64)>(reply?)
                    .map_err(|e| self.error("claim", key, &e))?;
                claim_outcome(key, owner, outcome, value, lease_ms)
            })
            .collect()
    }

    /// Renews every lease in one round trip: one result per lease.
    pub(super) async fn renew_many(
        &self,
        leases: &[&Lease],
        ttl: Duration,
    ) -> Vec<Result<bool, DedupError>> {
        let ttl_ms = ttl_millis(ttl);
        self.owned_many("renew", &self.shared.renew, leases, |cmd| {
            cmd.arg(ttl_ms);
        })
        .await
    }

    /// Marks every lease's key done in one round trip: one result per lease.
    pub(super) async fn complete_many(
        &self,
        leases: &[&Lease],
        window: Duration,
    ) -> Vec<Result<bool, DedupError>> {
        let window_ms = ttl_millis(window);
        self.owned_many("complete", &self.shared.complete, leases, |cmd| {
            cmd.arg(window_ms).arg(DONE);
        })
        .await
    }

    /// Releases every lease in one round trip: one result per lease.
    pub(super) async fn release_many(&self, leases: &[&Lease]) -> Vec<Result<bool, DedupError>> {
        self.owned_many("release", &self.shared.release, leases, |_| {})
            .await
    }

    /// Runs `script` over the leases' keys with the owner tokens after the
    /// arguments `args` adds: one flag per lease.
    async fn owned_many(
        &self,
        op: &'static str,
        script: &Script,
        leases: &[&Lease],
        args: impl Fn(&mut Cmd),
    ) -> Vec<Result<bool, DedupError>> {
        let keys: Vec<&str> = leases.iter().map(|l| l.key.as_str()).collect();
        let owners: Vec<&str> = leases.iter().map(|l| l.owner.as_str()).collect();
        self.eval_batch(op, script, &keys, &owners, false, args)
            .await
            .into_iter()
            .zip(&keys)
            .map(|(reply, key)| {
                ::redis::from_owned_redis_value::<bool>(reply?).map_err(|e| self.error(op, key, &e))
            })
            .collect()
    }

    /// Runs one of the batch scripts (`claim.lua`, `renew.lua`,
    /// `complete.lua`, `release.lua`) over `keys`: the script's keys are
    /// the call's fencing counter when `with_counter` (claims; see
    /// [`RedisStore::counter`]) and then each key, its arguments what
    /// `args` adds followed by the owner token of each key.
    /// Returns each key's own reply, in order; an error reply the script
    /// gave one key (a value of another type) is that key's error alone.
    ///
    /// One call carries the whole batch, so Redis runs one script per batch
    /// instead of one per key. In a Cluster a script's keys must share a
    /// slot: the batch is split by hash tag (a handler's keys share its
    /// namespace's tag, `Store::key_in`), and the calls go out together.
    async fn eval_batch<O: AsRef<str>>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&str],
        owners: &[O],
        with_counter: bool,
        args: impl Fn(&mut Cmd),
    ) -> Vec<Result<Value, DedupError>> {
        let groups = batch_calls(keys, self.conn.cluster());
        let mut calls = Vec::with_capacity(groups.len());
        let mut labels = Vec::with_capacity(groups.len());
        for group in &groups {
            let counter = with_counter.then(|| self.counter(keys[group[0]]));
            let counter_len = counter.as_ref().map_or(0, String::len);
            // "EVALSHA", the SHA, the key count, the counter and what
            // `args` adds (at most a number and the done marker), then per
            // key its name and its owner: one allocation per buffer.
            let bytes = 100
                + counter_len
                + group
                    .iter()
                    .map(|&i| keys[i].len() + 6 + owners[i].as_ref().len())
                    .sum::<usize>();
            let mut cmd = Cmd::with_capacity(3 + 1 + 2 + group.len() * 2, bytes);
            cmd.arg("EVALSHA")
                .arg(script.get_hash())
                .arg(group.len() + usize::from(counter.is_some()));
            if let Some(counter) = &counter {
                cmd.arg(counter.as_str());
            }
            for &i in group {
                cmd.arg(keys[i]);
            }
            args(&mut cmd);
            for &i in group {
                cmd.arg(owners[i].as_ref());
            }
            calls.push(cmd);
            labels.push(match group.len() {
                1 => keys[group[0]].to_owned(),
                n => format!("{} and {} more", keys[group[0]], n - 1),
            });
        }
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let replies = self
            .eval_many::<Vec<Value>>(op, script, calls, &labels, None)
            .await;
        let mut out: Vec<Option<Result<Value, DedupError>>> = keys.iter().map(|_| None).collect();
        for (group, reply) in groups.iter().zip(replies) {
            match reply {
                Ok(values) if values.len() == group.len() => {
                    for (&i, value) in group.iter().zip(values) {
                        out[i] = Some(match value {
                            Value::ServerError(err) => Err(self.error(op, keys[i], &err.into())),
                            value => Ok(value),
                        });
                    }
                }
                Ok(values) => {
                    for &i in group {
                        out[i] = Some(Err(DedupError::Unavailable(format!(
                            "{op} of key {} on {}: the script answered {} replies for {} keys",
                            keys[i],
                            self.shared.server,
                            values.len(),
                            group.len()
                        ))));
                    }
                }
                Err(err) => {
                    // The whole call failed (the connection, the deadline):
                    // every key of it, with the call's error, which names
                    // its first key and how many more it carried.
                    let why = match &err {
                        DedupError::Unavailable(why) => why.clone(),
                        other => other.to_string(),
                    };
                    for &i in group {
                        out[i] = Some(Err(DedupError::Unavailable(why.clone())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(DedupError::Unavailable("the store answered nothing".into()))
                })
            })
            .collect()
    }

    /// Sends `calls` (EVALSHAs of `script`, one per entry of `keys`, which
    /// names what the call is about in its errors) as one pipeline and
    /// reads one reply per call, all within [`CALL_DEADLINE`].
    ///
    /// A call that finds the script missing (NOSCRIPT: Redis restarted or
    /// its script cache was flushed) did nothing, so the script is loaded
    /// and only those calls are sent again. An error reply fails its own
    /// call; a broken connection or the deadline fails them all.
    async fn eval_many<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        calls: Vec<Cmd>,
        keys: &[&str],
        mut via: Option<&mut Via>,
    ) -> Vec<Result<T, DedupError>> {
        let mut results: Vec<Option<Result<T, DedupError>>> = keys.iter().map(|_| None).collect();
        if calls.is_empty() {
            return Vec::new();
        }
        let exchange = async {
            // Call `i` of the batch is command `todo[j]` of `pipe`.
            let mut todo: Vec<usize> = (0..calls.len()).collect();
            let mut pipe = ::redis::pipe();
            for cmd in calls {
                pipe.add_command(cmd);
            }
            for round in 0..2 {
                let replies = match &via {
                    Some(via) => send_on(via.conn.clone(), &pipe, todo.len()).await?,
                    None => self.conn.send(&pipe, todo.len()).await?,
                };
                if replies.len() != todo.len() {
                    return Err(RedisError::from((
                        ErrorKind::ResponseError,
                        "pipeline answered with the wrong number of replies",
                    )));
                }
                let mut missing = Vec::new();
                let mut again = ::redis::pipe();
                for ((i, cmd), reply) in todo.iter().copied().zip(pipe.cmd_iter()).zip(replies) {
                    let result = match reply {
                        Err(e) if e.kind() == ErrorKind::NoScriptError && round == 0 => {
                            missing.push(i);
                            again.add_command(cmd.clone());
                            continue;
                        }
                        Err(e) => Err(e),
                        Ok(value) => ::redis::from_owned_redis_value(value),
                    };
                    results[i] = Some(result.map_err(|e| self.error(op, keys[i], &e)));
                }
                if missing.is_empty() {
                    break;
                }
                if let Some(via) = &mut via {
                    via.resent = true;
                }
                self.conn.load(script).await?;
                (todo, pipe) = (missing, again);
            }
            Ok(())
        };
        let failed = match tokio::time::timeout(CALL_DEADLINE, exchange).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("timed out after {CALL_DEADLINE:?}")),
        };
        results
            .into_iter()
            .zip(keys)
            .map(|(result, key)| {
                result.unwrap_or_else(|| {
                    let why = failed.as_deref().unwrap_or("no reply");
                    Err(DedupError::Unavailable(format!(
                        "{op} of key {key} on {}: {why}",
                        self.shared.server
                    )))
                })
            })
            .collect()
    }

    /// The error for one failed call on `key`: about that key, or about the
    /// store as a whole.
    fn error(&self, op: &str, key: &str, err: &RedisError) -> DedupError {
        if is_about_the_key(err) {
            DedupError::Rejected {
                key: key.to_owned(),
                reason: format!("{op}: {err}"),
            }
        } else {
            DedupError::Unavailable(format!(
                "{op} of key {key} on {}: {err}",
                self.shared.server
            ))
        }
    }

    /// The committed value of one key of a namespace.
    pub(super) async fn kv_get(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, DedupError> {
        let name = kv::data_key(&self.shared.prefix, namespace, key);
        if let Some(cache) = &self.cache {
            if let Some(value) = cache.hit(&name) {
                return Ok(value);
            }
            if let Ok(Some(value)) = tokio::time::timeout(CALL_DEADLINE, cache.get(&name)).await {
                return Ok(value);
            }
        }
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(&name);
        match tokio::time::timeout(CALL_DEADLINE, self.conn.query::<Option<Vec<u8>>>(&cmd)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error("kv get", &name, &e)),
            Err(_) => Err(DedupError::Unavailable(format!(
                "kv get of key {name} on {}: timed out after {CALL_DEADLINE:?}",
                self.shared.server
            ))),
        }
    }

    /// Up to `limit` committed keys of a namespace that start with
    /// `prefix`, in byte order.
    pub(super) async fn kv_list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, DedupError> {
        let index = kv::index_key(&self.shared.prefix, namespace);
        let mut cmd = evalsha(&self.shared.kv_list, &[&index], (3, 64 + prefix.len()));
        cmd.arg(prefix)
            .arg(kv::data_prefix(&self.shared.prefix, namespace))
            .arg(limit.max(1));
        self.eval_many::<Vec<String>>("kv list", &self.shared.kv_list, vec![cmd], &[&index], None)
            .await
            .pop()
            .unwrap_or_else(|| Err(DedupError::Unavailable("the store answered nothing".into())))
    }

    /// Whether the store takes writes now (a master that says it is one,
    /// a Cluster serving every slot).
    pub(super) async fn ping(&self) -> Result<(), DedupError> {
        match tokio::time::timeout(CALL_DEADLINE, self.conn.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(DedupError::Unavailable(format!(
                "ping on {}: {err}",
                self.shared.server
            ))),
            Err(_) => Err(DedupError::Unavailable(format!(
                "ping on {}: timed out after {CALL_DEADLINE:?}",
                self.shared.server
            ))),
        }
    }
}

/// The read cache's tracking connection, for a commit sent over it, and
/// whether some of the commits had to be sent again (NOSCRIPT).
struct Via {
    conn: MultiplexedConnection,
    resent: bool,
}

/// Sends a pipeline of `n` commands on `conn`: one reply per command, an
/// error reply as an `Err` of its own (as [`Conn::send`]).
async fn send_on(
    mut conn: MultiplexedConnection,
    pipe: &::redis::Pipeline,
    n: usize,
) -> RedisResult<Vec<RedisResult<Value>>> {
    let replies = conn.req_packed_commands(pipe, 0, n).await?;
    Ok(replies.into_iter().map(reply).collect())
}

/// How many keys one batch script call takes at most: a script blocks
/// Redis while it runs, so a very large batch goes as several calls (about
/// 5 µs of the server's time per key).
const KEYS_PER_CALL: usize = 128;

/// What the fencing counter's name adds to the prefix (and hash tag):
/// [`RedisStore::counter`].
const COUNTER_SUFFIX: &str = "::fence";

/// The calls a batch of `keys` goes as: the indices of the keys of each
/// call, in order. One call per [`KEYS_PER_CALL`] keys; in a Cluster
/// (`cluster`) only keys with the same hash tag share a call, as a
/// script's keys must share a slot.
fn batch_calls(keys: &[&str], cluster: bool) -> Vec<Vec<usize>> {
    if !cluster {
        return (0..keys.len())
            .step_by(KEYS_PER_CALL)
            .map(|first| (first..keys.len().min(first + KEYS_PER_CALL)).collect())
            .collect();
    }
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut tags: Vec<(&str, usize)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let tag = hash_tag(key);
        match tags
            .iter()
            .rev()
            .find(|(t, c)| *t == tag && calls[*c].len() < KEYS_PER_CALL)
        {
            Some(&(_, c)) => calls[c].push(i),
            None => {
                tags.push((tag, calls.len()));
                calls.push(vec![i]);
            }
        }
    }
    calls
}

/// The part of `key` Redis Cluster hashes for its slot: what is between
/// the first `{` and the first `}` after it when that is not empty, the
/// whole key otherwise.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// An EVALSHA of `script` on `keys`, to which the caller adds the arguments.
/// `more` is how many arguments and bytes of them the caller will add:
/// with them counted the command is built in one allocation of each of
/// its buffers instead of growing them argument by argument.
fn evalsha(script: &Script, keys: &[&str], more: (usize, usize)) -> Cmd {
    let bytes = 7 + 40 + 4 + keys.iter().map(|k| k.len()).sum::<usize>() + more.1;
    let mut cmd = Cmd::with_capacity(3 + keys.len() + more.0, bytes);
    cmd.arg("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// What claim.lua's reply `{outcome, value}` means.
fn claim_outcome(
    key: &str,
    owner: String,
    outcome: i64,
    value: i64,
    lease_ms: u64,
) -> Result<Claim, DedupError> {
    match outcome {
        1 => {
            let fencing_token = u64::try_from(value).map_err(|_| DedupError::Rejected {
                key: key.to_owned(),
                reason: format!("the claim answered a negative fencing token ({value})"),
            })?;
            Ok(Claim::Acquired(Lease {
                key: key.to_owned(),
                owner,
                fencing_token,
            }))
        }
        2 => Ok(Claim::Done),
        3 => {
            // PTTL is -1 only if a foreign writer left the key without an
            // expiry; waiting one lease is then as good a guess as any.
            let millis = u64::try_from(value).map_or(lease_ms, |ms| ms.max(1));
            Ok(Claim::Busy {
                retry_after: Duration::from_millis(millis),
            })
        }
        other => Err(DedupError::Rejected {
            key: key.to_owned(),
            reason: format!("claim script returned unknown outcome {other}"),
        }),
    }
}

/// Whether an error concerns the one key (it holds a value of another type,
/// or a reply we cannot read) rather than the store as a whole. Everything
/// else (I/O, timeouts, LOADING, READONLY, OOM, NOPERM, a busy script, ...)
/// makes the store unusable for every key, so it is `Unavailable`.
fn is_about_the_key(err: &RedisError) -> bool {
    err.code() == Some("WRONGTYPE") || err.kind() == ErrorKind::TypeError
}

#[cfg(test)]
mod tests {
    use ::redis::IntoConnectionInfo;

    use super::super::conn::server_name;
    use super::{KEYS_PER_CALL, batch_calls, hash_tag, mask_credentials};

    #[test]
    fn server_name_is_canonical_and_has_no_credentials() {
        let name = |url: &str| server_name(&url.into_connection_info().expect("a valid url"));
        assert_eq!(name("redis://127.0.0.1"), "redis://127.0.0.1:6379/0");
        assert_eq!(
            name("redis://user:secret@cache:6380/3"),
            "redis://cache:6380/3"
        );
        assert_eq!(
            name("redis+unix:///run/redis.sock?db=2"),
            "redis+unix:///run/redis.sock?db=2"
        );
    }

    #[test]
    fn a_batch_is_one_call_per_hash_tag_in_a_cluster_and_one_per_128_keys() {
        let keys: Vec<String> = (0..300).map(|i| format!("w:orders:m-{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let calls = batch_calls(&refs, false);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            [KEYS_PER_CALL, KEYS_PER_CALL, 300 - 2 * KEYS_PER_CALL]
        );
        assert_eq!(
            calls.concat(),
            (0..300).collect::<Vec<_>>(),
            "every key once, in order"
        );
        assert!(batch_calls(&[], false).is_empty());
        assert!(batch_calls(&[], true).is_empty());

        let tagged = [
            "w:{orders}:orders:a",
            "w:{refunds}:refunds:a",
            "w:{orders}:orders:b",
            "w:{}:x",
            "w:{}:x",
            "w:{orders}:orders:c",
        ];
        assert_eq!(
            batch_calls(&tagged, true),
            [vec![0, 2, 5], vec![1], vec![3, 4]],
            "keys share a call only with their own tag; an empty tag hashes the whole key"
        );
        let many: Vec<String> = (0..200)
            .map(|i| format!("w:{{orders}}:orders:m-{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let calls = batch_calls(&many, true);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            [KEYS_PER_CALL, 72]
        );
    }

    #[test]
    fn hash_tag_follows_the_cluster_rule() {
        assert_eq!(hash_tag("w:{orders}:orders:m-1"), "orders");
        assert_eq!(hash_tag("{a}{b}"), "a");
        assert_eq!(hash_tag("w:{}:x"), "w:{}:x");
        assert_eq!(hash_tag("w:{open"), "w:{open");
        assert_eq!(hash_tag("w:}{x}"), "x");
        assert_eq!(hash_tag("plain"), "plain");
    }

    #[test]
    fn mask_credentials_hides_user_and_password() {
        assert_eq!(
            mask_credentials("redis://u:p@w@host:x/0"),
            "redis://***@host:x/0"
        );
        assert_eq!(mask_credentials("redis://host:x/0"), "redis://host:x/0");
        assert_eq!(mask_credentials("not a url"), "not a url");
    }
}
