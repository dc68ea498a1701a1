//! Schedules: which scheduled source is due, claimed by exactly one
//! coordinator replica however many run, in one round trip per tick however
//! many sources there are (issue 12.6: a thousand sources on two replicas).
//!
//! Five keys under one hash tag (`tm:{schedule}:due`, `:every`, `:phase`,
//! `:claimed`, `:registered`), so the scripts run on a Redis Cluster too:
//! - `due`, a sorted set of source -> next due time (ms, Redis' clock);
//! - `every` and `phase`: each source's period and its phase in it, the
//!   phase a stable hash of the source id, so runs fall on phase + k x period
//!   and a thousand sources with one period spread over it instead of
//!   starting together;
//! - `claimed`, a sorted set of source -> lease end: due times claimed (or
//!   first runs registered) whose request is not enqueued yet;
//! - `registered`, source -> when a coordinator last registered it (ms).
//!
//! Invariants:
//! - Every due time is claimed by one caller (a script moves it forward as
//!   it returns it); time is Redis' (`TIME`), so replicas with skewed clocks agree.
//! - No due time is lost to a caller that dies (or loses Redis) between its
//!   claim and its enqueue: the claim holds a [`CLAIM_LEASE`] the caller ends
//!   with [`enqueued`]; a lease that runs out is claimed again by the next
//!   caller. (A caller paused past its lease and then enqueueing anyway adds
//!   a second request for that due time: coalesced, never lost.)
//! - A source new to the schedule is returned by [`register`] (to exactly one
//!   caller), whose caller enqueues its first sync at once; after that it is
//!   due on its grid. A schedule that fell behind skips the runs it missed
//!   rather than catching up in a burst.
//! - Registration is idempotent and repeated (every coordinator, every
//!   [`REGISTER_EVERY`]), so a Redis that lost its data gets the schedule back.
//! - A source that no coordinator has registered for [`FORGET_AFTER`] (it
//!   left every replica's config) leaves the schedule when it is next due,
//!   instead of being claimed and dropped every period forever. The bound is
//!   many registration periods, so a rolling deploy, during which only some
//!   replicas schedule a source, never drops one a replica still schedules.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::redis::{self, Script};

use super::{Error, RedisContext};
use crate::db::Pool;
use crate::keys::Keys;
use crate::types::SourceId;

static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/schedule_register.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/schedule_claim.lua")));

/// How often each coordinator registers its scheduled sources again.
pub const REGISTER_EVERY: Duration = Duration::from_secs(30);

/// How long a source may go unregistered before the schedule forgets it.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * REGISTER_EVERY.as_secs());

/// How long a claimed due time waits for its caller's [`enqueued`] before the
/// next claim takes it over.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);

/// Registers `schedules` (source, period); returns the sources the schedule
/// did not hold yet, whose first run the caller enqueues now.
pub async fn register(pool: &Pool, keys: &Keys, schedules: &[(SourceId, Duration)]) -> Result<Vec<SourceId>, Error> {
    if schedules.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = on_schedule(&REGISTER, keys);
    invocation.arg(CLAIM_LEASE.as_millis() as u64);
    for (source, every) in schedules {
        let every_ms = every.as_millis().max(1) as u64;
        invocation
            .arg(source.as_str())
            .arg(every_ms)
            .arg(u64::from(crate::keys::stable_hash(source.as_str())) % every_ms);
    }
    let mut conn = pool.get().await?;
    let added: Vec<String> = invocation
        .invoke_async(&mut conn)
        .await
        .context(|| "registering the schedules".to_owned())?;
    Ok(parse(added))
}

/// Claims up to `limit` due sources (each due time for one caller only) and
/// moves them to their next due time; claims whose lease ran out come first.
/// The caller enqueues each one's request, then calls [`enqueued`].
pub async fn claim_due(pool: &Pool, keys: &Keys, limit: usize) -> Result<Vec<SourceId>, Error> {
    let mut invocation = on_schedule(&CLAIM, keys);
    invocation
        .arg(limit)
        .arg(CLAIM_LEASE.as_millis() as u64)
        .arg(FORGET_AFTER.as_millis() as u64);
    let mut conn = pool.get().await?;
    let due: Vec<String> = invocation
        .invoke_async(&mut conn)
        .await
        .context(|| "claiming due schedules".to_owned())?;
    Ok(parse(due))
}

/// Ends the claims of `sources`: their requests are enqueued (or, for a
/// source this config does not schedule, dropped on purpose).
pub async fn enqueued(pool: &Pool, keys: &Keys, sources: &[SourceId]) -> Result<(), Error> {
    if sources.is_empty() {
        return Ok(());
    }
    let [_, _, _, claimed, _] = keys.schedule();
    let mut conn = pool.get().await?;
    let _: i64 = redis::cmd("ZREM")
        .arg(&claimed)
        .arg(sources.iter().map(SourceId::as_str).collect::<Vec<_>>())
        .query_async(&mut conn)
        .await
        .context(|| format!("ZREM {claimed}"))?;
    Ok(())
}

/// `script` invoked on the schedule's keys.
fn on_schedule<'a>(script: &'a Script, keys: &Keys) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys.schedule() {
        invocation.key(key);
    }
    invocation
}

/// Source ids as the scripts return them; one that is not valid (written by
/// hand) is skipped: it names no configured source.
fn parse(ids: Vec<String>) -> Vec<SourceId> {
    ids.into_iter().filter_map(|id| SourceId::new(id).ok()).collect()
}

/// When each scheduled source is next due, by Redis' clock (for `status` and tests).
pub async fn next_due(pool: &Pool, keys: &Keys) -> Result<Vec<(SourceId, chrono::DateTime<chrono::Utc>)>, Error> {
    let [due, ..] = keys.schedule();
    let mut range = redis::cmd("ZRANGE");
    range.arg(&due).arg(0).arg(-1).arg("WITHSCORES");
    let entries = super::scored_sources(pool, &range, || format!("ZRANGE {due}")).await?;
    Ok(entries
        .into_iter()
        .filter_map(|(source, ms)| Some((source, chrono::DateTime::from_timestamp_millis(ms as i64)?)))
        .collect())
}
