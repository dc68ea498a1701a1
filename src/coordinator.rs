//! The coordinator: sync request -> lock -> change feed -> page jobs -> checkpoint.
//!
//! For each request read from the requests stream (consumer group `coordinators`):
//! 1. take the source's lock and register its fencing token with the state store;
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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deadpool_redis::Pool;
use deadpool_redis::redis;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{SourceConfig, SourcePolicy, SyncConfig};
use crate::keys::Keys;
use crate::lock::{self, Lease, LockManager};
use crate::queue::jobs::{self, Action, JobItem, PageJob, SyncRequest};
use crate::queue::streams::{self, Entry};
use crate::queue::{self, dlq};
use crate::sources::{self, DocMeta, Observation, Source};
use crate::state::{self, HeldMeta, RunStatus, StateStore};
use crate::types::{DocumentId, RunId, SourceId, SyncMode};

/// The coordinators' consumer group on the requests stream.
pub const GROUP: &str = "coordinators";

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
    /// The lock was lost mid-run (not extended in time).
    #[error("lock of {0} lost during the run")]
    LockLost(SourceId),
    /// No page finished for too long.
    #[error("no progress for {0:?}: {1} of {2} pages done")]
    Stalled(Duration, u64, u64),
}

/// Drives sync runs.
pub struct Coordinator {
    pool: Pool,
    keys: Keys,
    state: StateStore,
    locks: LockManager,
    sources: HashMap<SourceId, Arc<dyn Source>>,
    schedules: Vec<(SourceId, Duration)>,
    webhook_sources: Vec<SourceId>,
    policies: HashMap<SourceId, SourcePolicy>,
    cfg: SyncConfig,
    consumer: String,
}

/// Enqueues a sync request; returns its request id.
pub async fn enqueue(pool: &Pool, keys: &Keys, request: &SyncRequest) -> Result<String, queue::Error> {
    let fields = request.to_fields();
    streams::add(pool, &keys.requests(), &jobs::as_field_refs(&fields)).await?;
    Ok(request.request_id.clone())
}

/// Ancestor titles of `id`, root first, from a parent map; stops at cycles and unknown parents.
pub fn breadcrumb(id: &DocumentId, tree: &HashMap<DocumentId, (String, Option<DocumentId>)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([id.clone()]);
    let mut cursor = tree.get(id).and_then(|(_, p)| p.clone());
    while let Some(p) = cursor {
        if !seen.insert(p.clone()) {
            break;
        }
        match tree.get(&p) {
            Some((title, parent)) => {
                out.push(title.clone());
                cursor = parent.clone();
            }
            None => break,
        }
    }
    out.reverse();
    out
}

/// What the requests a run serves asked for, merged.
struct RunRequest<'a> {
    mode: SyncMode,
    requested_by: &'a str,
    request_ids: &'a [String],
    allow_mass_delete: bool,
    targets: &'a [DocumentId],
}

/// The documents a set of requests targets: their union if every request is
/// targeted, or none (the whole source) if any one is not.
fn merged_targets(requests: &[SyncRequest]) -> Vec<DocumentId> {
    if requests.iter().any(|r| r.targets.is_empty()) {
        return Vec::new();
    }
    let mut all: Vec<DocumentId> = requests.iter().flat_map(|r| r.targets.iter().cloned()).collect();
    all.sort();
    all.dedup();
    all
}

/// The mode a run actually uses: an incremental request becomes a full run when
/// periodic reconciliation is due. Returns the mode and, if it changed, why.
pub fn effective_mode(
    requested: SyncMode,
    checkpoint: &sources::Checkpoint,
    policy: &SourcePolicy,
    now: chrono::DateTime<Utc>,
) -> (SyncMode, Option<String>) {
    if requested == SyncMode::Full {
        return (SyncMode::Full, None);
    }
    if let Some(n) = policy.reconcile_every_runs
        && checkpoint.runs_since_full.saturating_add(1) >= n
    {
        return (SyncMode::Full, Some(format!("periodic reconciliation: every {n} runs")));
    }
    if let (Some(every), Some(last)) = (policy.reconcile_every, checkpoint.last_full_at)
        && chrono::Duration::from_std(every).is_ok_and(|every| now - last >= every)
    {
        return (
            SyncMode::Full,
            Some(format!("periodic reconciliation: last full run at {last}")),
        );
    }
    (SyncMode::Incremental, None)
}

