//! The coordinator: sync request -> lock -> change feed -> page jobs -> checkpoint.
//!
//! For each request read from the requests stream (consumer group `coordinators`):
//! 1. take the source's lock and register its fencing token with the state store
//!    and the sink (before any page job exists, so a predecessor's queued jobs
//!    are refused by both even if this run writes nothing);
//!    if the source is already syncing, the request is *coalesced* into the
//!    source's follow-up list and the running sync enqueues exactly one follow-up
//!    run when it ends (never dropped, never run in parallel);
//! 2. load the checkpoint and the documents we hold, read the change feed, and
//!    keep only what changed: observations whose version, title and parent equal
//!    what we hold are dropped here (de-duplication by version), which makes
//!    overlap windows and repeated listings cost no processing;
//! 3. when the feed was a complete listing, ids we hold that it did not list are deletions;
//! 4. split the changes into page jobs of `page_size` documents on the jobs stream;
//! 5. wait until every page is done or dead-lettered, then commit the new
//!    checkpoint under the fencing token (only if no page failed), end the run,
//!    release the lock.
//!
//! While a run is in flight the lock is extended every third of its TTL and the
//! request entry is kept fresh in the pending list; if this process dies, the
//! lock expires, the request is claimed by another coordinator after
//! `3 * lock_ttl`, and the new run marks the old one abandoned. Jobs of the old
//! run that are still queued are refused by fencing when they reach storage.
//!
//! Files: `mod.rs` (here) the request loop, takeover of orphaned requests, the
//! schedule loop and coalescing; `run.rs` one run from lock to checkpoint;
//! `plan.rs` what a run does (feed reading, mark and sweep, targeted plans,
//! reconciliation, the deletion guard), written to Redis as it is decided;
//! `pages.rs` the plan read back as page jobs with breadcrumbs; `dependents.rs` documents made stale by
//! a run's changes; `channels.rs` the push channels kept open for sources that
//! deliver notifications (Drive `changes.watch`). Breadcrumbs come from [`crate::ancestry`].

mod channels;
mod dependents;
mod pages;
mod plan;
mod run;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::Pool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{SourceConfig, SourcePolicy, SyncConfig, WebhookConfig};
use crate::hooks::Hooks;
use crate::keys::Keys;
use crate::lock::{self, Lease, LockManager};
use crate::queue::jobs::SyncRequest;
use crate::queue::streams::{self, Entry};
use crate::queue::{self, dlq, requests, schedule};
use crate::retry::{self, Backoff, Transient};
use crate::sinks::{self, routes::Routes};
use crate::sources::{self, Source};
use crate::state::{self, RunCounter, RunStatus, RunUpdate, StateStore};
use crate::telemetry::{DeadLetterOrigin, RunOutcome, Telemetry};
use crate::types::{RunId, SourceId, SyncMode};

/// Due sources one replica claims per schedule tick (4 ticks a second).
const CLAIM_PER_TICK: usize = 100;

