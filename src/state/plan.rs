//! A run's plan, kept in Redis while the run lasts: for every document the
//! feed changed, what to do with it (`tm:{S}:run:{R}:plan`), the order the
//! ids were first planned in (`…:plan:order`), and the planned titles
//! ([`super::titles`]) written alongside.
//!
//! Why: a first full sync of a million documents planned in the
//! coordinator's memory took about 2 KB per document (1.9 GB). Kept here, the
//! coordinator holds a feed page and a batch of the plan at a time, whatever
//! the size of the source.
//!
//! Invariants:
//! - each id is in the order list once, however often the feed reports it, so
//!   reading the list in stretches yields every planned document exactly once
//!   (an id the feed reports unchanged after a change keeps its place with an
//!   empty entry, and is left out);
//! - one script per batch of writes, numbered by the coordinator: a batch
//!   applied already is not applied again (a retry after an unknown outcome),
//!   and a batch whose predecessors are missing (Redis restarted without its
//!   latest writes) is refused, as is a plan found with fewer batches than
//!   were written: the run fails rather than page out part of its plan and
//!   commit past the rest;
//! - keyed by run id and read only by that run (its coordinator, and its
//!   workers for the titles), so no fence is needed; deleted when the run ends
//!   (`finish_run_housekeeping`), expired if it never does.

use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};
use serde::{Deserialize, Serialize};

use super::{Error, HeldMeta, StateStore, decode, encode};
use crate::queue::jobs::Action;
use crate::sources::DocMeta;
use crate::types::{DocumentId, RunId, SourceId};

static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/plan_write.lua")));
static RANGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/plan_range.lua")));

/// Writes per script call: bounds one call's size and Redis' time in it.
const WRITE_BATCH: usize = 500;
/// Entries read per stretch of the plan.
pub const READ_BATCH: usize = 1000;
/// Kept at most this long (a run's coordinator may die before deleting them).
const TTL_SECS: i64 = 24 * 3600;

/// What a run plans for one document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// The document as the feed reported it (for a deletion, as we held it).
    #[serde(rename = "m")]
    pub meta: DocMeta,
    /// Upsert or delete.
    #[serde(rename = "a")]
    pub action: Action,
    /// What we held before the run, if anything.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub before: Option<HeldMeta>,
    /// Whether `meta`'s title and parent are where the run expects the
    /// document to be: they stand for it in breadcrumbs, and its title is
    /// planned. False for a document known by id only (named by a webhook, not held).
    #[serde(rename = "k", default)]
    pub placed: bool,
}

impl PlanEntry {
    /// The title the run expects an upserted document to end with, if it has one.
    pub fn planned_title(&self) -> Option<&str> {
        (self.action == Action::Upsert && self.placed).then_some(self.meta.title.as_str())
    }
}

/// What [`StateStore::write_plan`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanWritten {
    /// Batches the plan has applied, these included.
    pub batches: u64,
    /// How many [`PlanWrite::PutIfAbsent`] took effect.
    pub added: u64,
    /// Ids the plan lists after these writes.
    pub listed: u64,
}

/// One write to a plan.
#[derive(Debug, Clone)]
pub enum PlanWrite {
    /// Plan this, replacing whatever was planned for the document.
    Put(PlanEntry),
    /// Plan this only if nothing is planned for the document.
    PutIfAbsent(PlanEntry),
    /// Plan nothing for this document (reported unchanged after a change, or
    /// gone without our holding it).
    Drop(DocumentId),
}

