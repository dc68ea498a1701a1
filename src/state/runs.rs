//! Run records (hash `tm:{S}:run:{R}`), page completion, and which run served a request.
//!
//! Invariants:
//! - The record's fields are written through [`RunUpdate`] (and at start by
//!   [`StateStore::start_run`]) under the run's token: a superseded run cannot
//!   change its successor's view of the source. Counters ([`RunCounter`]) are
//!   unfenced additions: a stale run's counts harm nobody.
//! - A page is counted once ([`StateStore::page_done`] keeps a set of done pages).
//! - A request maps to every run that served it, in start order; its answer is
//!   the first that completed ([`StateStore::request_outcome`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{Error, StateStore};
use crate::lock::fencing;
use crate::types::{FencingToken, RunId, SourceId, SyncMode};

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Holding the lock, reading the feed or waiting for pages.
    Running,
    /// Every page done, checkpoint committed.
    Completed,
    /// Finished, but some pages were dead-lettered; the checkpoint did not advance.
    CompletedWithErrors,
    /// Could not finish (source error, lost lock, stall); nothing committed.
    Failed,
    /// Its coordinator vanished; a later run took over the source.
    Abandoned,
}

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::CompletedWithErrors => "completed_with_errors",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
        })
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "completed_with_errors" => RunStatus::CompletedWithErrors,
            "failed" => RunStatus::Failed,
            "abandoned" => RunStatus::Abandoned,
            other => return Err(format!("unknown run status {other:?}")),
        })
    }
}

/// A run's record, as stored in its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: RunId,
    /// Source.
    pub source: SourceId,
    /// Status.
    pub status: RunStatus,
    /// Incremental or full.
    pub mode: SyncMode,
    /// Who asked (of the first request served).
    pub requested_by: String,
    /// The coordinator replica that ran it (its consumer name).
    pub coordinator: String,
    /// Ids of every request this run serves (coalesced requests included).
    pub request_ids: Vec<String>,
    /// The run's fencing token.
    pub token: FencingToken,
    /// Start time (our clock; for people only).
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub ended_at: Option<DateTime<Utc>>,
    /// The feed has been read to its end and every page enqueued.
    pub feed_done: bool,
    /// Pages enqueued.
    pub pages_total: u64,
    /// Pages processed.
    pub pages_done: u64,
    /// Pages dead-lettered.
    pub pages_failed: u64,
    /// Pages dropped by workers because a newer run owned the source (their
    /// writes refused by fencing, or never attempted).
    pub pages_superseded: u64,
    /// Documents that failed on their own while their pages were applied
    /// (recorded with their reasons; every later run retries them).
    pub docs_failed: u64,
    /// Documents put into jobs (changed, created or deleted).
    pub docs_processed: u64,
    /// Documents written to the sink.
    pub upserted: u64,
    /// Documents removed from the sink.
    pub deleted: u64,
    /// Documents in jobs found unchanged (same version and content hash).
    pub skipped: u64,
    /// Documents seen in the feed and dropped as unchanged by version.
    pub unchanged: u64,
    /// Requests to the source's API, feed and fetches together.
    pub api_calls: u64,
    /// Dependents found (descendants of renamed or moved documents, documents linking to changed ones).
    pub dependents: u64,
    /// Dependents whose breadcrumbs or link titles were rewritten (no content fetched).
    pub dependents_updated: u64,
    /// Documents whose permissions alone changed, rewritten with them (no content fetched).
    #[serde(default)]
    pub permissions_updated: u64,
    /// Errors recorded.
    pub errors: u64,
    /// The last error, for people.
    pub last_error: String,
    /// Why the run did what it did (e.g. "complete listing: deletion sweep").
    pub note: String,
    /// Wall time in milliseconds, when ended.
    pub wall_ms: Option<u64>,
}

