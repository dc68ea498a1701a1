//! One run, from the lock to the committed checkpoint: register the token,
//! plan, enqueue page jobs, wait for them, refresh dependents, commit.
//!
//! Invariants:
//! - the token is registered with the state and the sink before anything else
//!   is written, so every older run's writes are refused by both from then on;
//! - the checkpoint is committed only when every page is done and the deletion
//!   guard did not hold anything back; otherwise the next run sees it all again;
//! - a lost lease (not extended in time) stops the run at its next safe point,
//!   before it commits anything;
//! - a transient Redis fault (a restart, a short pause) costs the run a wait,
//!   not its outcome: every Redis operation of the run is retried with the
//!   shared backoff ([`crate::retry`]), but only while the lease holds (the
//!   keeper retries extensions until `valid_until`, then cancels `lost`, which
//!   ends every retry). Retried operations are idempotent: fenced writes set
//!   fields, page completion is a set of page numbers, and a page job XADDed
//!   twice after an unknown outcome is the same page number, counted once.
//!   Counters (`api_calls`, `errors`) are re-sent only when the first attempt
//!   surely did not reach Redis; otherwise a figure may be short, never doubled.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::db::Pool;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::pages::PlanPages;
use super::{Coordinator, Error, GROUP, plan};
use crate::hooks::Point;
use crate::lock::{Lease, LockManager};
use crate::queue::jobs::{self, JobItem, PageJob};
use crate::queue::streams;
use crate::retry::{Backoff, Retrier, Transient};
use crate::sources::{self, Source};
use crate::state::{self, RunCounter, RunStatus, RunUpdate};
use crate::types::{DocumentId, FencingToken, RunId, SourceId, SyncMode};

/// What the requests a run serves asked for, merged.
pub(super) struct RunRequest<'a> {
    pub(super) mode: SyncMode,
    pub(super) requested_by: &'a str,
    pub(super) request_ids: &'a [String],
    pub(super) allow_mass_delete: bool,
    pub(super) targets: &'a [DocumentId],
}

