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
