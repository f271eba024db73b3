//! The connection to each kind of Redis deployment `[redis]` can name: one
//! server, a master followed through Sentinel, or a Cluster. The store
//! above sends the same scripts to all three; this module decides where
//! they go.
//!
//! - One server: a `ConnectionManager` (multiplexed, reconnects on the next
//!   call), a batch sent as one pipeline. This is the path the benchmarks
//!   measure; nothing here adds to it.
//! - Sentinel: the master is asked of the sentinels (`SENTINEL
//!   get-master-addr-by-name`, each sentinel in turn, the one that answered
//!   tried first next time) and checked with `ROLE` before it is used, as
//!   the Sentinel client guidelines say. A lost connection, a time-out or a
//!   `READONLY`/`MASTERDOWN`/`LOADING` reply drops the connection, and the
//!   next call asks the sentinels again: that is how the store follows a
//!   failover (the sentinels also close the clients of a demoted master).
//! - Cluster: redis-rs's `cluster-async` connection, which routes each
//!   command by the slot of its first key and follows `MOVED`/`ASK`. A
//!   pipeline must stay within one slot there, so a batch goes as one
//!   request per call, all at once on the multiplexed node connections.
//!
//! It does not know the scripts, the key names or the protocol.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::aio::{ConnectionLike as _, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    FromRedisValue, IntoConnectionInfo as _, Pipeline, RedisConnectionInfo, RedisError,
    RedisResult, Script, TlsCertificates, Value,
};

use super::DedupError;
use crate::config::{RedisServers, TlsPem};

/// How long one connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to one of the three kinds of deployment. Cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(std::sync::Arc<Sentinel>),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `servers` (not yet loading anything). Also returns the
    /// deployment as logs name it, without credentials.
    pub(super) async fn connect(
        servers: RedisServers<'_>,
        tls: &TlsPem,
    ) -> Result<(Conn, String), DedupError> {
        match servers {
            RedisServers::Single(url) => {
                let client = client(url, tls)?;
                let name = server_name(client.get_connection_info());
                // Retries are left to the caller (it pauses or fails open
                // on `Unavailable`); the manager's own backoff starts at one
                // second and would only delay that decision. It still
                // reconnects on the next call after the connection drops.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                let conn = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| unavailable(&name, &e.to_string()))?;
                Ok((Conn::Single(conn), name))
            }
            RedisServers::Sentinel {
                sentinels,
                master_name,
                node_url,
            } => {
                let sentinel = Sentinel::new(sentinels, master_name, node_url, tls)?;
                let name = sentinel.name.clone();
                let sentinel = std::sync::Arc::new(sentinel);
                // A master must answer at start-up, like a single server.
                sentinel
                    .master()
                    .await
                    .map_err(|e| unavailable(&name, &e.to_string()))?;
                Ok((Conn::Sentinel(sentinel), name))
            }
            RedisServers::Cluster(urls) => {
                let mut infos = Vec::new();
                for url in urls {
                    infos.push(parse(url)?);
                }
                let nodes: Vec<String> = infos.iter().map(server_name).collect();
                let name = format!("cluster {}", nodes.join(", "));
                let mut builder = ClusterClientBuilder::new(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    // A slot that moves is followed a few times; the call's
                    // deadline bounds the rest.
                    .retries(3);
                if tls.ca.is_some() || tls.identity.is_some() {
                    builder = builder.certs(certificates(tls));
                }
                let client = builder.build().map_err(|e| DedupError::InvalidUrl {
                    url: name.clone(),
                    reason: e.to_string(),
                })?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| unavailable(&name, &e.to_string()))?;
                Ok((Conn::Cluster(conn), name))
            }
        }
    }

    /// Whether keys must carry a hash tag so that every script's keys share
    /// a slot.
    pub(super) fn cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Sends the pipeline's `n` commands and returns one reply per command,
    /// an error reply as an `Err` of its own; `Err` as a whole when the
    /// exchange failed.
    pub(super) async fn send(
        &self,
        pipe: &Pipeline,
        n: usize,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        match self {
            Conn::Single(conn) => {
                let mut conn = conn.clone();
                let replies = conn.req_packed_commands(pipe, 0, n).await?;
                Ok(replies.into_iter().map(reply).collect())
            }
            Conn::Sentinel(sentinel) => {
                let (generation, mut conn) = sentinel.master().await?;
                match conn.req_packed_commands(pipe, 0, n).await {
                    Ok(replies) => {
                        let replies: Vec<RedisResult<Value>> =
                            replies.into_iter().map(reply).collect();
                        if replies
                            .iter()
                            .any(|r| r.as_ref().is_err_and(not_the_master))
                        {
                            sentinel.forget(generation, "it answered as no longer the master");
                        }
                        Ok(replies)
                    }
                    Err(e) => {
                        sentinel.forget(generation, &e.to_string());
                        Err(e)
                    }
                }
            }
            Conn::Cluster(conn) => {
                let calls = pipe.cmd_iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { conn.req_packed_command(cmd).await.and_then(reply) }
                });
                Ok(futures_util::future::join_all(calls).await)
            }
        }
    }

    /// One command, on the master (Sentinel) or the node of its key
    /// (Cluster).
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let value = match self {
            Conn::Single(conn) => conn.clone().req_packed_command(cmd).await.and_then(reply),
            Conn::Sentinel(sentinel) => {
                let (generation, mut conn) = sentinel.master().await?;
                let value = conn.req_packed_command(cmd).await.and_then(reply);
                if let Err(e) = &value
                    && (not_the_master(e) || e.code().is_none())
                {
                    sentinel.forget(generation, &e.to_string());
                }
                value
            }
            Conn::Cluster(conn) => conn.clone().req_packed_command(cmd).await.and_then(reply),
        }?;
        ::redis::from_owned_redis_value(value)
    }

    /// Loads `script` into the script cache: the master's, or every node's
    /// of a Cluster (redis-rs sends `SCRIPT LOAD` to all of them).
    pub(super) async fn load(&self, script: &Script) -> RedisResult<()> {
        match self {
            Conn::Single(conn) => script.load_async(&mut conn.clone()).await.map(drop),
            Conn::Sentinel(sentinel) => {
                let (generation, mut conn) = sentinel.master().await?;
                let loaded = script.load_async(&mut conn).await.map(drop);
                if let Err(e) = &loaded {
                    sentinel.forget(generation, &e.to_string());
                }
                loaded
            }
            Conn::Cluster(conn) => script.load_async(&mut conn.clone()).await.map(drop),
        }
    }

    /// Whether the store can take writes now: a single server answers
    /// PING; the master the sentinels name says it is the master; every
    /// slot of the Cluster is served (`cluster_state:ok`).
    pub(super) async fn ping(&self) -> RedisResult<()> {
        match self {
            Conn::Single(_) => self.query::<String>(&::redis::cmd("PING")).await.map(drop),
            Conn::Sentinel(sentinel) => {
                let (generation, mut conn) = sentinel.master().await?;
                match role(&mut conn).await {
                    Ok(role) if role == "master" => Ok(()),
                    Ok(role) => {
                        sentinel.forget(generation, &format!("it is a {role} now"));
                        Err(RedisError::from((
                            ErrorKind::ReadOnly,
                            "the master the sentinels named is not the master any more",
                            role,
                        )))
                    }
                    Err(e) => {
                        sentinel.forget(generation, &e.to_string());
                        Err(e)
                    }
                }
            }
            Conn::Cluster(_) => {
                let mut cmd = ::redis::cmd("CLUSTER");
                cmd.arg("INFO");
                let info: String = self.query(&cmd).await?;
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    Ok(())
                } else {
                    Err(RedisError::from((
                        ErrorKind::ClusterDown,
                        "the cluster does not serve every slot (cluster_state is not ok)",
                    )))
                }
            }
        }
    }
}

