//! Redis connection pools.
//!
//! Every pool sets a response timeout, so a paused or partitioned Redis turns
//! into an error the caller can handle instead of a task hung forever; blocking
//! reads (`XREADGROUP BLOCK`, `BLPOP`) must block for less than that timeout.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig};
use deadpool_redis::{Manager, Pool, Runtime};

/// Pool creation failed (bad URL); connecting itself happens lazily.
#[derive(Debug, thiserror::Error)]
#[error("redis {url}: {message}")]
pub struct PoolError {
    /// The URL given.
    pub url: String,
    /// What was wrong.
    pub message: String,
}

/// A pool of `size` connections to `url`, each command bounded by `response_timeout`.
pub fn pool(url: &str, size: usize, response_timeout: Duration) -> Result<Pool, PoolError> {
    let err = |message: String| PoolError {
        url: url.to_owned(),
        message,
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

/// PING through `pool`: whether Redis answers, with the reason if not.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