impl Coordinator {
    /// One run, from the feed to the committed checkpoint.
    pub(super) async fn sync_run(
        &self,
        source: &dyn Source,
        lease: &Lease,
        run: &RunId,
        request: RunRequest<'_>,
        lost: &CancellationToken,
    ) -> Result<RunStatus, Error> {
        let id = source.id().clone();
        let token = lease.token;
        let policy = self.policies.get(&id).cloned().unwrap_or_default();
        // Both stores learn the token before any page job of this run exists:
        // from here on, every job of an older run is refused by each of them.
        self.redis(lost, "registering the run's token", || {
            self.state.register_token(&id, token)
        })
        .await?;
        // A sink that is down at the start (a database restarting) is waited
        // for like Redis: failing here would end a request with no run to show for it.
        let sink = self.sinks.sink(&id).ok_or_else(|| crate::sinks::Error::Refused {
            context: format!("source {id} feeds no configured sink"),
        })?;
        self.redis(lost, "registering the run's token with the sinks", || {
            sink.register_token(&id, token)
        })
        .await?;
        let checkpoint = self
            .redis(lost, "reading the checkpoint", || self.state.checkpoint(&id))
            .await?;
        let (mode, reconcile_note) = plan::effective_mode(request.mode, &checkpoint, &policy, Utc::now());
        let started = state::RunStart {
            mode,
            requested_by: request.requested_by,
            request_ids: request.request_ids,
            coordinator: &self.consumer,
        };
        let start = || self.state.start_run(&id, run, token, &started);
        if let Some(prev) = self.redis(lost, "starting the run record", start).await? {
            tracing::warn!(source = %id, previous = %prev, "previous run was abandoned by its coordinator");
        }
        tracing::info!(source = %id, run = %run, %mode, %token, "run started");

        let held_count = self
            .redis(lost, "counting held documents", || self.state.doc_count(&id))
            .await? as usize;
        let (mut plan, mut end) = if request.targets.is_empty() {
            let calls = sources::ApiCalls::observed(self.telemetry.source_api(&id));
            let planned = self.plan(source, &checkpoint, mode, run, lost, &calls).await;
            // Counted whether or not the feed succeeded: failed calls spend the source's budget too.
            self.add_counter(lost, &id, run, RunCounter::ApiCalls, calls.get())
                .await?;
            let (plan, end) = planned?;
            (plan, Some(end))
        } else {
            (self.targeted_plan(&id, run, request.targets, lost).await?, None)
        };
        if let Some(note) = reconcile_note {
            plan.note.insert(0, note);
        }
        let guard = plan::deletion_guard(&mut plan, held_count, &policy, request.allow_mass_delete);
        if let Some(end) = end.as_mut() {
            end.checkpoint.runs_since_full = if mode == SyncMode::Full {
                0
            } else {
                checkpoint.runs_since_full.saturating_add(1)
            };
            end.checkpoint.last_full_at = if mode == SyncMode::Full {
                Some(Utc::now())
            } else {
                checkpoint.last_full_at
            };
        }

        self.hooks.at(&id, run, Point::Planned).await;
        let mut pages = 0u32;
        // Recorded before the pages go out: they go out a few at a time.
        let feed_read = RunUpdate {
            pages_total: Some(self.pages_for(plan.items())),
            docs_processed: Some(plan.items()),
            unchanged: Some(plan.unchanged),
            feed_done: Some(true),
            note: Some(plan.note.join("; ")),
            ..RunUpdate::default()
        };
        self.redis(lost, "recording the feed", || {
            self.state.update_run(&id, run, token, &feed_read)
        })
        .await?;
        let mut planned = PlanPages::new(&id, run, &plan);
        while let Some(items) = planned.next(self, lost).await? {
            self.enqueue_page(&id, run, token, items, &mut pages, lost).await?;
        }
        tracing::info!(source = %id, run = %run, pages, docs = plan.items(), unchanged = plan.unchanged, "feed read, jobs enqueued");
        self.wait_for_pages(&id, run, u64::from(pages), lost).await?;
        self.hooks.at(&id, run, Point::PagesDone).await;

        // Dependents: what changed may have made other documents stale without
        // changing them at the source. Their rewrite needs the state the pages
        // above just wrote (titles, parents, links), hence a second phase.
        let (refresh, owed) = self
            .redis(lost, "finding dependents", || self.dependents(&id, run, &plan))
            .await?;
        if !refresh.is_empty() {
            let found = RunUpdate {
                pages_total: Some(u64::from(pages) + self.pages_for(refresh.len() as u64)),
                dependents: Some(refresh.len() as u64),
                ..RunUpdate::default()
            };
            self.redis(lost, "recording dependents", || {
                self.state.update_run(&id, run, token, &found)
            })
            .await?;
            self.enqueue_pages(&id, run, token, &refresh, &mut pages, lost).await?;
            tracing::info!(source = %id, run = %run, dependents = refresh.len(), "dependents enqueued");
        }
        let record = self.wait_for_pages(&id, run, u64::from(pages), lost).await?;
        if record.pages_failed == 0 {
            // Every refresh is applied: what was owed is paid. (A failed page
            // leaves it owed, for the next run.)
            self.redis(lost, "forgetting owed dependents", || {
                self.state.forget_owed(&id, token, &owed)
            })
            .await?;
        }
        self.hooks.at(&id, run, Point::BeforeCommit).await;
        let commit = record.pages_failed == 0 && guard.is_none();
        if commit && let Some(end) = &mut end {
            end.checkpoint.committed_at = Some(Utc::now());
            // A targeted run read no feed: the checkpoint stays for the next full-feed run.
            // Documents that failed alone do not hold it back: they are recorded
            // as failed, and every later run retries them (`include_unsettled`).
            let end = &*end;
            let commit = || self.state.commit_checkpoint(&id, token, &end.checkpoint);
            self.redis(lost, "committing the checkpoint", commit).await?;
        }
        // Failed pages were not applied, held-back deletions not made: keeping
        // the old checkpoint makes the next run see them again (and skip the
        // rest by version).
        let status = if commit && record.docs_failed == 0 {
            RunStatus::Completed
        } else {
            RunStatus::CompletedWithErrors
        };
        let mut ended = RunUpdate::ended(status);
        if let Some(refusal) = guard {
            self.telemetry.guard_tripped(&id);
            self.add_counter(lost, &id, run, RunCounter::Errors, 1).await?;
            ended = ended.with_error(refusal);
        }
        self.redis(lost, "ending the run", || {
            self.state.update_run(&id, run, token, &ended)
        })
        .await?;
        tracing::info!(source = %id, run = %run, %status, "run ended");
        Ok(status)
    }

    /// Page jobs `n` items make.
    fn pages_for(&self, n: u64) -> u64 {
        n.div_ceil(self.cfg.page_size.get() as u64)
    }

    /// Adds `items` as page jobs numbered from `*pages` on.
    async fn enqueue_pages(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        items: &[JobItem],
        pages: &mut u32,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        for chunk in items.chunks(self.cfg.page_size.get()) {
            self.enqueue_page(source, run, token, chunk.to_vec(), pages, lost)
                .await?;
        }
        Ok(())
    }

    /// Adds `items` as the page job numbered `*pages`, keeping at most
    /// `max_pages_in_flight` of the run's pages enqueued and unfinished: a
    /// large run never fills the job stream, so another source's small run
    /// waits behind a few of its pages, not all of them.
    async fn enqueue_page(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        items: Vec<JobItem>,
        pages: &mut u32,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let stream = self.keys.jobs_for(source);
        let in_flight = self.cfg.max_pages_in_flight.get() as u64;
        if u64::from(*pages) >= in_flight {
            // Room for one more: page `pages - in_flight` (at the latest) has finished.
            self.wait_for_finished(source, run, u64::from(*pages) - in_flight + 1, lost)
                .await?;
        }
        let job = PageJob {
            run: run.clone(),
            source: source.clone(),
            token,
            page: *pages,
            items,
        };
        let fields = job.to_fields();
        let refs = jobs::as_field_refs(&fields);
        // Retried after an unknown outcome, the page may be on the stream
        // twice: both copies carry this page number, which the run's done
        // set counts once, and `pages_total` comes from `pages`, not the stream.
        self.redis(lost, "enqueueing a page job", || {
            streams::add(&self.pool, &stream, &refs)
        })
        .await?;
        *pages += 1;
        Ok(())
    }

