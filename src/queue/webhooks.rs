//! What webhook deliveries leave in Redis: replay marks, the debounce window
//! and the pending targets, and how those become one sync request.
//!
//! The HTTP side (`api::webhooks`) verifies a delivery and calls in here; the
//! coordinator's schedule loop calls [`flush_due`]. Invariants:
//! - a delivery is accepted once: [`first_delivery`] and [`accept_channel_message`]
//!   are atomic check-and-set operations, true for exactly one caller;
//! - accepted targets are not lost: they sit in the pending set until a
//!   flush takes them (atomically, so one coordinator takes them) and enqueues
//!   one request for all of them.

use std::sync::LazyLock;
use std::time::Duration;

use crate::db::Pool;
use deadpool_redis::redis::{self, Script};

use super::jobs::SyncRequest;
use super::requests::enqueue;
use super::{Error, RedisContext};
use crate::keys::Keys;
use crate::types::{DocumentId, SourceId, SyncMode};

/// Marker in the pending set for "sync the whole source incrementally".
const WHOLE_SOURCE: &str = "*";

static ACCEPT_CHANNEL_MESSAGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/accept_channel_message.lua")));
static FLUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/flush_webhooks.lua")));

/// Remembers a delivery's signature for `ttl`; false if it was already seen (a replay).
pub async fn first_delivery(
    pool: &Pool,
    keys: &Keys,
    source: &SourceId,
    signature: &str,
    ttl: Duration,
) -> Result<bool, Error> {
    let key = keys.webhook_seen(source, signature);
    let mut conn = pool.get().await?;
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(&mut conn)
        .await
        .context(|| format!("SET NX {key}"))?;
    Ok(set.is_some())
}

/// Accepts a Drive push message number if it is above the channel's last one.
pub async fn accept_channel_message(
    pool: &Pool,
    keys: &Keys,
    source: &SourceId,
    channel: &str,
    number: u64,
) -> Result<bool, Error> {
    let mut conn = pool.get().await?;
    let accepted: i64 = ACCEPT_CHANNEL_MESSAGE
        .key(keys.webhook_channel(source, channel))
        .arg(number)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("accepting message {number} of channel {channel} of {source}"))?;
    Ok(accepted == 1)
}

fn members(targets: &[DocumentId]) -> Vec<String> {
    if targets.is_empty() {
        vec![WHOLE_SOURCE.to_owned()]
    } else {
        targets.iter().map(|t| t.0.clone()).collect()
    }
}

/// Turns accepted targets (empty: the whole source) into a sync request: at
/// once when `debounce` is zero, else into the pending set, opening the
/// debounce window if none is open.
pub async fn accept(
    pool: &Pool,
    keys: &Keys,
    source: &SourceId,
    targets: &[DocumentId],
    debounce: Duration,
) -> Result<(), Error> {
    if debounce.is_zero() {
        return enqueue_targets(pool, keys, source, members(targets)).await;
    }
    let mut conn = pool.get().await?;
    redis::pipe()
        .sadd(keys.webhook_pending(source), members(targets))
        .ignore()
        .cmd("SET")
        .arg(keys.webhook_window(source))
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(debounce.as_millis() as u64)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .context(|| format!("holding webhook events of {source} for debounce"))
}

async fn enqueue_targets(pool: &Pool, keys: &Keys, source: &SourceId, members: Vec<String>) -> Result<(), Error> {
    let mut request = SyncRequest::new(source.clone(), SyncMode::Incremental, "webhook");
    if !members.iter().any(|m| m == WHOLE_SOURCE) {
        request.targets = members.into_iter().map(DocumentId).collect();
    }
    enqueue(pool, keys, &request).await.map(|_| ())
}

/// Turns a source's pending webhook events into one sync request once its
/// debounce window has closed. Atomic: with several coordinators, one takes them.
pub async fn flush_due(pool: &Pool, keys: &Keys, source: &SourceId) -> Result<bool, Error> {
    let mut conn = pool.get().await?;
    let members: Vec<String> = FLUSH
        .key(keys.webhook_pending(source))
        .key(keys.webhook_window(source))
        .invoke_async(&mut conn)
        .await
        .context(|| format!("flushing webhook events of {source}"))?;
    drop(conn);
    if members.is_empty() {
        return Ok(false);
    }
    enqueue_targets(pool, keys, source, members).await?;
    Ok(true)
}
