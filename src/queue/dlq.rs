//! The dead-letter stream: entries that cannot be processed, kept with the reason.
//!
//! Moving is XADD to the dead-letter stream, then XACK on the origin: if we die
//! between the two, the entry is dead-lettered twice, never lost.
//!
//! Dead letters are for operators and nobody acks them, so the stream is
//! bounded by policy ([`trim`]): at most `max_len` entries, none older than
//! `max_age` (both `[queue]` settings).

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis::Script;

use super::streams::{self, Entry};
use super::{Error, RedisContext};
use crate::types::{DocumentId, RunId, SourceId};

/// A document that failed on its own while the rest of its page was applied.
#[derive(Debug, Clone, Copy)]
pub struct FailedDocument<'a> {
    /// Its source.
    pub source: &'a SourceId,
    /// The run.
    pub run: &'a RunId,
    /// The page of the run.
    pub page: u32,
    /// The document.
    pub document: &'a DocumentId,
    /// What went wrong.
    pub reason: &'a str,
    /// Whether a later attempt may succeed (every later run retries it anyway).
    pub retryable: bool,
}

/// Adds a failed document to `dead_letters` (`origin` = `document`): nothing is
/// acked, the page it came from completed without it.
pub async fn document_failed(pool: &Pool, dead_letters: &str, failed: &FailedDocument<'_>) -> Result<(), Error> {
    let page = failed.page.to_string();
    let retryable = if failed.retryable { "true" } else { "false" };
    let fields: Vec<(&str, &[u8])> = vec![
        ("origin", b"document"),
        ("source", failed.source.as_str().as_bytes()),
        ("run", failed.run.0.as_bytes()),
        ("page", page.as_bytes()),
        ("document", failed.document.0.as_bytes()),
        ("reason", failed.reason.as_bytes()),
        ("retryable", retryable.as_bytes()),
    ];
    streams::add(pool, dead_letters, &fields).await?;
    Ok(())
}

static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/trim_dead_letters.lua")));

/// Drops the oldest dead letters beyond `max_len` and every one older than
/// `max_age` (by its entry id, stamped by the Redis clock); returns how many went.
pub async fn trim(pool: &Pool, dead_letters: &str, max_len: u64, max_age: Duration) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    TRIM.key(dead_letters)
        .arg(max_len)
        .arg(max_age.as_millis() as u64)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("trimming {dead_letters}"))
}

/// Copies `entry` to `dead_letters` with `reason`, then acks it on `origin`.
pub async fn dead_letter(
    pool: &Pool,
    dead_letters: &str,
    origin: &str,
    group: &str,
    entry: &Entry,
    reason: &str,
    deliveries: u64,
) -> Result<(), Error> {
    let deliveries = deliveries.to_string();
    let mut fields: Vec<(&str, &[u8])> = vec![
        ("origin", origin.as_bytes()),
        ("origin_id", entry.id.as_bytes()),
        ("reason", reason.as_bytes()),
        ("deliveries", deliveries.as_bytes()),
    ];
    let mut original: Vec<(&String, &Vec<u8>)> = entry.fields.iter().collect();
    original.sort();
    let renamed: Vec<(String, &[u8])> = original
        .into_iter()
        .map(|(k, v)| (format!("orig.{k}"), v.as_slice()))
        .collect();
    fields.extend(renamed.iter().map(|(k, v)| (k.as_str(), *v)));
    streams::add(pool, dead_letters, &fields).await?;
    streams::ack(pool, origin, group, &[entry.id.as_str()]).await
}