impl StateStore {
    /// Applies `writes` to `run`'s plan in order, as batches numbered from
    /// `after + 1` on (`after`: batches the run applied before). A batch
    /// applied already (a retry after an unknown outcome) is not applied
    /// again. Fails with [`Error::Corrupt`] if batches before these are
    /// missing: Redis lost writes.
    pub async fn write_plan(
        &self,
        source: &SourceId,
        run: &RunId,
        after: u64,
        writes: &[PlanWrite],
    ) -> Result<PlanWritten, Error> {
        let mut written = PlanWritten {
            batches: after,
            ..PlanWritten::default()
        };
        for chunk in writes.chunks(WRITE_BATCH) {
            let mut inv = WRITE.prepare_invoke();
            inv.key(self.keys.run_plan(source, run))
                .key(self.keys.run_plan_order(source, run))
                .key(self.keys.run_titles(source, run))
                .key(self.keys.run_plan_batches(source, run))
                .arg(TTL_SECS)
                .arg(written.batches + 1);
            for write in chunk {
                let (op, id, entry, title) = match write {
                    PlanWrite::Put(e) => ("P", &e.meta.id, encode(e), e.planned_title()),
                    PlanWrite::PutIfAbsent(e) => ("C", &e.meta.id, encode(e), e.planned_title()),
                    PlanWrite::Drop(id) => ("S", id, Vec::new(), None),
                };
                let title = title.map(|t| format!("t{t}")).unwrap_or_default();
                inv.arg(op).arg(id.0.as_str()).arg(entry).arg(title);
            }
            let mut conn = self.pool.get().await?;
            let (status, added, listed): (u8, u64, u64) = inv.invoke_async(&mut conn).await?;
            if status == 0 {
                return Err(self.plan_lost(source, run, written.batches, added));
            }
            written.batches += 1;
            written.added += added;
            written.listed = listed;
        }
        Ok(written)
    }

    /// How many batches of writes `run`'s plan has applied.
    pub async fn plan_batches(&self, source: &SourceId, run: &RunId) -> Result<u64, Error> {
        let mut conn = self.pool.get().await?;
        let done: Option<String> = redis::cmd("GET")
            .arg(self.keys.run_plan_batches(source, run))
            .query_async(&mut conn)
            .await?;
        Ok(done
            .and_then(|d| d.split(':').next().and_then(|n| n.parse().ok()))
            .unwrap_or(0))
    }

    /// The error for a plan that lost batches: `found` of the `expected` applied.
    pub fn plan_lost(&self, source: &SourceId, run: &RunId, expected: u64, found: u64) -> Error {
        Error::Corrupt {
            key: self.keys.run_plan_batches(source, run),
            reason: format!(
                "the run's plan holds {found} of the {expected} batches written to it: \
                 Redis lost writes (restarted without its latest data?); the run stops rather than page out part of it"
            ),
        }
    }

    /// How many ids `run`'s plan lists (dropped ones included).
    pub async fn plan_len(&self, source: &SourceId, run: &RunId) -> Result<u64, Error> {
        let mut conn = self.pool.get().await?;
        let n: u64 = redis::cmd("LLEN")
            .arg(self.keys.run_plan_order(source, run))
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }

    /// The plan's ids from position `start`, at most `count`, in the order
    /// they were first planned; `None` for one dropped since.
    pub async fn plan_range(
        &self,
        source: &SourceId,
        run: &RunId,
        start: u64,
        count: usize,
    ) -> Result<Vec<(DocumentId, Option<PlanEntry>)>, Error> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.run_plan(source, run);
        let mut conn = self.pool.get().await?;
        let flat: Vec<Vec<u8>> = RANGE
            .key(&key)
            .key(self.keys.run_plan_order(source, run))
            .arg(start)
            .arg(start + count as u64 - 1)
            .invoke_async(&mut conn)
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [id, entry] = pair else { break };
            let id = String::from_utf8_lossy(id).into_owned();
            let entry = if entry.is_empty() {
                None
            } else {
                Some(decode(&key, &id, entry)?)
            };
            out.push((DocumentId(id), entry));
        }
        Ok(out)
    }

    /// What `run` plans for each of `ids` (one HMGET); `None` where nothing is.
    pub async fn planned_of(
        &self,
        source: &SourceId,
        run: &RunId,
        ids: &[&DocumentId],
    ) -> Result<Vec<Option<PlanEntry>>, Error> {
        self.hmget_decoded(&self.keys.run_plan(source, run), ids).await
    }

    /// Forgets `run`'s plan and planned titles (a feed started over; its
    /// batches count from 1 again). UNLINK: a million entries are freed off
    /// Redis' main thread.
    pub async fn clear_plan(&self, source: &SourceId, run: &RunId) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        redis::cmd("UNLINK")
            .arg(self.keys.run_plan(source, run))
            .arg(self.keys.run_plan_order(source, run))
            .arg(self.keys.run_titles(source, run))
            .arg(self.keys.run_plan_batches(source, run))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
