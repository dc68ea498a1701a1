//! Bounded streams: what is trimmed from the three streams, and when.
//!
//! Without trimming every acked request and page job stays in Redis with its
//! full body, and memory grows with every run. The policy:
//!
//! - **requests and jobs** (`tm:requests`, `tm:jobs`): trimmed by
//!   acknowledgement, `XTRIM MINID ~` at the lowest floor of all consumer
//!   groups, where a group's floor is min(oldest pending, last delivered)
//!   ([`streams::trim_acked`]). So a pending entry (its consumer may be dead
//!   and the entry waiting to be claimed) and an undelivered entry are never
//!   trimmed, whatever their age. We chose MINID over `MAXLEN ~ n`: a length
//!   cap with a "safety margin" is a guess about the backlog, and a backlog
//!   larger than the margin (a big full run, workers down for an hour) would
//!   lose jobs; MINID follows the groups' actual progress and cannot.
//! - **dead letters** (`tm:dlq`): nobody acks them; they are kept for
//!   operators, at most `dlq_max_len` entries and none older than
//!   `dlq_max_age` ([`dlq::trim`]).
//!
//! **Who and when.** The coordinator calls [`trim_all`] when a run ends (its
//! jobs are acked by then, bar the last few acks in flight, which the next
//! trim takes) and [`keep_trimmed`] runs it every `trim_interval` (for idle
//! periods and the age limit of dead letters). Each trim is one Lua script per
//! stream, atomic and idempotent, so several coordinators trimming at once
//! cost a few cheap scripts and cannot remove more than one would.
//!
//! Not done here: a consumer group created after entries were trimmed does
//! not see them (groups are created at start-up, reading from the beginning,
//! before anything is enqueued).

use std::time::Duration;

use crate::db::Pool;
use tokio_util::sync::CancellationToken;

use super::{Error, dlq, streams};
use crate::keys::Keys;

/// How much of the streams is kept (`[queue]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Most dead letters kept; the oldest go first. Default 10,000.
    pub dlq_max_len: u64,
    /// Dead letters older than this are dropped. Default 7 days.
    pub dlq_max_age: Duration,
    /// How often a coordinator trims besides after each run. Default 60 s.
    pub trim_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            dlq_max_len: 10_000,
            dlq_max_age: Duration::from_secs(7 * 24 * 3600),
            trim_interval: Duration::from_secs(60),
        }
    }
}

/// How many entries one [`trim_all`] removed, per stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// From the requests stream.
    pub requests: u64,
    /// From the job streams.
    pub jobs: u64,
    /// From the dead-letter stream.
    pub dead_letters: u64,
}

/// Trims all three streams once (see the module doc for what each keeps).
pub async fn trim_all(pool: &Pool, keys: &Keys, retention: &Retention) -> Result<Trimmed, Error> {
    let mut jobs = 0;
    for stream in keys.job_streams() {
        jobs += streams::trim_acked(pool, &stream).await?;
    }
    let trimmed = Trimmed {
        requests: streams::trim_acked(pool, &keys.requests()).await?,
        jobs,
        dead_letters: dlq::trim(pool, &keys.dead_letters(), retention.dlq_max_len, retention.dlq_max_age).await?,
    };
    if trimmed != Trimmed::default() {
        tracing::debug!(?trimmed, "trimmed streams");
    }
    Ok(trimmed)
}

/// Trims every `retention.trim_interval` until `shutdown`. A failed trim is
/// logged and tried again next time: trimming is housekeeping, never urgent.
pub async fn keep_trimmed(pool: Pool, keys: Keys, retention: Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(retention.trim_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = trim_all(&pool, &keys, &retention).await {
            tracing::warn!(error = %e, "trimming streams failed; trying again next interval");
        }
    }
}
