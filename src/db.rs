//! Redis connection pools.
//!
//! Every pool sets a response timeout, so a paused or partitioned Redis turns
//! into an error the caller can handle instead of a task hung forever; blocking
//! reads (`XREADGROUP BLOCK`, `BLPOP`) must block for less than that timeout.
//!
//! Credentials and TLS material travel beside the URL in [`Access`], never
//! inside it, so every URL that reaches a log or an error holds no secret
//! (URLs that do carry a password are still accepted, and redacted).
//!
//! A connection to one server speaks RESP3, so its driver reports the server
//! closing it (a restart) as it happens; it is handed out without a round
//! trip when it was checked out within the last second and is not known
//! closed (a PING first otherwise), and replaced once closed or once a
//! command on it has failed with a connection error: a PING per checkout was
//! most of what a page job cost the queue (issue 12.4).
//!
//! A [`Pool`] reaches one Redis server or a Redis Cluster; callers see the
//! same connection type either way. On a cluster every command is routed by
//! its key's slot, so a script or a transaction must touch keys of one slot
//! only: every key of one source carries the `{source}` hash tag, and the
//! global streams are touched one key per command. Each pooled cluster
//! connection is its own set of node connections, so a blocking read
//! (`XREADGROUP BLOCK`) holds up no other command.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::Runtime;
use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisError, ServerErrorKind,
};

/// How long one server (one node of a cluster) may take to accept a
/// connection. A new pooled connection may take longer than this: a cluster
/// connection connects to each node, and one that hangs (a stopped replica)
/// is given up on after this long while the others serve.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection could not be had from a [`Pool`] (the same type for a
/// single server and a cluster).
pub type GetError = deadpool::managed::PoolError<RedisError>;

/// Connections to one Redis server, or to a Redis Cluster. Clones share them.
#[derive(Clone)]
pub enum Pool {
    /// One server (or a primary behind a proxy or a failover address).
    Single(deadpool::managed::Pool<SingleManager>),
    /// A Redis Cluster, found from its seed nodes.
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pool::Single(_) => "Pool::Single",
            Pool::Cluster(_) => "Pool::Cluster",
        })
    }
}

impl Pool {
    /// A connection, waiting up to the pool's wait timeout for a free one.
    pub async fn get(&self) -> Result<Connection, GetError> {
        match self {
            Pool::Single(p) => p.get().await.map(Connection::Single),
            Pool::Cluster(p) => p.get().await.map(Connection::Cluster),
        }
    }
}

/// A connection from a [`Pool`]; returned to it when dropped.
pub enum Connection {
    /// To the one server.
    Single(deadpool::managed::Object<SingleManager>),
    /// To the cluster (routing each command to its key's node).
    Cluster(deadpool::managed::Object<ClusterManager>),
}