/// A master found through Sentinel, and found again after a failover.
pub(super) struct Sentinel {
    /// One client per sentinel, in the order they are tried.
    sentinels: Vec<(String, Client)>,
    /// The sentinel to ask first: the last one that answered.
    first: AtomicUsize,
    master_name: String,
    /// User, password and database for the master.
    node: RedisConnectionInfo,
    /// Whether the master is reached over TLS, and with which certificates.
    tls: Option<TlsPem>,
    /// The connection to the current master, and its generation (so that a
    /// failed call drops only the connection it used, not a newer one).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: std::sync::atomic::AtomicU64,
    /// Held while the sentinels are asked, so that a burst of callers asks
    /// once.
    asking: tokio::sync::Mutex<()>,
    /// `sentinel master NAME via redis://host:port, ...`, for logs.
    name: String,
}

impl Sentinel {
    fn new(
        urls: &[String],
        master_name: &str,
        node_url: Option<&str>,
        tls: &TlsPem,
    ) -> Result<Sentinel, DedupError> {
        let Some(first) = urls.first() else {
            return Err(DedupError::InvalidUrl {
                url: String::new(),
                reason: "no sentinel is listed".into(),
            });
        };
        let mut sentinels = Vec::new();
        for url in urls {
            let client = client(url, tls)?;
            sentinels.push((server_name(client.get_connection_info()), client));
        }
        // The master's credentials: those of `url` when set, else those of
        // the first sentinel (deployments often use one password for both).
        let template = parse(node_url.unwrap_or(first))?;
        let over_tls = matches!(template.addr, ConnectionAddr::TcpTls { .. });
        let shown: Vec<&str> = sentinels.iter().map(|(n, _)| n.as_str()).collect();
        Ok(Sentinel {
            name: format!("sentinel master {master_name} via {}", shown.join(", ")),
            sentinels,
            first: AtomicUsize::new(0),
            master_name: master_name.to_owned(),
            node: template.redis,
            tls: over_tls.then(|| tls.clone()),
            current: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            asking: tokio::sync::Mutex::new(()),
        })
    }

