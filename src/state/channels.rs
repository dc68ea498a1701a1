//! The push channel each source's coordinators keep open (Drive
//! `changes.watch`), kept in Redis so the fleet opens one, renews it once, and
//! stops the one it replaced.
//!
//! Invariants:
//! - One renewal at a time per source: a coordinator claims the renewal
//!   (`SET NX PX`) before opening a channel.
//! - The stored channel changes only by compare-and-swap on its id
//!   (`lua/swap_channel.lua`): a coordinator that paused past its claim and
//!   finds another's channel stored does not overwrite it (it stops its own).
//! - The record expires with the channel (plus a margin): an expired channel
//!   is never mistaken for an open one after a long outage.
//!
//! Not fenced by the sync lock: channels are a wake-up call, not data; the
//! worst a race costs is one extra channel, which its opener stops.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{Error, StateStore};
use crate::sources::Channel;
use crate::types::SourceId;

static SWAP_CHANNEL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/swap_channel.lua")));

/// A push channel as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenChannel {
    /// The channel as the source granted it.
    pub channel: Channel,
    /// When it was opened (our clock): with its expiry, when to renew it.
    pub opened_at: DateTime<Utc>,
    /// The address it delivers to (a changed `address` opens a new channel).
    pub address: String,
}

impl OpenChannel {
    /// When to open its successor: with a quarter of its granted life left.
    pub fn renew_at(&self) -> DateTime<Utc> {
        let life = self.channel.expires_at - self.opened_at;
        self.channel.expires_at - life / 4
    }
}

impl StateStore {
    /// The source's open push channel, if any.
    pub async fn push_channel(&self, source: &SourceId) -> Result<Option<OpenChannel>, Error> {
        let key = self.keys.push_channel(source);
        let mut conn = self.pool.get().await?;
        let json: Option<String> = conn.hget(&key, "json").await?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| Error::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Stores `new` if the stored channel is still `read` (by id); `false` if
    /// another coordinator stored one first.
    pub async fn swap_push_channel(
        &self,
        source: &SourceId,
        read: Option<&OpenChannel>,
        new: &OpenChannel,
    ) -> Result<bool, Error> {
        let json = serde_json::to_string(new).map_err(|e| Error::Corrupt {
            key: self.keys.push_channel(source),
            reason: e.to_string(),
        })?;
        let live_ms = (new.channel.expires_at - Utc::now()).num_milliseconds().max(0) + 3_600_000;
        let mut conn = self.pool.get().await?;
        let swapped: i64 = SWAP_CHANNEL
            .key(self.keys.push_channel(source))
            .arg(read.map_or("", |c| c.channel.id.as_str()))
            .arg(&new.channel.id)
            .arg(json)
            .arg(live_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(swapped == 1)
    }

    /// Claims the source's channel renewal for `holder` for `ttl`; `false` if another holds it.
    pub async fn claim_channel_renewal(&self, source: &SourceId, holder: &str, ttl: Duration) -> Result<bool, Error> {
        let mut conn = self.pool.get().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.push_channel_renewal(source))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Ends a renewal claim (it also ends by itself when its TTL runs out).
    pub async fn release_channel_renewal(&self, source: &SourceId) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: i64 = conn.del(self.keys.push_channel_renewal(source)).await?;
        Ok(())
    }
}