impl RunRecord {
    fn from_hash(h: &HashMap<String, String>) -> Result<Self, String> {
        let s = |k: &str| h.get(k).cloned().unwrap_or_default();
        let n = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let t = |k: &str| {
            h.get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.with_timezone(&Utc))
        };
        let started_at = t("started_at");
        let ended_at = t("ended_at");
        Ok(RunRecord {
            run_id: RunId(s("run_id")),
            source: s("source")
                .parse()
                .map_err(|e: crate::types::InvalidSourceId| e.to_string())?,
            status: s("status").parse()?,
            mode: s("mode").parse()?,
            requested_by: s("requested_by"),
            coordinator: s("coordinator"),
            request_ids: s("request_ids")
                .split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect(),
            token: FencingToken(n("token")),
            started_at,
            ended_at,
            feed_done: n("feed_done") == 1,
            pages_total: n("pages_total"),
            pages_done: n("pages_done"),
            pages_failed: n("pages_failed"),
            pages_superseded: n("pages_superseded"),
            docs_failed: n("docs_failed"),
            docs_processed: n("docs_processed"),
            upserted: n("upserted"),
            deleted: n("deleted"),
            skipped: n("skipped"),
            unchanged: n("unchanged"),
            api_calls: n("api_calls"),
            dependents: n("dependents"),
            dependents_updated: n("dependents_updated"),
            permissions_updated: n("permissions_updated"),
            errors: n("errors"),
            last_error: s("last_error"),
            note: s("note"),
            wall_ms: match (started_at, ended_at) {
                (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0) as u64),
                _ => None,
            },
        })
    }
}

/// Fields of a run record that a run sets as it goes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunUpdate {
    /// New status.
    pub status: Option<RunStatus>,
    /// When the run ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// The feed has been read to its end and every page enqueued.
    pub feed_done: Option<bool>,
    /// Pages enqueued so far.
    pub pages_total: Option<u64>,
    /// Documents put into jobs.
    pub docs_processed: Option<u64>,
    /// Documents dropped as unchanged by version.
    pub unchanged: Option<u64>,
    /// Dependents found.
    pub dependents: Option<u64>,
    /// Why the run did what it did.
    pub note: Option<String>,
    /// The last error, for people.
    pub last_error: Option<String>,
}

impl RunUpdate {
    /// The run ends now with `status`.
    pub fn ended(status: RunStatus) -> Self {
        Self {
            status: Some(status),
            ended_at: Some(Utc::now()),
            ..Self::default()
        }
    }

    /// Records `error` as the run's last error.
    pub fn error(error: impl Into<String>) -> Self {
        Self {
            last_error: Some(error.into()),
            ..Self::default()
        }
    }

    /// This update, also recording `error` as the last error.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.last_error = Some(error.into());
        self
    }

    /// The hash fields this update sets, as stored.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.status {
            out.push(("status", s.to_string()));
        }
        if let Some(t) = self.ended_at {
            out.push(("ended_at", t.to_rfc3339()));
        }
        if let Some(d) = self.feed_done {
            out.push(("feed_done", if d { "1" } else { "0" }.to_owned()));
        }
        let numbers = [
            ("pages_total", self.pages_total),
            ("docs_processed", self.docs_processed),
            ("unchanged", self.unchanged),
            ("dependents", self.dependents),
        ];
        out.extend(numbers.into_iter().filter_map(|(k, v)| v.map(|v| (k, v.to_string()))));
        if let Some(n) = &self.note {
            out.push(("note", n.clone()));
        }
        if let Some(e) = &self.last_error {
            out.push(("last_error", e.clone()));
        }
        out
    }
}

/// A run counter that is added to, not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunCounter {
    /// Requests to the source's API (`api_calls`).
    ApiCalls,
    /// Errors recorded (`errors`).
    Errors,
    /// Pages of this run dropped because a newer run owned the source
    /// (`pages_superseded`; a page redelivered after its worker died may count twice).
    PagesSuperseded,
}

impl RunCounter {
    fn field(self) -> &'static str {
        match self {
            RunCounter::ApiCalls => "api_calls",
            RunCounter::Errors => "errors",
            RunCounter::PagesSuperseded => "pages_superseded",
        }
    }
}

/// Counters a worker adds when a page is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Written to the sink.
    pub upserted: u64,
    /// Removed from the sink.
    pub deleted: u64,
    /// Unchanged by version and content hash.
    pub skipped: u64,
    /// API calls made for the page.
    pub api_calls: u64,
    /// Dependents (descendants, linking documents) rewritten without fetching.
    pub refreshed: u64,
    /// Documents whose permissions alone changed, rewritten without fetching.
    pub permissions_updated: u64,
    /// Documents that failed on their own (the rest of the page was applied).
    pub failed: u64,
}

static FENCED_RUN_UPDATE: LazyLock<Script> =
    LazyLock::new(|| fencing::fenced_script(include_str!("lua/update_run.lua")));