    /// The connection to the master, asking the sentinels first if there is
    /// none.
    async fn master(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(found) = self.current() {
            return Ok(found);
        }
        let _asking = self.asking.lock().await;
        if let Some(found) = self.current() {
            return Ok(found);
        }
        let (addr, conn) = self.find().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, conn.clone()));
        tracing::info!(master = %addr, sentinel = %self.name, "dedup store: connected to the master");
        Ok((generation, conn))
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the connection of `generation`, if it is still the current
    /// one: the next call asks the sentinels again.
    fn forget(&self, generation: u64, why: &str) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
            tracing::warn!(sentinel = %self.name, why, "dedup store: lost the master, asking the sentinels again");
        }
    }

    /// Asks each sentinel in turn for the master's address, connects and
    /// checks that it says it is the master.
    async fn find(&self) -> RedisResult<(String, MultiplexedConnection)> {
        let n = self.sentinels.len();
        let start = self.first.load(Ordering::Relaxed) % n;
        let mut why = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let (name, client) = &self.sentinels[i];
            match self.ask(client).await {
                Ok(Some((host, port))) => {
                    self.first.store(i, Ordering::Relaxed);
                    match self.connect_master(&host, port).await {
                        Ok(conn) => return Ok((format!("{host}:{port}"), conn)),
                        Err(e) => why.push(format!("{name} named {host}:{port}: {e}")),
                    }
                }
                Ok(None) => why.push(format!("{name} knows no master {}", self.master_name)),
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        Err(RedisError::from((
            ErrorKind::IoError,
            "no writable master",
            why.join("; "),
        )))
    }

    async fn ask(&self, client: &Client) -> RedisResult<Option<(String, u16)>> {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config())
            .await?;
        ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await
    }

    async fn connect_master(&self, host: &str, port: u16) -> RedisResult<MultiplexedConnection> {
        let info = ConnectionInfo {
            addr: match self.tls {
                Some(_) => ConnectionAddr::TcpTls {
                    host: host.to_owned(),
                    port,
                    insecure: false,
                    tls_params: None,
                },
                None => ConnectionAddr::Tcp(host.to_owned(), port),
            },
            redis: self.node.clone(),
        };
        let client = match &self.tls {
            Some(tls) if tls.ca.is_some() || tls.identity.is_some() => {
                Client::build_with_tls(info, certificates(tls))?
            }
            _ => Client::open(info)?,
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config())
            .await?;
        let role = role(&mut conn).await?;
        if role != "master" {
            return Err(RedisError::from((
                ErrorKind::ReadOnly,
                "not the master (a failover is under way)",
                format!("it says it is a {role}"),
            )));
        }
        Ok(conn)
    }
}

/// The first element of `ROLE`: `master`, `slave` or `sentinel`.
async fn role(conn: &mut MultiplexedConnection) -> RedisResult<String> {
    let reply: Vec<Value> = ::redis::cmd("ROLE").query_async(conn).await?;
    match reply.into_iter().next() {
        Some(v) => ::redis::from_owned_redis_value(v),
        None => Err(RedisError::from((ErrorKind::TypeError, "empty ROLE reply"))),
    }
}

/// Whether an error reply says the server cannot take writes as the master.
fn not_the_master(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// A reply of a pipeline, an error reply as an `Err` of its own.
pub(super) fn reply(value: Value) -> RedisResult<Value> {
    match value {
        Value::ServerError(e) => Err(RedisError::from(e)),
        value => Ok(value),
    }
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
}

fn certificates(tls: &TlsPem) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.identity.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: tls.ca.clone(),
    }
}

/// A client for `url`, with the certificates when there are any.
fn client(url: &str, tls: &TlsPem) -> Result<Client, DedupError> {
    build(parse(url)?, url, tls)
}

/// A client for `url` that speaks RESP3, which server-assisted caching
/// needs (its invalidations arrive as pushes on the same connection).
pub(super) fn resp3_client(url: &str, tls: &TlsPem) -> Result<Client, DedupError> {
    let mut info = parse(url)?;
    info.redis.protocol = ::redis::ProtocolVersion::RESP3;
    build(info, url, tls)
}

fn build(info: ConnectionInfo, url: &str, tls: &TlsPem) -> Result<Client, DedupError> {
    let client = match (&tls.ca, &tls.identity) {
        (None, None) => Client::open(info),
        _ => Client::build_with_tls(info, certificates(tls)),
    };
    client.map_err(|err| DedupError::InvalidUrl {
        url: mask_credentials(url),
        reason: err.to_string(),
    })
}

fn parse(url: &str) -> Result<ConnectionInfo, DedupError> {
    url.into_connection_info()
        .map_err(|err| DedupError::InvalidUrl {
            url: mask_credentials(url),
            reason: err.to_string(),
        })
}

fn unavailable(server: &str, what: &str) -> DedupError {
    DedupError::Unavailable(format!("cannot connect to {server}: {what}"))
}

/// `redis://host:port/db` for a parsed URL: the canonical form, with no user
/// or password in it.
pub(super) fn server_name(info: &ConnectionInfo) -> String {
    let db = info.redis.db;
    match &info.addr {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
    }
}

/// The URL with anything between `://` and the last `@` masked, for error
/// messages about a URL that did not parse.
pub(super) fn mask_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