    /// Waits until every page of the run is done or failed.
    async fn wait_for_pages(
        &self,
        source: &SourceId,
        run: &RunId,
        pages: u64,
        lost: &CancellationToken,
    ) -> Result<state::RunRecord, Error> {
        self.wait_for_finished(source, run, pages, lost).await
    }

    /// Waits until at least `pages` pages of the run are done or failed; fails
    /// the run when none finishes for `stall_timeout`, or when its lease is lost.
    async fn wait_for_finished(
        &self,
        source: &SourceId,
        run: &RunId,
        pages: u64,
        lost: &CancellationToken,
    ) -> Result<state::RunRecord, Error> {
        let mut last_progress = Instant::now();
        let mut last_count = u64::MAX;
        loop {
            let record = self
                .redis(lost, "reading the run's progress", || self.state.run(source, run))
                .await?
                .ok_or_else(|| state::Error::Corrupt {
                    key: self.keys.run(source, run),
                    reason: "run record vanished".into(),
                })?;
            let finished = record.pages_done + record.pages_failed;
            if finished >= pages {
                return Ok(record);
            }
            if finished != last_count {
                last_count = finished;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > self.cfg.stall_timeout {
                return Err(Error::Stalled(self.cfg.stall_timeout, finished, pages));
            }
            if lost.is_cancelled() {
                return Err(Error::LockLost(source.clone()));
            }
            // Woken at once by a finished page; the timeout re-checks the lock and stall.
            let wait = self.cfg.block.min(self.cfg.lock_ttl / 3).max(Duration::from_millis(10));
            self.redis(lost, "waiting for pages", || {
                self.state.wait_for_progress(source, run, wait)
            })
            .await?;
        }
    }

    /// One Redis operation of a run, retried with the shared backoff while its
    /// error is transient and the run holds its lease (`lost` not cancelled).
    pub(super) async fn redis<T, E, F, Fut>(&self, lost: &CancellationToken, what: &str, op: F) -> Result<T, Error>
    where
        E: Transient + Display + Into<Error>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        crate::retry::retry(self.retry, lost, what, op)
            .await
            .map_err(Into::into)
    }

    /// A [`Retrier`] for a run's operation that borrows mutably (so cannot be a closure).
    pub(super) fn retrier<'a>(&self, lost: &'a CancellationToken, what: &'a str) -> Retrier<'a> {
        Retrier::new(self.retry, lost, what)
    }

    /// Adds to a run counter. HINCRBY is not idempotent: it is re-sent only
    /// when the failed attempt surely never reached Redis; after an unknown
    /// outcome the figure may be short (logged), which beats counting twice or
    /// failing the run over a figure for people.
    async fn add_counter(
        &self,
        lost: &CancellationToken,
        source: &SourceId,
        run: &RunId,
        counter: RunCounter,
        n: u64,
    ) -> Result<(), Error> {
        let mut retrier = self.retrier(lost, "adding to a run counter").not_idempotent();
        loop {
            match self.state.add_run_counter(source, run, counter, n).await {
                Ok(()) => return Ok(()),
                Err(e) => match retrier.failed(e).await {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => {
                        tracing::warn!(%source, %run, ?counter, n, error = %e, "run counter not updated (outcome unknown)");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }
}

/// Extends the lease every third of its TTL and keeps the request entry fresh
/// in the pending list; cancels `lost` if the lease cannot be kept.
///
/// A failed extension (Redis restarting or paused) is retried with `backoff`,
/// but never past the lease's `valid_until`: once that passes without an
/// extension, another coordinator may hold the lock, so `lost` is cancelled
/// and the run stops committing (fencing refuses whatever was already on its way).
#[allow(clippy::too_many_arguments)]
pub(super) async fn keep_lease(
    locks: LockManager,
    mut lease: Lease,
    ttl: Duration,
    backoff: Backoff,
    lost: CancellationToken,
    pool: Pool,
    requests: String,
    consumer: String,
    entry_id: String,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut delays = backoff.delays();
        while !locks.extend(&mut lease, ttl).await {
            let left = lease.valid_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(source = %lease.source, "lock lost: the run stops at its next safe point");
                lost.cancel();
                return;
            }
            let wait = delays.next_delay().min(left);
            tracing::warn!(source = %lease.source, retry_in = ?wait, lease_left = ?left, "could not extend the lock; retrying");
            tokio::time::sleep(wait).await;
        }
        if let Err(e) = streams::touch(&pool, &requests, GROUP, &consumer, &entry_id).await {
            tracing::warn!(error = %e, "could not refresh the request entry");
        }
    }
}
