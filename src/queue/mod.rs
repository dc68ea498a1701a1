//! The queue: sync requests and page jobs on Redis Streams, with a dead-letter stream.
//!
//! - `streams`: the stream primitives (consumer groups, reads, acks, claiming idle entries).
//! - `acks`: acks of entries finished together sent as one XACK per stream.
//! - `jobs`: what travels on the streams (`SyncRequest`, `PageJob`) and its MessagePack envelope.
//! - `dlq`: moving an entry that cannot be processed aside, with its reason.
//! - `requests`: enqueueing sync requests; the follow-up list that holds
//!   requests for a busy source.
//! - `schedule`: which scheduled source is due, claimed by one coordinator replica.
//! - `retention`: bounded streams: trimming acked requests and jobs, and dead
//!   letters by count and age.
//! - `webhooks`: replay marks, the debounce window and pending targets of webhook deliveries.
//!
//! Every Redis command on these structures lives here (Lua scripts as `lua/*.lua`).
//!
//! Delivery is at-least-once: an entry is acked only after its effects are
//! durable, and an entry left unacked by a dead consumer is claimed by another
//! after `job_idle_timeout`. Consumers must therefore be idempotent.

pub mod acks;
pub mod dlq;
pub mod jobs;
pub mod requests;
pub mod retention;
pub mod schedule;
pub mod streams;
pub mod webhooks;

pub use requests::enqueue;

/// The coordinators' consumer group on the requests stream.
pub const REQUESTS_GROUP: &str = "coordinators";

/// The workers' consumer group on the jobs stream.
pub const JOBS_GROUP: &str = "workers";

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or did not answer.
    #[error("redis: {context}: {source}")]
    Redis {
        /// What we were doing.
        context: String,
        /// The client's error.
        source: deadpool_redis::redis::RedisError,
    },
    /// No connection could be had from the pool.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// An entry's body could not be decoded; it will be dead-lettered.
    #[error("stream entry {entry_id}: {reason}")]
    Decode {
        /// The stream entry id.
        entry_id: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl crate::retry::Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            // Every pool failure is "no connection in time": timeout, refused, closed.
            Error::Pool(_) => true,
            Error::Redis { source, .. } => crate::db::is_unavailable(source),
            Error::Decode { .. } => false,
        }
    }

    fn surely_not_applied(&self) -> bool {
        match self {
            // No connection was had: nothing was sent.
            Error::Pool(_) => true,
            Error::Redis { source, .. } => crate::db::surely_not_sent(source),
            Error::Decode { .. } => false,
        }
    }
}

/// Runs `range`, a ZRANGE … WITHSCORES over a sorted set of source ids
/// (schedules, webhook windows), and reads its members as sources with their
/// scores; a member that is no valid source id (written by hand) is skipped.
pub(crate) async fn scored_sources(
    pool: &crate::db::Pool,
    range: &deadpool_redis::redis::Cmd,
    what: impl FnOnce() -> String,
) -> Result<Vec<(crate::types::SourceId, f64)>, Error> {
    let mut conn = pool.get().await?;
    let entries: Vec<(String, f64)> = range.query_async(&mut conn).await.context(what)?;
    Ok(entries
        .into_iter()
        .filter_map(|(id, score)| Some((crate::types::SourceId::new(id).ok()?, score)))
        .collect())
}

/// Adds context to a Redis error.
pub(crate) trait RedisContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> RedisContext<T> for Result<T, deadpool_redis::redis::RedisError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Redis {
            context: what(),
            source,
        })
    }
}
