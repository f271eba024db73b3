//! The Redis dedup store: one `ConnectionManager` (a multiplexed,
//! auto-reconnecting connection) shared by every caller in the process, and
//! the four protocol steps as Lua scripts called by SHA.
//!
//! It owns the connection, its timeouts and the mapping of Redis errors onto
//! [`DedupError`]. It does not retry a failed call or decide what an
//! unavailable store means for a message; the caller does.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ConnectionAddr, ErrorKind, FromRedisValue, RedisError, Script};

use super::{Claim, DONE, DedupError, Lease, fence_key, new_owner, ttl_millis};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on one whole store call, including waiting for a reconnect and
/// reloading a script after NOSCRIPT: a dead Redis never holds a message
/// longer than this.
const CALL_DEADLINE: Duration = Duration::from_secs(4);

/// The Redis store. Cheap to clone: the connection and the scripts are
/// shared.
#[derive(Clone)]
pub struct RedisStore {
    /// Cloning a `ConnectionManager` shares its one connection; every call
    /// clones it because sending needs `&mut`.
    conn: ConnectionManager,
    shared: Arc<Shared>,
}

/// What never changes after connecting.
struct Shared {
    prefix: String,
    /// The server as `redis://host:port/db`, without credentials: for logs
    /// and error messages.
    server: String,
    claim: Script,
    renew: Script,
    complete: Script,
    release: Script,
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
    /// Connects to `url` and loads the scripts, all within a few seconds.
    pub(super) async fn connect(url: &str, prefix: &str) -> Result<Self, DedupError> {
        let client = Client::open(url).map_err(|err| DedupError::InvalidUrl {
            url: mask_credentials(url),
            reason: err.to_string(),
        })?;
        let server = server_name(client.get_connection_info());
        // Retries are left to the caller (it pauses or fails open on
        // `Unavailable`); the manager's own backoff starts at one second and
        // would only delay that decision. It still reconnects on the next
        // call after the connection drops.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        let shared = Arc::new(Shared {
            prefix: prefix.to_owned(),
            server,
            claim: Script::new(include_str!("claim.lua")),
            renew: Script::new(include_str!("renew.lua")),
            complete: Script::new(include_str!("complete.lua")),
            release: Script::new(include_str!("release.lua")),
        });
        let unavailable = |what: String| {
            DedupError::Unavailable(format!("cannot connect to {}: {what}", shared.server))
        };

        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client, config).await?;
            // Loading up front turns a broken server or a script error into a
            // start-up failure; later calls go by SHA and reload on NOSCRIPT
            // (after a Redis restart) by themselves.
            for script in [
                &shared.claim,
                &shared.renew,
                &shared.complete,
                &shared.release,
            ] {
                script.load_async(&mut conn).await?;
            }
            Ok::<_, RedisError>(conn)
        };
        let conn = match tokio::time::timeout(CALL_DEADLINE, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Err(unavailable(err.to_string())),
            Err(_) => return Err(unavailable(format!("timed out after {CALL_DEADLINE:?}"))),
        };
        tracing::debug!(server = %shared.server, prefix, "connected to the dedup store");
        Ok(Self { conn, shared })
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

    pub(super) async fn claim(
        &self,
        key: &str,
        lease: Duration,
        window: Duration,
    ) -> Result<Claim, DedupError> {
        let owner = new_owner();
        let lease_ms = ttl_millis(lease);
        let mut call = self.shared.claim.prepare_invoke();
        call.key(key)
            .key(fence_key(key))
            .arg(&owner)
            .arg(lease_ms)
            .arg(ttl_millis(window))
            .arg(DONE);
        let (outcome, value): (i64, i64) = self
            .run("claim", key, call.invoke_async(&mut self.conn.clone()))
            .await?;
        match outcome {
            1 => {
                let fencing_token = u64::try_from(value).map_err(|_| DedupError::Rejected {
                    key: key.to_owned(),
                    reason: format!("fencing counter {} is negative ({value})", fence_key(key)),
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

    pub(super) async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, DedupError> {
        let mut call = self.shared.renew.prepare_invoke();
        call.key(&lease.key)
            .key(fence_key(&lease.key))
            .arg(&lease.owner)
            .arg(ttl_millis(ttl));
        self.run(
            "renew",
            &lease.key,
            call.invoke_async(&mut self.conn.clone()),
        )
        .await
    }

    pub(super) async fn complete(
        &self,
        lease: &Lease,
        window: Duration,
    ) -> Result<bool, DedupError> {
        let mut call = self.shared.complete.prepare_invoke();
        call.key(&lease.key)
            .key(fence_key(&lease.key))
            .arg(&lease.owner)
            .arg(ttl_millis(window))
            .arg(DONE);
        self.run(
            "complete",
            &lease.key,
            call.invoke_async(&mut self.conn.clone()),
        )
        .await
    }

    pub(super) async fn release(&self, lease: &Lease) -> Result<bool, DedupError> {
        let mut call = self.shared.release.prepare_invoke();
        call.key(&lease.key).arg(&lease.owner);
        self.run(
            "release",
            &lease.key,
            call.invoke_async(&mut self.conn.clone()),
        )
        .await
    }

    pub(super) async fn ping(&self) -> Result<(), DedupError> {
        let mut conn = self.conn.clone();
        let ping = async move { ::redis::cmd("PING").query_async::<String>(&mut conn).await };
        self.run("ping", "", ping).await.map(drop)
    }

    /// Awaits one call under [`CALL_DEADLINE`] and maps its error. `key` names
    /// the key in error messages (empty for calls about no key).
    async fn run<T: FromRedisValue>(
        &self,
        op: &str,
        key: &str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, DedupError> {
        let subject = if key.is_empty() {
            format!("{op} on {}", self.shared.server)
        } else {
            format!("{op} of key {key} on {}", self.shared.server)
        };
        match tokio::time::timeout(CALL_DEADLINE, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if is_about_the_key(&err) => Err(DedupError::Rejected {
                key: key.to_owned(),
                reason: format!("{op}: {err}"),
            }),
            Ok(Err(err)) => Err(DedupError::Unavailable(format!("{subject}: {err}"))),
            Err(_) => Err(DedupError::Unavailable(format!(
                "{subject}: timed out after {CALL_DEADLINE:?}"
            ))),
        }
    }
}

/// Whether an error concerns the one key (it holds a value of another type,
/// or a reply we cannot read) rather than the store as a whole. Everything
/// else (I/O, timeouts, LOADING, READONLY, OOM, NOPERM, a busy script, ...)
/// makes the store unusable for every key, so it is `Unavailable`.
fn is_about_the_key(err: &RedisError) -> bool {
    err.code() == Some("WRONGTYPE") || err.kind() == ErrorKind::TypeError
}

/// `redis://host:port/db` for a parsed URL: the canonical form, with no user
/// or password in it.
fn server_name(info: &::redis::ConnectionInfo) -> String {
    let db = info.redis.db;
    match &info.addr {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
    }
}

/// The URL with anything between `://` and the last `@` masked, for error
/// messages about a URL that did not parse.
fn mask_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use ::redis::IntoConnectionInfo;

    use super::*;

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
    fn mask_credentials_hides_user_and_password() {
        assert_eq!(
            mask_credentials("redis://u:p@w@host:x/0"),
            "redis://***@host:x/0"
        );
        assert_eq!(mask_credentials("redis://host:x/0"), "redis://host:x/0");
        assert_eq!(mask_credentials("not a url"), "not a url");
    }
}
