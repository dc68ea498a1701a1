//! What webhook deliveries leave in Redis: replay marks, the debounce window
//! and the pending targets, and how those become one sync request.
//!
//! The HTTP side (`api::webhooks`) verifies a delivery and calls in here; the
//! coordinator's schedule loop calls [`flush_due`] for the sources whose
//! window has closed ([`closing`], a sorted set of close times, so a tick
//! costs one query however many sources take webhooks), and for every
//! webhook source once per [`SWEEP_EVERY`] (a safety net: a close time lost
//! to a Redis fault, or set by a clock ahead of the coordinator's). Invariants:
//! - a delivery is accepted once: [`first_delivery`] and [`accept_channel_message`]
//!   are atomic check-and-set operations, true for exactly one caller;
//! - accepted targets are not lost: they sit in the pending set until a
//!   flush takes them (atomically, so one coordinator takes them) into the
//!   flushing set, where they stay until the one request naming them all is
//!   enqueued; a flush that failed or died in between leaves them to the next.

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
static FLUSHED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/flushed_webhooks.lua")));
static WINDOW_CLOSED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/webhook_window_closed.lua")));

/// How long a flush may take between taking the targets and enqueueing their
/// request; one that died is retried by the next flush after this.
const FLUSH_LEASE: Duration = Duration::from_secs(10);

/// How often every webhook source is flushed, whether or not its close time is known.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// What [`flush_due`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// The debounce window is still open: its events wait.
    StillOpen,
    /// Nothing was pending.
    Nothing,
    /// The pending events became one sync request.
    Enqueued,
}

/// Milliseconds since the epoch, by this process's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    let (opened,): (Option<String>,) = redis::pipe()
        .sadd(keys.webhook_pending(source), members(targets))
        .ignore()
        .cmd("SET")
        .arg(keys.webhook_window(source))
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(debounce.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .context(|| format!("holding webhook events of {source} for debounce"))?;
    if opened.is_some() {
        // Another slot than the source's keys (a cluster): a command of its own.
        let closes = now_ms() + debounce.as_millis() as u64;
        let _: i64 = redis::cmd("ZADD")
            .arg(keys.webhooks_closing())
            .arg(closes)
            .arg(source.as_str())
            .query_async(&mut conn)
            .await
            .context(|| format!("noting when the webhook window of {source} closes"))?;
    }
    Ok(())
}

/// Sources whose debounce window closed by now (this process's clock), with
/// the close time noted, up to `limit`, soonest first.
pub async fn closing(pool: &Pool, keys: &Keys, limit: usize) -> Result<Vec<(SourceId, u64)>, Error> {
    let key = keys.webhooks_closing();
    let mut range = redis::cmd("ZRANGE");
    range
        .arg(&key)
        .arg("-inf")
        .arg(now_ms())
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .arg("WITHSCORES");
    let due = super::scored_sources(pool, &range, || format!("ZRANGE {key} BYSCORE")).await?;
    Ok(due.into_iter().map(|(source, at)| (source, at as u64)).collect())
}

/// Forgets `source`'s close time `at` once its window was flushed, unless a
/// new window noted another meanwhile.
pub async fn forget_closing(pool: &Pool, keys: &Keys, source: &SourceId, at: u64) -> Result<(), Error> {
    let mut conn = pool.get().await?;
    let _: i64 = WINDOW_CLOSED
        .key(keys.webhooks_closing())
        .arg(source.as_str())
        .arg(at)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("forgetting the webhook window of {source}"))?;
    Ok(())
}

async fn enqueue_targets(pool: &Pool, keys: &Keys, source: &SourceId, members: Vec<String>) -> Result<(), Error> {
    let mut request = SyncRequest::new(source.clone(), SyncMode::Incremental, "webhook");
    if !members.iter().any(|m| m == WHOLE_SOURCE) {
        request.targets = members.into_iter().map(DocumentId).collect();
    }
    enqueue(pool, keys, &request).await.map(|_| ())
}

/// Turns a source's pending webhook events into one sync request once its
/// debounce window has closed, one flusher at a time (with several
/// coordinators, one takes them). The targets stay in the flushing set until
/// their request is enqueued, so a flush that fails or dies in between loses
/// none: the next one (after [`FLUSH_LEASE`]) enqueues them.
pub async fn flush_due(pool: &Pool, keys: &Keys, source: &SourceId) -> Result<Flushed, Error> {
    let (flushing, lease) = (keys.webhook_flushing(source), keys.webhook_flush_lease(source));
    let mut conn = pool.get().await?;
    let (taken, members): (i64, Vec<String>) = FLUSH
        .key(keys.webhook_pending(source))
        .key(keys.webhook_window(source))
        .key(&flushing)
        .key(&lease)
        .arg(FLUSH_LEASE.as_millis() as u64)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("flushing webhook events of {source}"))?;
    drop(conn);
    if taken == 0 {
        return Ok(Flushed::StillOpen);
    }
    if members.is_empty() {
        return Ok(Flushed::Nothing);
    }
    enqueue_targets(pool, keys, source, members.clone()).await?;
    let mut conn = pool.get().await?;
    let _: i64 = FLUSHED
        .key(&flushing)
        .key(&lease)
        .arg(&members)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("clearing the flushed webhook events of {source}"))?;
    Ok(Flushed::Enqueued)
}