impl Connection {
    /// `WAIT replicas timeout` where `key` lives: on one server, that
    /// server; on a cluster, the primary of `key`'s slot only. (A plain WAIT
    /// goes to every primary and answers the fewest acknowledgements, so one
    /// shard short of a replica would hold back every source.) WAIT counts
    /// the writes sent on this connection to that node, which is where every
    /// write to `key`'s slot went.
    pub async fn wait_for_replicas_of(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        match self {
            Connection::Single(_) => wait.query_async(self).await,
            Connection::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let primary = Route::with_key(key, SlotAddr::Master);
                let reply = c
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary)),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => Box::pin(async move {
                let reply = c.conn.req_packed_command(cmd).await;
                c.broken |= reply.as_ref().is_err_and(breaks_connection);
                reply
            }),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => Box::pin(async move {
                let replies = c.conn.req_packed_commands(cmd, offset, count).await;
                c.broken |= replies.as_ref().is_err_and(breaks_connection);
                replies
            }),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.conn.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes and checks connections to one server for the pool.
pub struct SingleManager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

/// A pooled connection to one server, and whether it is known broken.
pub struct SingleConnection {
    conn: MultiplexedConnection,
    /// A command failed in a way that may leave the connection unusable
    /// (dropped, reset, timed out): the pool replaces it rather than hand it out again.
    broken: bool,
    /// The server closed the connection (a restart): set by the connection's
    /// driver as it reads the end of the stream, before anyone sends on it.
    closed: Arc<AtomicBool>,
}

/// A connection checked out again within this long of its last checkout is
/// handed out as it is; one idle for longer is PINGed first (a restarted
/// server or a proxy's idle timeout may have closed it without a word).
/// Sparing a PING per checkout is most of the queue's cost (issue 12.4).
const TRUSTED_FOR: Duration = Duration::from_secs(1);

impl deadpool::managed::Manager for SingleManager {
    type Type = SingleConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<SingleConnection, RedisError> {
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed);
        // RESP3 (see `pool_with`) is what lets the driver tell of a disconnection.
        let config = self.config.clone().set_push_sender(move |info: PushInfo| {
            if info.kind == PushKind::Disconnection {
                flag.store(true, Ordering::Relaxed);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(SingleConnection {
            conn,
            broken: false,
            closed,
        })
    }

    async fn recycle(
        &self,
        conn: &mut SingleConnection,
        metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<RedisError> {
        if conn.broken {
            return Err(deadpool::managed::RecycleError::message("its last command failed"));
        }
        if conn.closed.load(Ordering::Relaxed) {
            return Err(deadpool::managed::RecycleError::message("the server closed it"));
        }
        if metrics.last_used() >= TRUSTED_FOR {
            redis::cmd("PING").query_async::<String>(&mut conn.conn).await?;
        }
        Ok(())
    }
}

/// Whether `e` may have left the connection it came from unusable.
fn breaks_connection(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Io || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Makes and checks cluster connections for the pool.
pub struct ClusterManager {
    client: ClusterClient,
}

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<RedisError> {
        redis::cmd("PING").query_async::<String>(conn).await?;
        Ok(())
    }
}

/// Pool creation failed (bad URL); connecting itself happens lazily.
#[derive(Debug, thiserror::Error)]
#[error("redis {url}: {message}")]
pub struct PoolError {
    /// The URL given, with any password redacted.
    pub url: String,
    /// What was wrong.
    pub message: String,
}

/// `url` fit for logs and error messages: a password is replaced by `***`
/// (`redis://default:***@host:6379`). Text that is not a URL is cut at its last
/// `@`, since whatever stood before it may be a credential.
pub fn redacted(url: &str) -> String {
    crate::redact::url(url)
}

/// How to log in to Redis and what to trust over TLS, beside the URL: an ACL
/// user and its password (`AUTH username password`), the CA that signed the
/// server's certificate (default: the system's roots) and a client certificate
/// for servers that ask for one (`tls-auth-clients yes`).
#[derive(Clone, Default)]
pub struct Access {
    /// ACL user; `None` is Redis' `default` user.
    pub username: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// PEM certificates to trust instead of the system's roots (`rediss://` only).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key (`rediss://` only).
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("client_pem", &self.client_pem.is_some())
            .finish()
    }
}

impl Access {
    /// Whether TLS material is given (which only a `rediss://` URL can use).
    pub fn has_tls_material(&self) -> bool {
        self.ca_pem.is_some() || self.client_pem.is_some()
    }

    /// The connection to open for `url`: its address and database, with this
    /// user, password and TLS material. The error is the client library's,
    /// e.g. a PEM it cannot parse.
    pub fn connection_info(&self, url: &str) -> Result<redis::ConnectionInfo, RedisError> {
        use redis::IntoConnectionInfo;
        let info = if self.has_tls_material() {
            let certs = redis::TlsCertificates {
                client_tls: self.client_pem.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
                root_cert: self.ca_pem.clone(),
            };
            redis::Client::build_with_tls(url, certs)?.get_connection_info().clone()
        } else {
            url.into_connection_info()?
        };
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        Ok(info.set_redis_settings(settings))
    }
}

/// A pool of `size` connections to `url` as Redis' `default` user (or the one
/// in the URL), each command bounded by `response_timeout`.
pub fn pool(url: &str, size: usize, response_timeout: Duration) -> Result<Pool, PoolError> {
    pool_with(url, &Access::default(), size, response_timeout)
}

/// [`pool`] logging in and trusting as `access` says.
pub fn pool_with(url: &str, access: &Access, size: usize, response_timeout: Duration) -> Result<Pool, PoolError> {
    let err = |message: String| {
        let shown = redacted(url);
        let mut message = message.replace(url, &shown);
        if let Some(password) = access.password.as_deref().filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
        }
        PoolError { message, url: shown }
    };
    let conn_config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    let info = access.connection_info(url).map_err(|e| err(e.to_string()))?;
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3)).map_err(|e| err(e.to_string()))?;
    let manager = SingleManager {
        client,
        config: conn_config,
    };
    pooled(manager, size, response_timeout)
        .map(Pool::Single)
        .map_err(|e| err(e.to_string()))
}

