//! Redis connection pools.
//!
//! Every pool sets a response timeout, so a paused or partitioned Redis turns
//! into an error the caller can handle instead of a task hung forever; blocking
//! reads (`XREADGROUP BLOCK`, `BLPOP`) must block for less than that timeout.

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

/// A pool of `size` connections to `url`, each command bounded by `response_timeout`.
pub fn pool(url: &str, size: usize, response_timeout: Duration) -> Result<Pool, PoolError> {
    let err = |message: String| {
        let shown = redacted(url);
        PoolError {
            message: message.replace(url, &shown),
            url: shown,
        }
    };
    let conn_config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    let manager = Manager::new_with_config(url, conn_config).map_err(|e| err(e.to_string()))?;
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
