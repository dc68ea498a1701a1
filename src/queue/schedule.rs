//! Schedules: which scheduled source is due, claimed by exactly one
//! coordinator replica however many run, in one round trip per tick however
//! many sources there are (issue 12.6: a thousand sources on two replicas).
//!
//! Three keys under one hash tag (`tm:{schedule}:due`, `:every`, `:phase`),
//! so the scripts run on a Redis Cluster too:
//! - `due`, a sorted set of source -> next due time (ms, Redis' clock);
//! - `every` and `phase`: each source's period and its phase in it, the
//!   phase a stable hash of the source id, so runs fall on phase + k x period
//!   and a thousand sources with one period spread over it instead of
//!   starting together.
//!
//! Invariants:
//! - Every due time is claimed by one caller (a script moves it forward as
//!   it returns it); time is Redis' (`TIME`), so replicas with skewed clocks agree.
//! - A source new to the schedule is returned by [`register`] (to exactly one
//!   caller), whose caller enqueues its first sync at once; after that it is
//!   due on its grid. A schedule that fell behind skips the runs it missed
//!   rather than catching up in a burst.
//! - Registration is idempotent and repeated (every coordinator, every
//!   [`REGISTER_EVERY`]), so a Redis that lost its data gets the schedule back.

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

/// Registers `schedules` (source, period); returns the sources the schedule
/// did not hold yet, whose first run the caller enqueues now.
pub async fn register(pool: &Pool, keys: &Keys, schedules: &[(SourceId, Duration)]) -> Result<Vec<SourceId>, Error> {
    if schedules.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = on_schedule(&REGISTER, keys);
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
/// moves them to their next due time.
pub async fn claim_due(pool: &Pool, keys: &Keys, limit: usize) -> Result<Vec<SourceId>, Error> {
    let mut invocation = on_schedule(&CLAIM, keys);
    invocation.arg(limit);
    let mut conn = pool.get().await?;
    let due: Vec<String> = invocation
        .invoke_async(&mut conn)
        .await
        .context(|| "claiming due schedules".to_owned())?;
    Ok(parse(due))
}

/// `script` invoked on the schedule's three keys.
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