static FENCED_PAGE_DONE: LazyLock<Script> = LazyLock::new(|| fencing::fenced_script(include_str!("lua/page_done.lua")));
static PAGE_FAILED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/page_failed.lua")));

/// What a run is, as it starts ([`StateStore::start_run`]).
#[derive(Debug, Clone, Copy)]
pub struct RunStart<'a> {
    /// Incremental or full.
    pub mode: SyncMode,
    /// Who asked (of the first request served).
    pub requested_by: &'a str,
    /// Every request the run serves.
    pub request_ids: &'a [String],
    /// The coordinator replica running it.
    pub coordinator: &'a str,
}

/// How long finished runs' records and request mappings are kept.
const RUN_RETENTION_SECS: i64 = 7 * 24 * 3600;
/// How many runs per source `runs` lists.
const RUN_HISTORY: isize = 50;

impl StateStore {
    /// Creates the record of a new run and makes it the source's current run.
    /// Returns the id of the previous current run, if one was still marked running.
    pub async fn start_run(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        started: &RunStart<'_>,
    ) -> Result<Option<RunId>, Error> {
        let RunStart {
            mode,
            requested_by,
            request_ids,
            coordinator,
        } = *started;
        let previous = {
            let mut conn = self.pool.get().await?;
            let prev: Option<String> = conn.get(self.keys.current_run(source)).await?;
            prev.map(RunId)
        };
        let mut start = vec![
            ("run_id", run.0.clone()),
            ("source", source.to_string()),
            ("mode", mode.to_string()),
            ("requested_by", requested_by.to_owned()),
            ("request_ids", request_ids.join(",")),
            ("coordinator", coordinator.to_owned()),
            ("token", token.0.to_string()),
            ("started_at", Utc::now().to_rfc3339()),
        ];
        start.extend(
            RunUpdate {
                status: Some(RunStatus::Running),
                feed_done: Some(false),
                pages_total: Some(0),
                ..RunUpdate::default()
            }
            .fields(),
        );
        self.set_fields(source, run, token, &start).await?;
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        // LREM before each push: a start retried after a Redis fault lists the run once.
        pipe.set(self.keys.current_run(source), &run.0)
            .ignore()
            .lrem(self.keys.runs(source), 0, &run.0)
            .ignore()
            .lpush(self.keys.runs(source), &run.0)
            .ignore()
            .ltrim(self.keys.runs(source), 0, RUN_HISTORY - 1)
            .ignore()
            .expire(self.keys.run(source, run), RUN_RETENTION_SECS)
            .ignore();
        // A list: a request can be served by more than one run (a run taken
        // over after its coordinator died; a coalescing race that hands it to
        // both the run that took the lock and a follow-up).
        for id in request_ids {
            let key = self.keys.request_run(source, id);
            pipe.lrem(&key, 0, &run.0)
                .ignore()
                .rpush(&key, &run.0)
                .ignore()
                .expire(&key, RUN_RETENTION_SECS)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        // Apart from the pipeline: the set of sources is one key for all of
        // them, in another hash slot than this source's keys on a cluster.
        conn.sadd::<_, _, ()>(self.keys.known_sources(), source.as_str())
            .await?;
        drop(conn);
        // Only now, with the request mapped to this run, is the old run marked:
        // a waiter never sees the abandoned run as the answer to its request.
        let mut abandoned = None;
        if let Some(prev) = previous.filter(|p| p != run)
            && let Some(rec) = self.run(source, &prev).await?
            && rec.status == RunStatus::Running
        {
            let abandon =
                RunUpdate::ended(RunStatus::Abandoned).with_error("its coordinator stopped; a later run took over");
            self.update_run(source, &prev, token, &abandon).await?;
            abandoned = Some(prev);
        }
        Ok(abandoned)
    }

    /// Applies `update` to a run's record, under `token`.
    pub async fn update_run(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        update: &RunUpdate,
    ) -> Result<(), Error> {
        self.set_fields(source, run, token, &update.fields()).await
    }

    async fn set_fields(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        fields: &[(&str, String)],
    ) -> Result<(), Error> {
        let retention = RUN_RETENTION_SECS.to_string().into_bytes();
        let args: Vec<Vec<u8>> = std::iter::once(retention)
            .chain(
                fields
                    .iter()
                    .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.as_bytes().to_vec()]),
            )
            .collect();
        self.fenced(
            &FENCED_RUN_UPDATE,
            &[self.keys.fence(source), self.keys.run(source, run)],
            token,
            &args,
        )
        .await?;
        Ok(())
    }

    /// Adds `n` to a counter of a run (unfenced: counters of a stale run harm nobody).
    pub async fn add_run_counter(
        &self,
        source: &SourceId,
        run: &RunId,
        counter: RunCounter,
        n: u64,
    ) -> Result<(), Error> {
        let key = self.keys.run(source, run);
        let mut conn = self.pool.get().await?;
        // EXPIRE NX (Redis 7.0): a counter added after the record expired must
        // not leave a record that never expires.
        redis::pipe()
            .hincr(&key, counter.field(), n)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(RUN_RETENTION_SECS)
            .arg("NX")
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Counts a page of `run` dropped by a worker because a newer run owns the
    /// source (`pages_superseded`; a redelivered stale page may count twice).
    pub async fn page_superseded(&self, source: &SourceId, run: &RunId) -> Result<(), Error> {
        self.add_run_counter(source, run, RunCounter::PagesSuperseded, 1).await
    }

    /// Marks a page done under `token` and adds its figures; a repeat is a no-op.
    /// Returns whether this call was the one that marked it.
    pub async fn page_done(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        page: u32,
        stats: PageStats,
    ) -> Result<bool, Error> {
        let counters = [
            ("upserted", stats.upserted),
            ("deleted", stats.deleted),
            ("skipped", stats.skipped),
            ("api_calls", stats.api_calls),
            ("dependents_updated", stats.refreshed),
            ("permissions_updated", stats.permissions_updated),
            ("docs_failed", stats.failed),
        ];
        // A zero adds nothing: not sending it spares the script a command.
        let args: Vec<Vec<u8>> = [page.to_string(), RUN_RETENTION_SECS.to_string()]
            .into_iter()
            .chain(
                counters
                    .into_iter()
                    .filter(|(_, n)| *n != 0)
                    .flat_map(|(name, n)| [name.to_owned(), n.to_string()]),
            )
            .map(String::into_bytes)
            .collect();
        let fresh = self
            .fenced(
                &FENCED_PAGE_DONE,
                &[
                    self.keys.fence(source),
                    self.keys.run_pages_done(source, run),
                    self.keys.run(source, run),
                    self.keys.run_wakeup(source, run),
                ],
                token,
                &args,
            )
            .await?;
        Ok(fresh == 1)
    }

    /// Marks a page as failed (dead-lettered) with its reason; a repeat is a no-op.
    pub async fn page_failed(&self, source: &SourceId, run: &RunId, page: u32, reason: &str) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: i64 = PAGE_FAILED
            .key(self.keys.run_pages_done(source, run))
            .key(self.keys.run(source, run))
            .key(self.keys.run_wakeup(source, run))
            .arg(page)
            .arg(reason)
            .arg(RUN_RETENTION_SECS)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Waits up to `timeout` for a page of `run` to finish (BLPOP on its wake-up list).
    pub async fn wait_for_progress(
        &self,
        source: &SourceId,
        run: &RunId,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.keys.run_wakeup(source, run))
            .arg(timeout.as_secs_f64())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Expires a finished run's auxiliary keys and clears it as current.
    pub async fn finish_run_housekeeping(&self, source: &SourceId, run: &RunId) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let current: Option<String> = conn.get(self.keys.current_run(source)).await?;
        let mut pipe = redis::pipe();
        pipe.expire(self.keys.run_pages_done(source, run), RUN_RETENTION_SECS)
            .ignore()
            .del(self.keys.run_wakeup(source, run))
            .ignore()
            // A full sync's titles and plan can be a million fields: freed off Redis' main thread.
            .unlink(self.keys.run_titles(source, run))
            .ignore()
            .unlink(self.keys.run_plan(source, run))
            .ignore()
            .unlink(self.keys.run_plan_order(source, run))
            .ignore()
            .del(self.keys.run_plan_batches(source, run))
            .ignore();
        if current.as_deref() == Some(run.0.as_str()) {
            pipe.del(self.keys.current_run(source)).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The source's current run, if its record still says it is running (a
    /// coordinator that died leaves it so until a later run takes over).
    pub async fn run_in_progress(&self, source: &SourceId) -> Result<Option<RunId>, Error> {
        let current: Option<String> = {
            let mut conn = self.pool.get().await?;
            conn.get(self.keys.current_run(source)).await?
        };
        let Some(run) = current.map(RunId) else {
            return Ok(None);
        };
        let running = self
            .run(source, &run)
            .await?
            .is_some_and(|r| r.status == RunStatus::Running);
        Ok(running.then_some(run))
    }

    /// A run's record.
    pub async fn run(&self, source: &SourceId, run: &RunId) -> Result<Option<RunRecord>, Error> {
        let key = self.keys.run(source, run);
        let mut conn = self.pool.get().await?;
        let h: HashMap<String, String> = conn.hgetall(&key).await?;
        if h.is_empty() {
            return Ok(None);
        }
        RunRecord::from_hash(&h)
            .map(Some)
            .map_err(|reason| Error::Corrupt { key, reason })
    }

    /// The most recent runs of a source, newest first.
    pub async fn recent_runs(&self, source: &SourceId, n: usize) -> Result<Vec<RunRecord>, Error> {
        let ids: Vec<String> = {
            let mut conn = self.pool.get().await?;
            conn.lrange(self.keys.runs(source), 0, n as isize - 1).await?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.run(source, &RunId(id)).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The run that served a request, once one has started for it.
    pub async fn run_for_request(&self, source: &SourceId, request_id: &str) -> Result<Option<RunId>, Error> {
        Ok(self.runs_for_request(source, request_id).await?.pop())
    }

    /// Every run that served a request, in the order they started.
    pub async fn runs_for_request(&self, source: &SourceId, request_id: &str) -> Result<Vec<RunId>, Error> {
        let mut conn = self.pool.get().await?;
        let v: Vec<String> = conn.lrange(self.keys.request_run(source, request_id), 0, -1).await?;
        Ok(v.into_iter().map(RunId).collect())
    }

    /// The run that answers for a request: the first that completed (with or
    /// without errors); else the latest, which may still be running or may have
    /// failed. `None` while no run has started for it.
    pub async fn request_outcome(&self, source: &SourceId, request_id: &str) -> Result<Option<RunRecord>, Error> {
        let mut latest = None;
        for run in self.runs_for_request(source, request_id).await? {
            if let Some(rec) = self.run(source, &run).await? {
                if matches!(rec.status, RunStatus::Completed | RunStatus::CompletedWithErrors) {
                    return Ok(Some(rec));
                }
                latest = Some(rec);
            }
        }
        Ok(latest)
    }

    /// Records that the requests `request_ids` of `source` were dead-lettered
    /// without a run serving them, and why (kept as long as run records).
    pub async fn record_request_refused(
        &self,
        source: &SourceId,
        request_ids: &[String],
        reason: &str,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for id in request_ids {
            pipe.set_ex(self.keys.request_refused(source, id), reason, RUN_RETENTION_SECS as u64)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Why `request_id` was dead-lettered unserved, if it was.
    pub async fn request_refused(&self, source: &SourceId, request_id: &str) -> Result<Option<String>, Error> {
        let mut conn = self.pool.get().await?;
        Ok(conn.get(self.keys.request_refused(source, request_id)).await?)
    }

    /// Waits until the run serving `request_id` has ended, polling every `poll`; `None` on timeout.
    pub async fn wait_for_request(
        &self,
        source: &SourceId,
        request_id: &str,
        poll: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Result<Option<RunRecord>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(rec) = self.request_outcome(source, request_id).await?
                && rec.status.is_terminal()
            {
                return Ok(Some(rec));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Sources that have ever had a run.
    pub async fn known_sources(&self) -> Result<Vec<SourceId>, Error> {
        let mut conn = self.pool.get().await?;
        let v: Vec<String> = conn.smembers(self.keys.known_sources()).await?;
        let mut ids: Vec<SourceId> = v.into_iter().filter_map(|s| SourceId::new(s).ok()).collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run statuses round-trip through text; unknown text is named in the error.
    #[test]
    fn run_status_text() {
        for s in [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::CompletedWithErrors,
            RunStatus::Failed,
            RunStatus::Abandoned,
        ] {
            assert_eq!(s.to_string().parse::<RunStatus>().unwrap(), s);
        }
        assert!("paused".parse::<RunStatus>().unwrap_err().contains("paused"));
    }
}