/// A plan for named documents only: each is fetched (a document the source no
/// longer has becomes a deletion in the worker), with what we hold as the hint.
fn targeted_plan(targets: &[DocumentId], before: HashMap<DocumentId, HeldMeta>) -> Plan {
    let items = targets
        .iter()
        .map(|id| {
            let h = before.get(id);
            JobItem {
                meta: DocMeta {
                    id: id.clone(),
                    version: h.map(|h| h.version.clone()).unwrap_or_default(),
                    title: h.map(|h| h.title.clone()).unwrap_or_default(),
                    parent: h.and_then(|h| h.parent.clone()),
                    modified_at: None,
                },
                action: Action::Upsert,
                breadcrumb: Vec::new(),
            }
        })
        .collect();
    Plan {
        items,
        note: vec![format!("targeted: {} document(s) named by a webhook", targets.len())],
        tree: before
            .iter()
            .map(|(k, v)| (k.clone(), (v.title.clone(), v.parent.clone())))
            .collect(),
        before,
        ..Plan::default()
    }
}

/// The deletion guard: a listing that comes back empty after an outage or a lost
/// permission must not wipe the knowledge base. If the plan deletes more than
/// `max_delete_share` of the `held` documents and the request did not confirm,
/// the deletions are taken out of the plan (the rest still runs) and the refusal
/// is returned, to be recorded and to keep the checkpoint where it is.
fn deletion_guard(plan: &mut Plan, held: usize, policy: &SourcePolicy, confirmed: bool) -> Option<String> {
    let deletions = plan.items.iter().filter(|i| i.action == Action::Delete).count();
    if deletions == 0 || confirmed || held == 0 || (deletions as f64) <= policy.max_delete_share * held as f64 {
        return None;
    }
    plan.items.retain(|i| i.action != Action::Delete);
    let refusal = format!(
        "deletion guard: {deletions} of {held} documents ({:.0}%) would be deleted, above max_delete_share {:.0}%; \
         nothing was deleted. If this is right, re-run with --allow-mass-delete (API: \"allow_mass_delete\": true)",
        100.0 * deletions as f64 / held as f64,
        100.0 * policy.max_delete_share
    );
    plan.note.push(refusal.clone());
    Some(refusal)
}

/// What a run decided to do, before jobs are enqueued.
#[derive(Debug, Default)]
struct Plan {
    items: Vec<JobItem>,
    unchanged: u64,
    note: Vec<String>,
    /// Title and parent of the documents this plan touches and of their
    /// ancestors, as known after the feed (what it reported over what we hold),
    /// for breadcrumbs. Proportional to the changes, not to the source.
    tree: HashMap<DocumentId, (String, Option<DocumentId>)>,
    /// What we held before the run for every document the plan changes or deletes.
    before: HashMap<DocumentId, HeldMeta>,
}

