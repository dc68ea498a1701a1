//! Redis connection pools.
//!
//! Every pool sets a response timeout, so a paused or partitioned Redis turns
//! into an error the caller can handle instead of a task hung forever; blocking
//! reads (`XREADGROUP BLOCK`, `BLPOP`) must block for less than that timeout.
//!
//! Credentials and TLS material travel beside the URL in [`Access`], never
//! inside it, so every URL that reaches a log or an error holds no secret
//! (URLs that do carry a password are still accepted, and redacted).

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use deadpool_redis::{Manager, Pool, Runtime};

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
        .set_connection_timeout(Some(Duration::from_secs(2)));
    let info = access.connection_info(url).map_err(|e| err(e.to_string()))?;
    let manager = Manager::new_with_config(info, conn_config).map_err(|e| err(e.to_string()))?;
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(response_timeout))
        .create_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| err(e.to_string()))
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
