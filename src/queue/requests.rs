//! Sync requests: how they are enqueued, and the per-source structures that
//! hold requests waiting for a busy source.
//!
//! - [`enqueue`]: XADD a [`SyncRequest`] to the requests stream, read by the
//!   coordinators' consumer group ([`super::REQUESTS_GROUP`]).
//! - The **follow-up list** (`tm:{S}:followup`): a request that finds its source
//!   locked is pushed here; the run holding the lock drains the list when it
//!   ends and enqueues one follow-up request for all of them. Removing an entry
//!   ([`withdraw_follow_up`]) succeeds for exactly one caller, which is how a
//!   request is never served by two overlapping runs.

use crate::db::Pool;
use deadpool_redis::redis;

use super::jobs::{self, SyncRequest};
use super::{Error, RedisContext, streams};
use crate::keys::Keys;
use crate::types::SourceId;

/// Enqueues a sync request; returns its request id.
pub async fn enqueue(pool: &Pool, keys: &Keys, request: &SyncRequest) -> Result<String, Error> {
    let fields = request.to_fields();
    streams::add(pool, &keys.requests(), &jobs::as_field_refs(&fields)).await?;
    Ok(request.request_id.clone())
}

fn encode(request: &SyncRequest) -> Vec<u8> {
    rmp_serde::to_vec_named(request).expect("MessagePack encoding of an in-memory struct")
}

/// Records `request` as waiting for the run that holds its source.
pub async fn push_follow_up(pool: &Pool, keys: &Keys, request: &SyncRequest) -> Result<(), Error> {
    let key = keys.follow_up(&request.source);
    let mut conn = pool.get().await?;
    let _: i64 = redis::cmd("RPUSH")
        .arg(&key)
        .arg(encode(request))
        .query_async(&mut conn)
        .await
        .context(|| format!("RPUSH {key}"))?;
    Ok(())
}

/// Takes `request` back out of the follow-up list. True for exactly one caller:
/// false means a run that ended has already turned it into a follow-up request.
pub async fn withdraw_follow_up(pool: &Pool, keys: &Keys, request: &SyncRequest) -> Result<bool, Error> {
    let key = keys.follow_up(&request.source);
    let mut conn = pool.get().await?;
    let removed: i64 = redis::cmd("LREM")
        .arg(&key)
        .arg(1)
        .arg(encode(request))
        .query_async(&mut conn)
        .await
        .context(|| format!("LREM {key}"))?;
    Ok(removed == 1)
}

/// Empties the follow-up list atomically and returns what it held; an entry
/// that cannot be decoded is logged and dropped (it could never be served).
pub async fn drain_follow_ups(pool: &Pool, keys: &Keys, source: &SourceId) -> Result<Vec<SyncRequest>, Error> {
    let key = keys.follow_up(source);
    let mut conn = pool.get().await?;
    let (items, _): (Vec<Vec<u8>>, i64) = redis::pipe()
        .atomic()
        .lrange(&key, 0, -1)
        .del(&key)
        .query_async(&mut conn)
        .await
        .context(|| format!("LRANGE+DEL {key}"))?;
    Ok(items
        .iter()
        .filter_map(|b| match rmp_serde::from_slice::<SyncRequest>(b) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an undecodable follow-up entry");
                None
            }
        })
        .collect())
}
