//! One run, from the lock to the committed checkpoint: register the token,
//! plan, enqueue page jobs, wait for them, refresh dependents, commit.
//!
//! Invariants:
//! - the token is registered with the state and the sink before anything else
//!   is written, so every older run's writes are refused by both from then on;
//! - the checkpoint is committed only when every page is done and the deletion
//!   guard did not hold anything back; otherwise the next run sees it all again;
//! - a lost lease (not extended in time) stops the run at its next safe point,
//!   before it commits anything.

use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_redis::Pool;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, Error, GROUP, plan};
use crate::hooks::Point;
use crate::lock::{Lease, LockManager};
use crate::queue::jobs::{self, JobItem, PageJob};
use crate::queue::streams;
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
    ) -> Result<(), Error> {
        let id = source.id().clone();
        let token = lease.token;
        let policy = self.policies.get(&id).cloned().unwrap_or_default();
        // Both stores learn the token before any page job of this run exists:
        // from here on, every job of an older run is refused by each of them.
        self.state.register_token(&id, token).await?;
        self.sink.register_token(&id, token).await?;
        let checkpoint = self.state.checkpoint(&id).await?;
        let (mode, reconcile_note) = plan::effective_mode(request.mode, &checkpoint, &policy, Utc::now());
        if let Some(prev) = self
            .state
            .start_run(&id, run, token, mode, request.requested_by, request.request_ids)
            .await?
        {
            tracing::warn!(source = %id, previous = %prev, "previous run was abandoned by its coordinator");
        }
        tracing::info!(source = %id, run = %run, %mode, %token, "run started");

        let held_count = self.state.doc_count(&id).await? as usize;
        let (mut plan, mut end) = if request.targets.is_empty() {
            let calls = sources::ApiCalls::default();
            let planned = self.plan(source, &checkpoint, mode, run, lost, &calls).await;
            // Counted whether or not the feed succeeded: failed calls spend the source's budget too.
            self.state
                .add_run_counter(&id, run, RunCounter::ApiCalls, calls.get())
                .await?;
            let (plan, end) = planned?;
            (plan, Some(end))
        } else {
            let refs: Vec<&DocumentId> = request.targets.iter().collect();
            let before = refs
                .iter()
                .zip(self.state.held_meta_of(&id, &refs).await?)
                .filter_map(|(id, m)| m.map(|m| ((*id).clone(), m)))
                .collect();
            let mut plan = plan::targeted_plan(request.targets, before);
            self.complete_breadcrumbs(&id, &mut plan).await?;
            (plan, None)
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
        self.enqueue_pages(&id, run, token, &plan.items, &mut pages).await?;
        let feed_read = RunUpdate {
            pages_total: Some(u64::from(pages)),
            docs_processed: Some(plan.items.len() as u64),
            unchanged: Some(plan.unchanged),
            feed_done: Some(true),
            note: Some(plan.note.join("; ")),
            ..RunUpdate::default()
        };
        self.state.update_run(&id, run, token, &feed_read).await?;
        tracing::info!(source = %id, run = %run, pages, docs = plan.items.len(), unchanged = plan.unchanged, "feed read, jobs enqueued");
        self.wait_for_pages(&id, run, u64::from(pages), lost).await?;
        self.hooks.at(&id, run, Point::PagesDone).await;

        // Dependents: what changed may have made other documents stale without
        // changing them at the source. Their rewrite needs the state the pages
        // above just wrote (titles, parents, links), hence a second phase.
        let refresh = self.dependents(&id, &plan).await?;
        if !refresh.is_empty() {
            self.enqueue_pages(&id, run, token, &refresh, &mut pages).await?;
            let found = RunUpdate {
                pages_total: Some(u64::from(pages)),
                dependents: Some(refresh.len() as u64),
                ..RunUpdate::default()
            };
            self.state.update_run(&id, run, token, &found).await?;
            tracing::info!(source = %id, run = %run, dependents = refresh.len(), "dependents enqueued");
        }
        let record = self.wait_for_pages(&id, run, u64::from(pages), lost).await?;
        self.hooks.at(&id, run, Point::BeforeCommit).await;
        let status = if record.pages_failed == 0 && guard.is_none() {
            // A targeted run read no feed: the checkpoint stays for the next full-feed run.
            if let Some(end) = &end {
                self.state.commit_checkpoint(&id, token, &end.checkpoint).await?;
            }
            RunStatus::Completed
        } else {
            // Failed pages were not applied, held-back deletions not made: keeping
            // the old checkpoint makes the next run see them again (and skip the
            // rest by version).
            RunStatus::CompletedWithErrors
        };
        let mut ended = RunUpdate::ended(status);
        if let Some(refusal) = guard {
            self.state.add_run_counter(&id, run, RunCounter::Errors, 1).await?;
            ended = ended.with_error(refusal);
        }
        self.state.update_run(&id, run, token, &ended).await?;
        tracing::info!(source = %id, run = %run, %status, "run ended");
        Ok(())
    }

    /// Adds `items` as page jobs numbered from `*pages` on.
    async fn enqueue_pages(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        items: &[JobItem],
        pages: &mut u32,
    ) -> Result<(), Error> {
        for chunk in items.chunks(self.cfg.page_size.get()) {
            let job = PageJob {
                run: run.clone(),
                source: source.clone(),
                token,
                page: *pages,
                items: chunk.to_vec(),
            };
            let fields = job.to_fields();
            streams::add(&self.pool, &self.keys.jobs(), &jobs::as_field_refs(&fields)).await?;
            *pages += 1;
        }
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
        let mut last_progress = Instant::now();
        let mut last_count = u64::MAX;
        loop {
            let record = self
                .state
                .run(source, run)
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
            self.state.wait_for_progress(source, run, wait).await?;
        }
    }
}

/// Extends the lease every third of its TTL and keeps the request entry fresh
/// in the pending list; cancels `lost` if the lease cannot be kept.
#[allow(clippy::too_many_arguments)]
pub(super) async fn keep_lease(
    locks: LockManager,
    mut lease: Lease,
    ttl: Duration,
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
        if !locks.extend(&mut lease, ttl).await {
            tracing::error!(source = %lease.source, "lock lost: the run stops at its next safe point");
            lost.cancel();
            return;
        }
        if let Err(e) = streams::touch(&pool, &requests, GROUP, &consumer, &entry_id).await {
            tracing::warn!(error = %e, "could not refresh the request entry");
        }
    }
}