/// A pool of `size` connections to the Redis Cluster that `seeds` belong to
/// (any reachable node will do; the rest are discovered), logging in and
/// trusting as `access` says, each command bounded by `response_timeout`.
pub fn cluster_pool(
    seeds: &[String],
    access: &Access,
    size: usize,
    response_timeout: Duration,
) -> Result<Pool, PoolError> {
    let shown = seeds.iter().map(|s| redacted(s)).collect::<Vec<_>>().join(",");
    let err = |message: String| {
        let mut message = message;
        for s in seeds {
            message = message.replace(s.as_str(), &redacted(s));
        }
        if let Some(password) = access.password.as_deref().filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
        }
        PoolError {
            message,
            url: shown.clone(),
        }
    };
    let nodes = seeds
        .iter()
        .map(|s| redis::IntoConnectionInfo::into_connection_info(s.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let mut builder = ClusterClientBuilder::new(nodes)
        .response_timeout(response_timeout)
        .connection_timeout(CONNECT_TIMEOUT);
    if let Some(user) = &access.username {
        builder = builder.username(user);
    }
    if let Some(password) = &access.password {
        builder = builder.password(password);
    }
    if access.has_tls_material() {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: access.client_pem.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: access.ca_pem.clone(),
        });
    }
    let client = builder.build().map_err(|e| err(e.to_string()))?;
    pooled(ClusterManager { client }, size, response_timeout)
        .map(Pool::Cluster)
        .map_err(|e| err(e.to_string()))
}

/// The pool every [`Pool`] is: `size` connections made by `manager`, a caller
/// waiting at most `response_timeout` for one.
fn pooled<M: deadpool::managed::Manager>(
    manager: M,
    size: usize,
    response_timeout: Duration,
) -> Result<deadpool::managed::Pool<M>, deadpool::managed::BuildError> {
    deadpool::managed::Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(response_timeout))
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(2)))
        .build()
}

/// Whether a Redis error means "Redis is not answering" (unreachable, timing
/// out, restarting, loading its AOF) rather than "Redis answered something we
/// did not expect". The first clears up by itself and is retried with the
/// shared backoff policy (`retry.rs`); the API answers it with 503.
pub fn is_unavailable(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Io
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            )
        )
}

/// Whether the command surely never reached Redis (the connection was refused),
/// so even a command that is not idempotent may be sent again.
pub fn surely_not_sent(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain | ServerErrorKind::MasterDown)
        )
}

/// PING through `pool`: whether Redis answers, with the reason if not.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords never reach logs or errors, whatever the shape of the URL (issue 8, point 7).
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://default:s3cret@10.0.0.1:6379/0"),
            "redis://default:***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("rediss://:s3cret@host:6380"), "rediss://:***@host:6380");
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert!(!redacted("not a url user:s3cret@host").contains("s3cret"));
        let err = pool("redis://default:s3cret@host:notaport", 1, Duration::from_secs(1)).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