impl Coordinator {
    /// A coordinator over `sources`, named `consumer` in the requests group.
    pub fn new(
        pool: Pool,
        keys: Keys,
        locks: LockManager,
        sources: HashMap<SourceId, Arc<dyn Source>>,
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
        Self {
            pool,
            keys,
            state,
            locks,
            sources,
            schedules,
            webhook_sources,
            policies,
            cfg,
            consumer,
        }
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
        streams::ensure_group(&self.pool, &requests, GROUP).await?;
        streams::ensure_group(&self.pool, &self.keys.jobs(), crate::worker::GROUP).await?;
        let runs = Arc::new(Semaphore::new(self.cfg.max_concurrent_runs.get()));
        let tracker = TaskTracker::new();
        if !self.schedules.is_empty() || !self.webhook_sources.is_empty() {
            tracker.spawn(self.clone().schedule_loop(shutdown.clone()));
        }
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
                    Ok(e) => entries = e,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading requests failed; retrying");
                        drop(permit);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
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
                    dlq::dead_letter(
                        &self.pool,
                        &self.keys.dead_letters(),
                        &requests,
                        GROUP,
                        &entry,
                        &reason,
                        p.deliveries,
                    )
                    .await?;
                    continue;
                }
                tracing::info!(entry = %entry.id, from = %p.consumer, "took over an orphaned sync request");
                return Ok(vec![entry]);
            }
        }
        Ok(Vec::new())
    }

    /// Enqueues scheduled incremental syncs (one replica wins each slot, SET NX PX)
    /// and turns debounced webhook events into requests when their window closes.
    async fn schedule_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for source in &self.webhook_sources {
                if let Err(e) = crate::api::webhooks::flush_due(&self.pool, &self.keys, source).await {
                    tracing::warn!(%source, error = %e, "flushing webhook events failed");
                }
            }
            for (source, every) in &self.schedules {
                let slot_key = format!("{}:schedule", self.keys.follow_up(source));
                let won: Result<bool, _> = async {
                    let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
                    let r: Option<String> = redis::cmd("SET")
                        .arg(&slot_key)
                        .arg(&self.consumer)
                        .arg("NX")
                        .arg("PX")
                        .arg(every.as_millis() as u64)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<bool, String>(r.is_some())
                }
                .await;
                match won {
                    Ok(true) => {
                        let req = SyncRequest::new(source.clone(), SyncMode::Incremental, "schedule");
                        if let Err(e) = enqueue(&self.pool, &self.keys, &req).await {
                            tracing::warn!(%source, error = %e, "scheduled request failed");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(%source, error = %e, "schedule check failed"),
                }
            }
        }
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
                let _ = dlq::dead_letter(
                    &self.pool,
                    &self.keys.dead_letters(),
                    &self.keys.requests(),
                    GROUP,
                    &entry,
                    &e.to_string(),
                    1,
                )
                .await;
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
            let _ = dlq::dead_letter(
                &self.pool,
                &self.keys.dead_letters(),
                &self.keys.requests(),
                GROUP,
                &entry,
                &reason,
                1,
            )
            .await;
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
        match self.drain_follow_ups(&request.source).await {
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
        let targets = merged_targets(&served);

        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_lease(
            self.locks.clone(),
            lease.clone(),
            self.cfg.lock_ttl,
            lost.clone(),
            self.pool.clone(),
            self.keys.requests(),
            self.consumer.clone(),
            entry.id.clone(),
        ));
        let run = RunId::generate();
        let outcome = self
            .sync(
                source.as_ref(),
                &lease,
                &run,
                RunRequest {
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
        if let Err(e) = &outcome {
            tracing::warn!(source = %request.source, run = %run, error = %e, "run failed");
            let _ = self
                .state
                .set_run_fields(
                    &request.source,
                    &run,
                    lease.token,
                    &[
                        ("status", RunStatus::Failed.to_string()),
                        ("ended_at", Utc::now().to_rfc3339()),
                        ("last_error", e.to_string()),
                    ],
                )
                .await;
            let _ = self
                .state
                .add_run_counters(&request.source, &run, &[("errors", 1)])
                .await;
        }
        let _ = self.state.finish_run_housekeeping(&request.source, &run).await;
        self.locks.release(&lease).await;
        self.ack_request(&entry).await;
        self.enqueue_follow_up(&request.source).await;
    }

    /// Takes the lock, or records the request as a follow-up of the running sync.
    async fn acquire_or_coalesce(&self, request: &SyncRequest) -> Result<Option<Lease>, Error> {
        if let Some(lease) = self.locks.acquire(&request.source, self.cfg.lock_ttl).await? {
            return Ok(Some(lease));
        }
        let body = rmp_serde::to_vec_named(request).expect("MessagePack encoding of an in-memory struct");
        {
            let mut conn = self.pool.get().await.map_err(queue::Error::from)?;
            let _: i64 = redis::cmd("RPUSH")
                .arg(self.keys.follow_up(&request.source))
                .arg(&body)
                .query_async(&mut conn)
                .await
                .map_err(state::Error::from)?;
        }
        // The running sync may have ended between our attempt and the push, and
        // checked the follow-up list before we wrote to it: try once more so the
        // request cannot be stranded.
        if let Some(lease) = self.locks.acquire(&request.source, self.cfg.lock_ttl).await? {
            // Serve it ourselves only if our entry is still there: if the run that
            // just ended already took it into a follow-up request, that follow-up
            // serves it, and running it here too would be a second, overlapping answer.
            let mut conn = self.pool.get().await.map_err(queue::Error::from)?;
            let removed: i64 = redis::cmd("LREM")
                .arg(self.keys.follow_up(&request.source))
                .arg(1)
                .arg(&body)
                .query_async(&mut conn)
                .await
                .map_err(state::Error::from)?;
            if removed == 1 {
                return Ok(Some(lease));
            }
            self.locks.release(&lease).await;
            tracing::info!(source = %request.source, request = %request.request_id, "already taken into a follow-up run");
            return Ok(None);
        }
        tracing::info!(source = %request.source, request = %request.request_id, "source busy: coalesced into its follow-up run");
        Ok(None)
    }

    async fn drain_follow_ups(&self, source: &SourceId) -> Result<Vec<SyncRequest>, state::Error> {
        let key = self.keys.follow_up(source);
        let mut conn = self.pool.get().await?;
        let (items, _): (Vec<Vec<u8>>, i64) = redis::pipe()
            .atomic()
            .lrange(&key, 0, -1)
            .del(&key)
            .query_async(&mut conn)
            .await?;
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

    /// After a run: turns every coalesced request into one follow-up request.
    async fn enqueue_follow_up(&self, source: &SourceId) {
        let pending = match self.drain_follow_ups(source).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%source, error = %e, "reading follow-ups failed");
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
        follow_up.targets = merged_targets(&pending);
        tracing::info!(%source, coalesced = follow_up.coalesced.len(), "enqueueing one follow-up run");
        if let Err(e) = enqueue(&self.pool, &self.keys, &follow_up).await {
            tracing::error!(%source, error = %e, "could not enqueue the follow-up run");
        }
    }

    /// One run, from the feed to the committed checkpoint.
    async fn sync(
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
        self.state.register_token(&id, token).await?;
        let checkpoint = self.state.checkpoint(&id).await?;
        let (mode, reconcile_note) = effective_mode(request.mode, &checkpoint, &policy, Utc::now());
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
                .add_run_counters(&id, run, &[("api_calls", calls.get())])
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
            let mut plan = targeted_plan(request.targets, before);
            self.complete_breadcrumbs(&id, &mut plan).await?;
            (plan, None)
        };
        if let Some(note) = reconcile_note {
            plan.note.insert(0, note);
        }
        let guard = deletion_guard(&mut plan, held_count, &policy, request.allow_mass_delete);
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

        let mut pages = 0u32;
        self.enqueue_pages(&id, run, token, &plan.items, &mut pages).await?;
        self.state
            .set_run_fields(
                &id,
                run,
                token,
                &[
                    ("pages_total", pages.to_string()),
                    ("docs_processed", plan.items.len().to_string()),
                    ("unchanged", plan.unchanged.to_string()),
                    ("feed_done", "1".into()),
                    ("note", plan.note.join("; ")),
                ],
            )
            .await?;
        tracing::info!(source = %id, run = %run, pages, docs = plan.items.len(), unchanged = plan.unchanged, "feed read, jobs enqueued");
        self.wait_for_pages(&id, run, u64::from(pages), lost).await?;

        // Dependents: what changed may have made other documents stale without
        // changing them at the source. Their rewrite needs the state the pages
        // above just wrote (titles, parents, links), hence a second phase.
        let refresh = self.dependents(&id, &plan).await?;
        if !refresh.is_empty() {
            self.enqueue_pages(&id, run, token, &refresh, &mut pages).await?;
            self.state
                .set_run_fields(
                    &id,
                    run,
                    token,
                    &[
                        ("pages_total", pages.to_string()),
                        ("dependents", refresh.len().to_string()),
                    ],
                )
                .await?;
            tracing::info!(source = %id, run = %run, dependents = refresh.len(), "dependents enqueued");
        }
        let record = self.wait_for_pages(&id, run, u64::from(pages), lost).await?;
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
            if let Some(refusal) = guard {
                self.state
                    .set_run_fields(&id, run, token, &[("last_error", refusal)])
                    .await?;
                self.state.add_run_counters(&id, run, &[("errors", 1)]).await?;
            }
            RunStatus::CompletedWithErrors
        };
        self.state
            .set_run_fields(
                &id,
                run,
                token,
                &[("status", status.to_string()), ("ended_at", Utc::now().to_rfc3339())],
            )
            .await?;
        tracing::info!(source = %id, run = %run, %status, "run ended");
        Ok(())
    }

    /// Adds `items` as page jobs numbered from `*pages` on.
    async fn enqueue_pages(
        &self,
        source: &SourceId,
        run: &RunId,
        token: crate::types::FencingToken,
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

    /// The documents to refresh because of this run's changes: the descendants
    /// of renamed, moved or deleted documents (their breadcrumbs), and the
    /// documents linking to created, renamed or deleted ones (their link titles).
    /// Found through the reverse indexes; cycles are cut by the visited set.
    async fn dependents(&self, source: &SourceId, plan: &Plan) -> Result<Vec<JobItem>, Error> {
        let keys = &self.keys;
        let mut roots = Vec::new();
        let mut link_targets = Vec::new();
        let mut deleted = HashSet::new();
        let mut tree = plan.tree.clone();
        for item in plan.items.iter().filter(|i| i.action == Action::Delete) {
            deleted.insert(item.meta.id.clone());
        }
        // What the pages actually wrote, not what the feed announced: a fetch may
        // have found a newer title, a new parent, or the document gone.
        let upserted: Vec<&DocumentId> = plan
            .items
            .iter()
            .filter(|i| i.action == Action::Upsert)
            .map(|i| &i.meta.id)
            .collect();
        for (id, now) in upserted.iter().zip(self.state.docs(source, &upserted).await?) {
            match (now, plan.before.get(*id)) {
                (Some(now), before) => {
                    let renamed = before.is_some_and(|h| h.title != now.title);
                    let moved = before.is_some_and(|h| h.parent != now.parent);
                    if renamed || moved {
                        roots.push((*id).clone());
                    }
                    if renamed || before.is_none() {
                        link_targets.push((*id).clone());
                    }
                    tree.insert((*id).clone(), (now.title, now.parent));
                }
                (None, Some(_)) => {
                    deleted.insert((*id).clone());
                }
                (None, None) => {}
            }
        }
        for id in &deleted {
            roots.push(id.clone());
            link_targets.push(id.clone());
            tree.remove(id);
        }
        let mut found: HashSet<DocumentId> = HashSet::new();
        let mut visited: HashSet<DocumentId> = roots.iter().cloned().collect();
        let mut level = roots;
        while !level.is_empty() {
            let sets: Vec<String> = level.iter().map(|d| keys.children(source, d)).collect();
            let next: Vec<DocumentId> = self
                .state
                .union_of(&sets)
                .await?
                .into_iter()
                .filter(|d| visited.insert(d.clone()))
                .collect();
            found.extend(next.iter().cloned());
            level = next;
        }
        let sets: Vec<String> = link_targets.iter().map(|d| keys.linked_from(source, d)).collect();
        found.extend(self.state.union_of(&sets).await?);

        let mut ids: Vec<DocumentId> = found.into_iter().filter(|d| !deleted.contains(d)).collect();
        ids.sort();
        // Their own entries may be stale in the plan's tree (a descendant of a
        // renamed page was not in the feed): read them, and their ancestors, now.
        for id in &ids {
            tree.remove(id);
        }
        self.fill_ancestry(source, ids.clone(), &mut tree, &deleted).await?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let (title, parent) = tree.get(&id).cloned().unwrap_or_default();
                JobItem {
                    breadcrumb: breadcrumb(&id, &tree),
                    meta: DocMeta {
                        id,
                        version: String::new(),
                        title,
                        parent,
                        modified_at: None,
                    },
                    action: Action::Refresh,
                }
            })
            .collect())
    }

    /// Adds to `tree` the title and parent of every id in `start` and of all
    /// their ancestors that it lacks, from the state, one HMGET per level;
    /// stops at `gone` documents, cycles and 64 levels.
    async fn fill_ancestry(
        &self,
        source: &SourceId,
        start: Vec<DocumentId>,
        tree: &mut HashMap<DocumentId, (String, Option<DocumentId>)>,
        gone: &HashSet<DocumentId>,
    ) -> Result<(), Error> {
        let mut pending = start;
        let mut visited = HashSet::new();
        for _ in 0..64 {
            let mut lookup = Vec::new();
            let mut next = Vec::new();
            for id in pending {
                if gone.contains(&id) || !visited.insert(id.clone()) {
                    continue;
                }
                match tree.get(&id) {
                    Some((_, parent)) => next.extend(parent.clone()),
                    None => lookup.push(id),
                }
            }
            let refs: Vec<&DocumentId> = lookup.iter().collect();
            for (id, meta) in lookup.iter().zip(self.state.held_meta_of(source, &refs).await?) {
                if let Some(m) = meta {
                    next.extend(m.parent.clone());
                    tree.insert(id.clone(), (m.title, m.parent));
                }
            }
            if next.is_empty() {
                break;
            }
            pending = next;
        }
        Ok(())
    }

    /// Gives every upsert of the plan its breadcrumb, reading missing ancestors from the state.
    async fn complete_breadcrumbs(&self, source: &SourceId, plan: &mut Plan) -> Result<(), Error> {
        let gone: HashSet<DocumentId> = plan
            .items
            .iter()
            .filter(|i| i.action == Action::Delete)
            .map(|i| i.meta.id.clone())
            .collect();
        for id in &gone {
            plan.tree.remove(id);
        }
        let upserts: Vec<DocumentId> = plan
            .items
            .iter()
            .filter(|i| i.action == Action::Upsert)
            .map(|i| i.meta.id.clone())
            .collect();
        self.fill_ancestry(source, upserts, &mut plan.tree, &gone).await?;
        for item in plan.items.iter_mut().filter(|i| i.action == Action::Upsert) {
            item.breadcrumb = breadcrumb(&item.meta.id, &plan.tree);
        }
        Ok(())
    }

    /// Reads the whole feed and decides what to do: the changed documents and the deletions.
    ///
    /// Mark and sweep in bounded memory: each feed page's ids are compared with
    /// what we hold by one HMGET and marked in the run's seen set in Redis; after
    /// a complete listing, held documents not marked are deletions, found by
    /// scanning in batches. Memory is proportional to a page plus the changes,
    /// except for connectors that read the held versions themselves.
    async fn plan(
        &self,
        source: &dyn Source,
        checkpoint: &sources::Checkpoint,
        mode: SyncMode,
        run: &RunId,
        lost: &CancellationToken,
        calls: &sources::ApiCalls,
    ) -> Result<(Plan, sources::FeedEnd), Error> {
        let id = source.id().clone();
        let src_err = |error| Error::Source {
            source_id: id.clone(),
            error,
        };
        let seen = self.keys.run_seen(&id, run);
        let mut plan = Plan::default();
        let versions: sources::Held = if source.wants_held_versions() {
            Arc::new(self.state.held_versions(&id).await?)
        } else {
            Arc::default()
        };
        let mut moves = 0u64;
        let mut feed = match source
            .open_feed(checkpoint, mode, versions.clone(), calls.clone())
            .await
        {
            Err(sources::Error::CursorExpired { context }) => {
                plan.note.push(format!("{context}: fell back to a full listing"));
                source
                    .open_feed(checkpoint, SyncMode::Full, versions.clone(), calls.clone())
                    .await
                    .map_err(src_err)?
            }
            other => other.map_err(src_err)?,
        };

        let mut changed: HashMap<DocumentId, DocMeta> = HashMap::new();
        let mut deleted: HashSet<DocumentId> = HashSet::new();
        loop {
            if lost.is_cancelled() {
                return Err(Error::LockLost(id));
            }
            let page = match feed.next_page().await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(sources::Error::CursorExpired { context }) => {
                    // Expired mid-feed: start over with a full listing.
                    plan.note.push(format!("{context}: fell back to a full listing"));
                    self.state.clear_seen(&seen).await?;
                    changed.clear();
                    deleted.clear();
                    plan.before.clear();
                    plan.tree.clear();
                    plan.unchanged = 0;
                    feed = source
                        .open_feed(checkpoint, SyncMode::Full, versions.clone(), calls.clone())
                        .await
                        .map_err(src_err)?;
                    continue;
                }
                Err(e) => return Err(src_err(e)),
            };
            // Everything this page names, looked up at once.
            let named: Vec<&DocumentId> = page
                .observations
                .iter()
                .flat_map(|o| match o {
                    Observation::Present(m) => vec![&m.id],
                    Observation::Deleted(d) => vec![d],
                    Observation::Moved { from, to } => vec![from, &to.id],
                })
                .collect();
            let held: HashMap<DocumentId, HeldMeta> = named
                .iter()
                .zip(self.state.held_meta_of(&id, &named).await?)
                .filter_map(|(d, m)| m.map(|m| ((*d).clone(), m)))
                .collect();
            let mut mark = Vec::new();
            let mut unmark = Vec::new();
            for obs in &page.observations {
                match obs {
                    Observation::Present(meta) => {
                        mark.push(&meta.id);
                        deleted.remove(&meta.id);
                        let h = held.get(&meta.id);
                        let same_as_held = h.is_some_and(|h| {
                            h.version == meta.version && h.title == meta.title && h.parent == meta.parent
                        });
                        if mode == SyncMode::Incremental && same_as_held {
                            plan.unchanged += 1;
                            changed.remove(&meta.id);
                        } else {
                            if let Some(h) = h {
                                plan.before.insert(meta.id.clone(), h.clone());
                            }
                            plan.tree
                                .insert(meta.id.clone(), (meta.title.clone(), meta.parent.clone()));
                            changed.insert(meta.id.clone(), meta.clone());
                        }
                    }
                    Observation::Moved { from, to } => {
                        moves += 1;
                        changed.remove(from);
                        unmark.push(from);
                        if let Some(h) = held.get(from) {
                            plan.before.insert(from.clone(), h.clone());
                            deleted.insert(from.clone());
                        }
                        mark.push(&to.id);
                        deleted.remove(&to.id);
                        if let Some(h) = held.get(&to.id) {
                            plan.before.insert(to.id.clone(), h.clone());
                        }
                        plan.tree.insert(to.id.clone(), (to.title.clone(), to.parent.clone()));
                        changed.insert(to.id.clone(), to.clone());
                    }
                    Observation::Deleted(doc) => {
                        changed.remove(doc);
                        unmark.push(doc);
                        if let Some(h) = held.get(doc) {
                            plan.before.insert(doc.clone(), h.clone());
                            deleted.insert(doc.clone());
                        }
                    }
                }
            }
            self.state.mark_seen(&seen, &mark, &unmark).await?;
        }
        let end = feed.end();
        // Directories and the like: not documents, but breadcrumbs pass through them.
        for folder in feed.folders() {
            plan.tree.insert(folder.id, (folder.title, folder.parent));
        }
        if moves > 0 {
            plan.note.push(format!("{moves} document(s) moved or renamed"));
        }
        if let Some(note) = &end.note {
            plan.note.push(note.clone());
        }
        if end.complete_listing {
            let mut missing = 0usize;
            for (doc, meta) in self.state.unseen(&id, &seen).await? {
                if !changed.contains_key(&doc) && deleted.insert(doc.clone()) {
                    missing += 1;
                    plan.before.insert(doc, meta);
                }
            }
            if missing > 0 {
                plan.note
                    .push(format!("complete listing: {missing} held document(s) no longer listed"));
            }
        }
        self.state.clear_seen(&seen).await?;

        let mut changed: Vec<DocMeta> = changed.into_values().collect();
        changed.sort_by(|a, b| a.id.cmp(&b.id));
        plan.items.extend(changed.into_iter().map(|meta| JobItem {
            meta,
            action: Action::Upsert,
            breadcrumb: Vec::new(),
        }));
        let mut deleted: Vec<DocumentId> = deleted.into_iter().collect();
        deleted.sort();
        for doc in deleted {
            let h = plan.before.get(&doc).cloned();
            plan.items.push(JobItem {
                meta: DocMeta {
                    id: doc,
                    version: h.as_ref().map(|h| h.version.clone()).unwrap_or_default(),
                    title: h.as_ref().map(|h| h.title.clone()).unwrap_or_default(),
                    parent: h.and_then(|h| h.parent),
                    modified_at: None,
                },
                action: Action::Delete,
                breadcrumb: Vec::new(),
            });
        }
        self.complete_breadcrumbs(&id, &mut plan).await?;
        Ok((plan, end))
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
async fn keep_lease(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(edges: &[(&str, &str, Option<&str>)]) -> HashMap<DocumentId, (String, Option<DocumentId>)> {
        edges
            .iter()
            .map(|(id, title, parent)| (DocumentId::from(*id), (title.to_string(), parent.map(DocumentId::from))))
            .collect()
    }

    /// Breadcrumbs list ancestors root first and stop at cycles and unknown parents.
    #[test]
    fn breadcrumbs() {
        let t = tree(&[
            ("1", "Root", None),
            ("2", "Guide", Some("1")),
            ("3", "Install", Some("2")),
        ]);
        assert_eq!(breadcrumb(&"3".into(), &t), vec!["Root", "Guide"]);
        assert!(breadcrumb(&"1".into(), &t).is_empty());
        let cyc = tree(&[("a", "A", Some("b")), ("b", "B", Some("a"))]);
        assert_eq!(breadcrumb(&"a".into(), &cyc), vec!["B"]);
        let dangling = tree(&[("x", "X", Some("gone"))]);
        assert!(breadcrumb(&"x".into(), &dangling).is_empty());
    }

    /// Reconciliation turns an incremental request full every N runs or after T, and says why.
    #[test]
    fn reconciliation_schedule() {
        let now = Utc::now();
        let policy = SourcePolicy {
            reconcile_every_runs: Some(3),
            reconcile_every: Some(Duration::from_secs(3600)),
            ..SourcePolicy::default()
        };
        let cp = |runs, last: Option<chrono::DateTime<Utc>>| sources::Checkpoint {
            runs_since_full: runs,
            last_full_at: last,
            ..Default::default()
        };
        let recent = Some(now - chrono::Duration::minutes(5));
        assert_eq!(
            effective_mode(SyncMode::Incremental, &cp(0, recent), &policy, now).0,
            SyncMode::Incremental
        );
        let (mode, why) = effective_mode(SyncMode::Incremental, &cp(2, recent), &policy, now);
        assert_eq!(mode, SyncMode::Full);
        assert!(why.unwrap().contains("every 3 runs"));
        let old = Some(now - chrono::Duration::hours(2));
        assert_eq!(
            effective_mode(SyncMode::Incremental, &cp(0, old), &policy, now).0,
            SyncMode::Full
        );
        assert_eq!(
            effective_mode(SyncMode::Incremental, &cp(9, None), &SourcePolicy::default(), now).0,
            SyncMode::Incremental
        );
    }

    /// The guard strips deletions above the share unless confirmed, and keeps the rest of the plan.
    #[test]
    fn deletion_guard_thresholds() {
        let item = |id: &str, action| JobItem {
            meta: DocMeta {
                id: id.into(),
                version: "1".into(),
                title: id.into(),
                parent: None,
                modified_at: None,
            },
            action,
            breadcrumb: vec![],
        };
        let plan = || Plan {
            items: vec![
                item("a", Action::Delete),
                item("b", Action::Delete),
                item("c", Action::Upsert),
            ],
            ..Plan::default()
        };
        let policy = SourcePolicy::default();
        let mut p = plan();
        assert!(
            deletion_guard(&mut p, 4, &policy, false).is_none(),
            "2 of 4 is not above 50%"
        );
        let mut p = plan();
        let refusal = deletion_guard(&mut p, 3, &policy, false).expect("2 of 3 is above 50%");
        assert!(refusal.contains("2 of 3"));
        assert_eq!(p.items.len(), 1, "only the upsert remains");
        let mut p = plan();
        assert!(deletion_guard(&mut p, 3, &policy, true).is_none(), "confirmed");
        assert_eq!(p.items.len(), 3);
    }
}