/// The coordinators' consumer group on the requests stream.
const GROUP: &str = queue::REQUESTS_GROUP;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source's change feed failed.
    #[error("source {source_id}: {error}")]
    Source {
        /// Which source.
        source_id: SourceId,
        /// What it said.
        error: sources::Error,
    },
    /// The state store failed or refused a stale token.
    #[error(transparent)]
    State(#[from] state::Error),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] queue::Error),
    /// The lock could not be used.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// The sink failed or refused a stale token.
    #[error(transparent)]
    Sink(#[from] sinks::Error),
    /// The lock was lost mid-run (not extended in time).
    #[error("lock of {0} lost during the run")]
    LockLost(SourceId),
    /// No page finished for too long.
    #[error("no progress for {0:?}: {1} of {2} pages done")]
    Stalled(Duration, u64, u64),
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        match self {
            Error::State(e) => e.is_transient(),
            Error::Queue(e) => e.is_transient(),
            Error::Sink(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Drives sync runs.
pub struct Coordinator {
    pool: Pool,
    keys: Keys,
    state: StateStore,
    locks: LockManager,
    sources: HashMap<SourceId, Arc<dyn Source>>,
    sinks: Routes,
    schedules: Vec<(SourceId, Duration)>,
    /// Sources that take webhooks (a set: each due window is looked up in it).
    webhook_sources: HashSet<SourceId>,
    /// Sources whose webhook has an `address`: their push channels are kept open.
    channels: Vec<(SourceId, WebhookConfig)>,
    policies: HashMap<SourceId, SourcePolicy>,
    cfg: SyncConfig,
    consumer: String,
    /// How loops and runs ride out Redis faults, and the (redacted) address logs name.
    retry: Backoff,
    redis_addr: String,
    retention: queue::retention::Retention,
    /// Run points for tests ([`crate::hooks`]); none in production.
    hooks: Hooks,
    /// This process's counters and histograms.
    telemetry: Telemetry,
}

/// How long a coordinator keeps trying to hand coalesced requests on.
const FOLLOW_UP_PATIENCE: Duration = Duration::from_secs(300);

impl Coordinator {
    /// A coordinator over `sources`, named `consumer` in the requests group.
    // The parts `app.rs` wires, each used as is; a builder would add nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        keys: Keys,
        locks: LockManager,
        sources: HashMap<SourceId, Arc<dyn Source>>,
        sinks: Routes,
        source_configs: &[SourceConfig],
        cfg: SyncConfig,
        consumer: String,
    ) -> Self {
        let state = StateStore::new(pool.clone(), keys.clone());
        let schedules = source_configs
            .iter()
            .filter_map(|s| s.schedule_every.map(|every| (s.id.clone(), every)))
            .collect();
        let policies = source_configs
            .iter()
            .map(|s| (s.id.clone(), s.policy.clone()))
            .collect();
        let webhook_sources = source_configs
            .iter()
            .filter(|s| s.webhook.is_some())
            .map(|s| s.id.clone())
            .collect();
        let channels = source_configs
            .iter()
            .filter_map(|s| {
                let hook = s.webhook.as_ref().filter(|w| w.address.is_some())?;
                Some((s.id.clone(), hook.clone()))
            })
            .collect();
        Self {
            pool,
            keys,
            state,
            locks,
            sources,
            sinks,
            schedules,
            webhook_sources,
            channels,
            policies,
            cfg,
            consumer,
            retry: Backoff::default(),
            redis_addr: "redis".into(),
            retention: queue::retention::Retention::default(),
            hooks: Hooks::default(),
            telemetry: Telemetry::new("unnamed"),
        }
    }

    /// Retries Redis faults with `retry`; logs name Redis as `addr` (pass it through [`crate::db::redacted`]).
    pub fn with_redis_retry(mut self, retry: Backoff, addr: impl Into<String>) -> Self {
        self.retry = retry;
        self.redis_addr = addr.into();
        self
    }

    /// The state store to use (one that waits for replicas, `[redis] wait_replicas`).
    pub fn with_state(mut self, state: StateStore) -> Self {
        self.state = state;
        self
    }

    /// What the streams keep (`[queue]`); the default unless set.
    pub fn with_retention(mut self, retention: queue::retention::Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Announces this coordinator's run points to `hooks` (tests; see [`crate::hooks`]).
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Records into `telemetry` (the app's) instead of a registry of its own.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    fn request_idle_timeout(&self) -> Duration {
        self.cfg.lock_ttl * 3
    }

    /// Serves requests until `shutdown`; runs in flight finish (up to `drain_timeout`).
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), queue::Error> {
        let requests = self.keys.requests();
        // Started before Redis (or during an outage): wait for it, never exit.
        let reached = retry::until_reachable(self.retry, &shutdown, "coordinator", &self.redis_addr, || async {
            streams::ensure_group(&self.pool, &requests, GROUP).await?;
            for jobs in self.keys.job_streams() {
                streams::ensure_group(&self.pool, &jobs, queue::JOBS_GROUP).await?;
            }
            Ok::<(), queue::Error>(())
        })
        .await?;
        if !reached {
            return Ok(());
        }
        let mut delays = self.retry.delays();
        let runs = Arc::new(Semaphore::new(self.cfg.max_concurrent_runs.get()));
        let tracker = TaskTracker::new();
        if !self.schedules.is_empty() || !self.webhook_sources.is_empty() {
            tracker.spawn(self.clone().schedule_loop(shutdown.clone()));
        }
        if !self.channels.is_empty() {
            tracker.spawn(self.clone().keep_channels(shutdown.clone()));
        }
        // Bounded streams: acked entries and old dead letters are trimmed periodically.
        tracker.spawn(queue::retention::keep_trimmed(
            self.pool.clone(),
            self.keys.clone(),
            self.retention.clone(),
            shutdown.clone(),
        ));
        let mut last_reclaim = Instant::now();
        tracing::info!(consumer = %self.consumer, "coordinator started");

        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = runs.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let mut entries = Vec::new();
            if last_reclaim.elapsed() >= self.request_idle_timeout() / 3 {
                last_reclaim = Instant::now();
                match self.claim_orphaned_request().await {
                    Ok(e) => entries.extend(e),
                    Err(e) => tracing::warn!(error = %e, "claiming orphaned requests failed"),
                }
            }
            if entries.is_empty() {
                match streams::read_new(&self.pool, &requests, GROUP, &self.consumer, 1, self.cfg.block).await {
                    Ok(e) => {
                        if delays.attempts() > 0 {
                            tracing::info!(redis = %self.redis_addr, "reading requests again");
                        }
                        delays.reset();
                        entries = e;
                    }
                    Err(e) => {
                        // The shared policy: capped exponential backoff with jitter.
                        let wait = delays.next_delay();
                        tracing::warn!(redis = %self.redis_addr, error = %e, retry_in = ?wait, attempt = delays.attempts(), "reading requests failed; retrying");
                        drop(permit);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(wait) => continue,
                        }
                    }
                }
            }
            let Some(entry) = entries.into_iter().next() else {
                continue;
            };
            let me = self.clone();
            tracker.spawn(async move {
                me.handle_request(entry).await;
                drop(permit);
            });
        }
        tracker.close();
        if tokio::time::timeout(drain_timeout, tracker.wait()).await.is_err() {
            tracing::warn!("drain timeout: runs still in flight will be taken over after their locks expire");
        }
        tracing::info!(consumer = %self.consumer, "coordinator stopped");
        Ok(())
    }

    /// Takes over one request whose coordinator stopped keeping it fresh.
    async fn claim_orphaned_request(&self) -> Result<Vec<Entry>, queue::Error> {
        let requests = self.keys.requests();
        let idle = self.request_idle_timeout();
        for p in streams::pending_idle(&self.pool, &requests, GROUP, idle, 10).await? {
            let claimed = streams::claim(&self.pool, &requests, GROUP, &self.consumer, idle, &[p.id.as_str()]).await?;
            if let Some(entry) = claimed.into_iter().next() {
                if p.deliveries >= u64::from(self.cfg.max_deliveries) {
                    let reason = format!("sync request delivered {} times without completing", p.deliveries);
                    self.dead_letter_request(&entry, &reason, p.deliveries).await?;
                    continue;
                }
                tracing::info!(entry = %entry.id, from = %p.consumer, "took over an orphaned sync request");
                return Ok(vec![entry]);
            }
        }
        Ok(Vec::new())
    }

    /// Enqueues scheduled incremental syncs (each due time claimed by one
    /// replica, see [`queue::schedule`]) and turns debounced webhook events
    /// into requests when their window closes.
    async fn schedule_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delays = self.retry.delays();
        let scheduled: HashSet<&SourceId> = self.schedules.iter().map(|(s, _)| s).collect();
        let mut registered: Option<Instant> = None;
        let mut swept: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut unavailable = false;
            if !self.webhook_sources.is_empty() {
                unavailable |= self.flush_webhooks(&mut swept).await;
            }
            let mut due = Vec::new();
            if registered.is_none_or(|at| at.elapsed() >= schedule::REGISTER_EVERY) {
                match schedule::register(&self.pool, &self.keys, &self.schedules).await {
                    Ok(new) => {
                        registered = Some(Instant::now());
                        due.extend(new);
                    }
                    Err(e) => {
                        unavailable |= e.is_transient();
                        tracing::warn!(error = %e, "registering the schedules failed");
                    }
                }
            }
            if !self.schedules.is_empty() {
                match schedule::claim_due(&self.pool, &self.keys, CLAIM_PER_TICK).await {
                    Ok(claimed) => due.extend(claimed),
                    Err(e) => {
                        unavailable |= e.is_transient();
                        tracing::warn!(error = %e, "claiming due schedules failed");
                    }
                }
            }
            due.sort();
            due.dedup();
            // Claims end once their requests are enqueued; one that fails stays
            // claimed, and is claimed again when its lease runs out.
            let mut done = Vec::new();
            for source in due {
                if !scheduled.contains(&source) {
                    // Scheduled by a replica with another config (a rollout in progress).
                    tracing::debug!(%source, "due source not scheduled in this config; skipped");
                    done.push(source);
                    continue;
                }
                let req = SyncRequest::new(source.clone(), SyncMode::Incremental, "schedule");
                match queue::enqueue(&self.pool, &self.keys, &req).await {
                    Ok(_) => done.push(source),
                    Err(e) => {
                        unavailable |= e.is_transient();
                        tracing::warn!(%source, error = %e, "scheduled request failed");
                    }
                }
            }
            if let Err(e) = schedule::enqueued(&self.pool, &self.keys, &done).await {
                unavailable |= e.is_transient();
                tracing::warn!(error = %e, "ending schedule claims failed (they are claimed again later)");
            }
            // While Redis is unavailable, back off like every other loop
            // instead of trying (and logging) four times a second.
            if unavailable {
                let wait = delays.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            } else {
                delays.reset();
            }
        }
    }

    /// Flushes the webhook events of the sources whose debounce window has
    /// closed, and of every webhook source once per `webhooks::SWEEP_EVERY`
    /// (last done at `swept`). True when Redis was unavailable.
    async fn flush_webhooks(&self, swept: &mut Option<Instant>) -> bool {
        use queue::webhooks::{self, Flushed};
        let mut unavailable = false;
        let mut due: Vec<(SourceId, Option<u64>)> = Vec::new();
        if swept.is_none_or(|at| at.elapsed() >= webhooks::SWEEP_EVERY) {
            *swept = Some(Instant::now());
            due.extend(self.webhook_sources.iter().map(|s| (s.clone(), None)));
        }
        match webhooks::closing(&self.pool, &self.keys, CLAIM_PER_TICK).await {
            Ok(closing) => due.extend(closing.into_iter().map(|(s, at)| (s, Some(at)))),
            Err(e) => {
                unavailable |= e.is_transient();
                tracing::warn!(error = %e, "reading closing webhook windows failed");
            }
        }
        for (source, at) in due {
            if !self.webhook_sources.contains(&source) {
                continue;
            }
            match webhooks::flush_due(&self.pool, &self.keys, &source).await {
                // Noted early (a clock ahead of ours): looked at again next tick.
                Ok(Flushed::StillOpen) => {}
                Ok(Flushed::Nothing | Flushed::Enqueued) => {
                    if let Some(at) = at
                        && let Err(e) = webhooks::forget_closing(&self.pool, &self.keys, &source, at).await
                    {
                        unavailable |= e.is_transient();
                        tracing::warn!(%source, error = %e, "forgetting a flushed webhook window failed");
                    }
                }
                Err(e) => {
                    unavailable |= e.is_transient();
                    tracing::warn!(%source, error = %e, "flushing webhook events failed");
                }
            }
        }
        unavailable
    }

    /// Moves a request that cannot be served to the dead-letter stream, with
    /// `reason`; a request that names its source is answered `failed` with the
    /// reason (API, `enqueue --wait`) instead of staying `queued` forever.
    async fn dead_letter_request(&self, entry: &Entry, reason: &str, deliveries: u64) -> Result<(), queue::Error> {
        if let Ok(request) = SyncRequest::from_entry(entry) {
            let ids = request.all_request_ids();
            if let Err(e) = self.state.record_request_refused(&request.source, &ids, reason).await {
                tracing::warn!(request = %request.request_id, error = %e, "could not record why the request was dead-lettered");
            }
        }
        let (dead_letters, requests) = (self.keys.dead_letters(), self.keys.requests());
        dlq::dead_letter(&self.pool, &dead_letters, &requests, GROUP, entry, reason, deliveries).await?;
        self.telemetry.dead_lettered(DeadLetterOrigin::Request, 1);
        Ok(())
    }

    async fn ack_request(&self, entry: &Entry) {
        if let Err(e) = streams::ack(&self.pool, &self.keys.requests(), GROUP, &[entry.id.as_str()]).await {
            tracing::warn!(entry = %entry.id, error = %e, "acking request failed; it may run again (harmless)");
        }
    }

    /// Handles one request entry to its end.
    pub async fn handle_request(&self, entry: Entry) {
        let request = match SyncRequest::from_entry(&entry) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(entry = %entry.id, error = %e, "malformed sync request");
                let _ = self.dead_letter_request(&entry, &e.to_string(), 1).await;
                return;
            }
        };
        let Some(source) = self.sources.get(&request.source).cloned() else {
            let reason = format!(
                "sync request {}: unknown source {:?} (configured: {})",
                request.request_id,
                request.source.as_str(),
                self.sources.keys().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
            tracing::warn!(%reason);
            let _ = self.dead_letter_request(&entry, &reason, 1).await;
            return;
        };

        let lease = match self.acquire_or_coalesce(&request).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                self.ack_request(&entry).await;
                return;
            }
            Err(e) => {
                // Left pending: another coordinator (or this one) retries it later.
                tracing::warn!(source = %request.source, error = %e, "could not take the lock; request stays pending");
                return;
            }
        };

        // Requests coalesced while we were acquiring are served by this run too.
        let mut served = vec![request.clone()];
        match requests::drain_follow_ups(&self.pool, &self.keys, &request.source).await {
            Ok(more) => served.extend(more.into_iter().filter(|r| r.request_id != request.request_id)),
            Err(e) => tracing::warn!(error = %e, "reading follow-ups failed"),
        }
        let mode = if served.iter().any(|r| r.mode == SyncMode::Full) {
            SyncMode::Full
        } else {
            SyncMode::Incremental
        };
        let request_ids: Vec<String> = served.iter().flat_map(|r| r.all_request_ids()).collect();
        let allow_mass_delete = served.iter().any(|r| r.allow_mass_delete);
        let targets = plan::merged_targets(&served);

        let lost = CancellationToken::new();
        let keeper = tokio::spawn(run::keep_lease(
            self.locks.clone(),
            lease.clone(),
            self.cfg.lock_ttl,
            self.retry,
            lost.clone(),
            self.pool.clone(),
            self.keys.requests(),
            self.consumer.clone(),
            entry.id.clone(),
        ));
        let run = RunId::generate();
        let started = Instant::now();
        let outcome = self
            .sync_run(
                source.as_ref(),
                &lease,
                &run,
                run::RunRequest {
                    mode,
                    requested_by: &request.requested_by,
                    request_ids: &request_ids,
                    allow_mass_delete,
                    targets: &targets,
                },
                &lost,
            )
            .await;
        keeper.abort();
        if lost.is_cancelled() {
            self.telemetry.lock_lost(&request.source);
        }
        let mut recorded = true;
        match &outcome {
            Ok(status) => {
                let outcome = match status {
                    RunStatus::Completed => RunOutcome::Completed,
                    _ => RunOutcome::CompletedWithErrors,
                };
                self.telemetry.run_ended(&request.source, outcome, started.elapsed());
            }
            Err(e) => {
                tracing::warn!(source = %request.source, run = %run, error = %e, "run failed");
                self.telemetry
                    .run_ended(&request.source, RunOutcome::Failed, started.elapsed());
                // A run that failed before its record was started (its token
                // not yet registered, Redis away) has nothing to answer the
                // request with: no record is made up for it.
                recorded = matches!(self.state.run(&request.source, &run).await, Ok(Some(_)));
                if recorded {
                    let failed = RunUpdate::ended(RunStatus::Failed).with_error(e.to_string());
                    let _ = self.state.update_run(&request.source, &run, lease.token, &failed).await;
                    let _ = self
                        .state
                        .add_run_counter(&request.source, &run, RunCounter::Errors, 1)
                        .await;
                }
            }
        }
        let _ = self.state.finish_run_housekeeping(&request.source, &run).await;
        self.locks.release(&lease).await;
        if !recorded {
            // No run record answers this request: leave it pending, so it is
            // served again (by us or another coordinator once it goes idle)
            // rather than acked with nothing to show for it. A request that
            // always fails this early is dead-lettered after max_deliveries.
            tracing::warn!(source = %request.source, request = %request.request_id, "run failed before its record existed; request stays pending");
            self.enqueue_follow_up(&request.source).await;
            return;
        }
        self.ack_request(&entry).await;
        self.enqueue_follow_up(&request.source).await;
        // The run's jobs are acked now: trim them (and anything else acked) away.
        if let Err(e) = queue::retention::trim_all(&self.pool, &self.keys, &self.retention).await {
            tracing::warn!(error = %e, "trimming streams failed; the periodic trim will retry");
        }
    }

    /// Takes the lock, or records the request as a follow-up of the running sync.
    async fn acquire_or_coalesce(&self, request: &SyncRequest) -> Result<Option<Lease>, Error> {
        if let Some(lease) = self.locks.acquire(&request.source, self.cfg.lock_ttl).await? {
            return Ok(Some(lease));
        }
        requests::push_follow_up(&self.pool, &self.keys, request).await?;
        // The running sync may have ended between our attempt and the push, and
        // checked the follow-up list before we wrote to it: try once more so the
        // request cannot be stranded.
        if let Some(lease) = self.locks.acquire(&request.source, self.cfg.lock_ttl).await? {
            // Serve it ourselves only if our entry is still there: if the run that
            // just ended already took it into a follow-up request, that follow-up
            // serves it, and running it here too would be a second, overlapping answer.
            if requests::withdraw_follow_up(&self.pool, &self.keys, request).await? {
                return Ok(Some(lease));
            }
            self.locks.release(&lease).await;
            // While we held the lock, the follow-up request itself (or another)
            // may have been coalesced behind us: whoever releases the lock turns
            // what waits into a follow-up request, or it waits for the next run's end.
            self.enqueue_follow_up(&request.source).await;
            tracing::info!(source = %request.source, request = %request.request_id, "already taken into a follow-up run");
            return Ok(None);
        }
        tracing::info!(source = %request.source, request = %request.request_id, "source busy: coalesced into its follow-up run");
        Ok(None)
    }

    /// After a run: turns every coalesced request into one follow-up request.
    ///
    /// Both steps ride out a Redis fault with the shared backoff (for up to
    /// [`FOLLOW_UP_PATIENCE`]): the coalesced requests were acked when they
    /// were coalesced, so a follow-up that is not enqueued loses them. An XADD
    /// sent twice after an unknown outcome is harmless: both carry the same
    /// request ids, and the second is served or coalesced like any request.
    async fn enqueue_follow_up(&self, source: &SourceId) {
        let patience = CancellationToken::new();
        let deadline = tokio::time::Instant::now() + FOLLOW_UP_PATIENCE;
        let drained = async {
            let mut retrier = retry::Retrier::new(self.retry, &patience, "reading follow-ups").until(deadline);
            loop {
                match requests::drain_follow_ups(&self.pool, &self.keys, source).await {
                    Ok(p) => return Ok::<_, queue::Error>(p),
                    Err(e) => retrier.failed(e).await?,
                }
            }
        };
        let pending: Vec<SyncRequest> = match drained.await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%source, error = %e, "reading follow-ups failed; they wait for the next run's end");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let mode = if pending.iter().any(|r| r.mode == SyncMode::Full) {
            SyncMode::Full
        } else {
            SyncMode::Incremental
        };
        let mut follow_up = SyncRequest::new(source.clone(), mode, "follow-up");
        follow_up.coalesced = pending.iter().flat_map(|r| r.all_request_ids()).collect();
        follow_up.allow_mass_delete = pending.iter().any(|r| r.allow_mass_delete);
        follow_up.targets = plan::merged_targets(&pending);
        tracing::info!(%source, coalesced = follow_up.coalesced.len(), "enqueueing one follow-up run");
        let mut retrier = retry::Retrier::new(self.retry, &patience, "enqueueing the follow-up run").until(deadline);
        loop {
            match queue::enqueue(&self.pool, &self.keys, &follow_up).await {
                Ok(_) => return,
                Err(e) => {
                    if let Err(e) = retrier.failed(e).await {
                        tracing::error!(%source, error = %e, requests = ?follow_up.coalesced, "could not enqueue the follow-up run; its requests are lost");
                        return;
                    }
                }
            }
        }
    }
}
