//! Workers: consume page jobs, apply them idempotently to the sink and the state, ack.
//!
//! One worker process handles up to `worker_concurrency` pages at once. For each page:
//! fetch the content of the documents to upsert (one batched call), skip those
//! whose version and content hash we already hold (unless they are unsettled,
//! see [`crate::state::docs`]), mark the rest unsettled, write them and the
//! deletions to the sink, record them in the state (settling them; all three
//! under the run's fencing token), mark the page done (idempotent), and only
//! then XACK.
//!
//! Failure handling, by what the error means:
//! - a stale fencing token: a newer run owns the source; the page is acked and
//!   dropped. The fence is checked before anything is fetched, so a superseded
//!   run's jobs cost the source nothing;
//! - a retryable source error: the entry stays pending and is redelivered after
//!   `job_idle_timeout`, to this worker or another;
//! - an undecodable entry, an unknown source, a permanent source error, or too
//!   many deliveries: the entry goes to the dead-letter stream with the reason,
//!   its page is counted as failed in its run, and the worker goes on.
//!
//! Crash safety: a worker killed mid-page leaves the entry pending; another
//! worker claims it once idle and redoes it. Redoing is harmless because every
//! write is idempotent (same version and hash are skipped; page completion is a set).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_redis::Pool;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ancestry::{self, Tree};
use crate::config::SyncConfig;
use crate::hooks::{Hooks, Point};
use crate::keys::Keys;
use crate::lock::fencing::StaleFence;
use crate::queue::jobs::{self, Action, PageJob};
use crate::queue::streams::{self, Entry};
use crate::queue::{self, dlq};
use crate::retry::{self, Backoff};
use crate::sinks::{self, Link, Sink, SinkDocument, Written};
use crate::sources::{self, Source};
use crate::state::{self, DocFailure, DocState, DocWrite, PageStats, RunCounter, RunUpdate, StateStore};
use crate::types::{DocumentId, SourceId};

/// The workers' consumer group on the jobs stream.
const GROUP: &str = queue::JOBS_GROUP;

/// Why a page could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A newer run owns the source; drop the page.
    #[error("superseded: {0}")]
    Stale(StaleFence),
    /// Try again later; `after` is the source's hint, when it gave one.
    #[error("{reason}")]
    Retryable {
        /// What failed.
        reason: String,
        /// The source's Retry-After, when it gave one.
        after: Option<Duration>,
    },
    /// Never going to work: dead-letter it.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    /// A failure of our own storage: retried, with no hint of when.
    fn retry(e: impl std::fmt::Display) -> Self {
        JobError::Retryable {
            reason: e.to_string(),
            after: None,
        }
    }
}

impl From<sources::Error> for JobError {
    fn from(e: sources::Error) -> Self {
        match e {
            sources::Error::Retryable { after, .. } => JobError::Retryable {
                reason: e.to_string(),
                after,
            },
            other => JobError::Permanent(other.to_string()),
        }
    }
}

impl From<sinks::Error> for JobError {
    fn from(e: sinks::Error) -> Self {
        match e {
            sinks::Error::StaleFence(s) => JobError::Stale(s),
            // Disk full, permissions: may clear up, and must not lose the page.
            other => JobError::retry(other),
        }
    }
}

impl From<state::Error> for JobError {
    fn from(e: state::Error) -> Self {
        match e {
            state::Error::StaleFence(s) => JobError::Stale(s),
            other => JobError::retry(other),
        }
    }
}

/// A document of a page that failed on its own.
struct Failure {
    id: DocumentId,
    retryable: bool,
    reason: String,
}

impl Failure {
    fn new(id: DocumentId, retryable: bool, reason: String) -> Self {
        Self { id, retryable, reason }
    }
}

/// One sink write a page decided on, made after its documents are marked unsettled.
enum SinkOp {
    /// A fetched document, new or changed.
    Upsert(SinkDocument),
    /// A held document whose breadcrumb or link titles changed.
    Refresh(SinkDocument),
    /// A document the source no longer has.
    Delete(DocumentId),
}

impl SinkOp {
    fn id(&self) -> &DocumentId {
        match self {
            SinkOp::Upsert(d) | SinkOp::Refresh(d) => &d.id,
            SinkOp::Delete(id) => id,
        }
    }
}

/// Everything a worker needs; shared by its in-flight pages.
pub struct Worker {
    pool: Pool,
    keys: Keys,
    state: StateStore,
    sources: HashMap<SourceId, Arc<dyn Source>>,
    sink: Arc<dyn Sink>,
    cfg: SyncConfig,
    consumer: String,
    /// How the run loop rides out Redis faults, and the (redacted) address it names in logs.
    retry: Backoff,
    redis_addr: String,
    /// Run points for tests ([`crate::hooks`]); none in production.
    hooks: Hooks,
}

/// SHA-256 over what the sink receives besides the version, so a change in any
/// of it is a change: the skip check and the sink's own idempotence compare
/// version and this hash only.
///
/// The parent is in it because a source may move a document without a new
/// version (Confluence moves a deleted page's children up). Without it, such a
/// child, once refreshed by a run that saw the deletion but not the move, was
/// planned by every later run (the coordinator compares parents) and skipped by
/// the worker and the sink: the dead parent stayed in the sink for good
/// (issue 8, convergence seed 334; `races::children_moved_up_by_a_deletion_racing_a_sync`).
pub fn content_hash(
    title: &str,
    parent: Option<&DocumentId>,
    breadcrumb: &[String],
    content: &str,
    links: &[Link],
) -> String {
    let mut h = Sha256::new();
    h.update(title.as_bytes());
    h.update([0u8]);
    if let Some(p) = parent {
        h.update([3u8]);
        h.update(p.0.as_bytes());
    }
    h.update([0u8]);
    for b in breadcrumb {
        h.update(b.as_bytes());
        h.update([1u8]);
    }
    h.update([0u8]);
    h.update(content.as_bytes());
    for l in links {
        h.update([2u8]);
        h.update(l.target.0.as_bytes());
        h.update([1u8]);
        if let Some(t) = &l.title {
            h.update(t.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

impl Worker {
    /// A worker named `consumer` (unique per process, e.g. the pod name plus a random suffix).
    pub fn new(
        pool: Pool,
        keys: Keys,
        sources: HashMap<SourceId, Arc<dyn Source>>,
        sink: Arc<dyn Sink>,
        cfg: SyncConfig,
        consumer: String,
    ) -> Self {
        let state = StateStore::new(pool.clone(), keys.clone());
        Self {
            pool,
            keys,
            state,
            sources,
            sink,
            cfg,
            consumer,
            retry: Backoff::default(),
            redis_addr: "redis".into(),
            hooks: Hooks::default(),
        }
    }

    /// Retries Redis faults with `retry`; logs name Redis as `addr` (pass it through [`crate::db::redacted`]).
    pub fn with_redis_retry(mut self, retry: Backoff, addr: impl Into<String>) -> Self {
        self.retry = retry;
        self.redis_addr = addr.into();
        self
    }

    /// Announces this worker's page starts and ends to `hooks` (tests; see [`crate::hooks`]).
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// [`Worker::handle`] between the `PageStart` and `PageEnd` run points.
    async fn handle_at_points(&self, entry: Entry, deliveries: u64) {
        let r = jobs::routing(&entry);
        let (Some(source), Some(run), Some(page)) = (r.source, r.run, r.page) else {
            return self.handle(entry, deliveries).await;
        };
        // Paused at the point (a test deciding when the page goes), the entry is
        // kept fresh as if in flight, so no other worker claims it meanwhile.
        let start = self.hooks.at(&source, &run, Point::PageStart { page, deliveries });
        let keep_fresh = async {
            loop {
                tokio::time::sleep(self.cfg.job_idle_timeout / 3).await;
                let _ = streams::touch(&self.pool, &self.keys.jobs(), GROUP, &self.consumer, &entry.id).await;
            }
        };
        tokio::select! {
            () = start => {}
            _ = keep_fresh => unreachable!("the refresh loop never ends"),
        }
        self.handle(entry, deliveries).await;
        self.hooks.at(&source, &run, Point::PageEnd { page, deliveries }).await;
    }

    /// Consumes jobs until `shutdown` is cancelled, then lets in-flight pages finish
    /// (up to `drain_timeout`) before returning.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), queue::Error> {
        let stream = self.keys.jobs();
        // Started before Redis (or during an outage): wait for it, never exit.
        let reached = retry::until_reachable(self.retry, &shutdown, "worker", &self.redis_addr, || {
            streams::ensure_group(&self.pool, &stream, GROUP)
        })
        .await?;
        if !reached {
            return Ok(());
        }
        let mut delays = self.retry.delays();
        let permits = Arc::new(Semaphore::new(self.cfg.worker_concurrency.get()));
        let tracker = TaskTracker::new();
        let mut last_reclaim = tokio::time::Instant::now();
        tracing::info!(consumer = %self.consumer, "worker started");

        loop {
            // Wait for a free slot first, so we never read entries we cannot start.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            if last_reclaim.elapsed() >= self.cfg.job_idle_timeout / 2 {
                last_reclaim = tokio::time::Instant::now();
                drop(permit);
                if let Err(e) = self.reclaim_idle(&tracker, &permits).await {
                    tracing::warn!(error = %e, "reclaiming idle jobs failed");
                }
                continue;
            }
            let free = permits.available_permits() + 1;
            // Not raced against shutdown: a read cancelled mid-flight could leave
            // entries delivered to us that nobody processes until they go idle.
            let entries = match streams::read_new(&self.pool, &stream, GROUP, &self.consumer, free, self.cfg.block)
                .await
            {
                Ok(e) => {
                    if delays.attempts() > 0 {
                        tracing::info!(redis = %self.redis_addr, "reading jobs again");
                    }
                    delays.reset();
                    e
                }
                Err(e) => {
                    drop(permit);
                    // The shared policy: capped exponential backoff with jitter.
                    let wait = delays.next_delay();
                    tracing::warn!(redis = %self.redis_addr, error = %e, retry_in = ?wait, attempt = delays.attempts(), "reading jobs failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let mut permit = Some(permit);
            for entry in entries {
                let p = match permit.take() {
                    Some(p) => p,
                    None => permits
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                };
                let me = self.clone();
                tracker.spawn(async move {
                    me.handle_at_points(entry, 1).await;
                    drop(p);
                });
            }
        }
        tracker.close();
        if tokio::time::timeout(drain_timeout, tracker.wait()).await.is_err() {
            tracing::warn!("drain timeout: pages still in flight will be redelivered");
        }
        tracing::info!(consumer = %self.consumer, "worker stopped");
        Ok(())
    }

    /// Claims entries other consumers left idle too long; dead-letters the ones
    /// delivered too often.
    async fn reclaim_idle(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
    ) -> Result<(), queue::Error> {
        let stream = self.keys.jobs();
        let idle = self.cfg.job_idle_timeout;
        let pending = streams::pending_idle(&self.pool, &stream, GROUP, idle, 50).await?;
        for p in pending {
            let claimed = streams::claim(&self.pool, &stream, GROUP, &self.consumer, idle, &[p.id.as_str()]).await?;
            let Some(entry) = claimed.into_iter().next() else {
                continue;
            };
            let deliveries = p.deliveries + 1;
            if deliveries > u64::from(self.cfg.max_deliveries) {
                let reason = format!(
                    "delivered {} times without being acked (max_deliveries = {})",
                    p.deliveries, self.cfg.max_deliveries
                );
                self.dead_letter(&entry, &reason, p.deliveries).await;
                continue;
            }
            tracing::info!(entry = %entry.id, from = %p.consumer, deliveries, "claimed an idle job");
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let me = self.clone();
            tracker.spawn(async move {
                me.handle_at_points(entry, deliveries).await;
                drop(permit);
            });
        }
        Ok(())
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str, deliveries: u64) {
        tracing::warn!(entry = %entry.id, %reason, "dead-lettering job");
        let r = jobs::routing(entry);
        if let (Some(source), Some(run), Some(page)) = (r.source, r.run, r.page)
            && let Err(e) = self.state.page_failed(&source, &run, page, reason).await
        {
            tracing::warn!(error = %e, "could not mark the dead-lettered page as failed");
        }
        if let Err(e) = dlq::dead_letter(
            &self.pool,
            &self.keys.dead_letters(),
            &self.keys.jobs(),
            GROUP,
            entry,
            reason,
            deliveries,
        )
        .await
        {
            // Left pending: it will be claimed and dead-lettered again later.
            tracing::warn!(error = %e, entry = %entry.id, "dead-lettering failed");
        }
    }

    async fn ack(&self, entry: &Entry) {
        if let Err(e) = streams::ack(&self.pool, &self.keys.jobs(), GROUP, &[entry.id.as_str()]).await {
            // Unacked means redelivered; the redo is a no-op because the page is marked done.
            tracing::warn!(error = %e, entry = %entry.id, "ack failed; the job will be redelivered");
        }
    }

    /// Processes one entry to its conclusion: acked, left for redelivery, or dead-lettered.
    pub async fn handle(&self, entry: Entry, deliveries: u64) {
        let job = match PageJob::from_entry(&entry) {
            Ok(j) => j,
            Err(e) => {
                // Decoding is deterministic: redelivering cannot help.
                self.dead_letter(&entry, &e.to_string(), deliveries).await;
                return;
            }
        };
        let Some(source) = self.sources.get(&job.source).cloned() else {
            let reason = format!(
                "unknown source {:?}: not in this worker's configuration",
                job.source.as_str()
            );
            self.dead_letter(&entry, &reason, deliveries).await;
            return;
        };
        let calls = sources::ApiCalls::default();
        // A page may legitimately take longer than the idle timeout (a source
        // answering 429 with Retry-After): keep the entry fresh so no other
        // worker claims it while we are still on it.
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.cfg.job_idle_timeout / 3).await;
                if let Err(e) = streams::touch(&self.pool, &self.keys.jobs(), GROUP, &self.consumer, &entry.id).await {
                    tracing::warn!(entry = %entry.id, error = %e, "could not refresh the job's idle time");
                }
            }
        };
        let outcome = tokio::select! {
            outcome = self.apply(&job, source.as_ref(), &calls) => outcome,
            _ = heartbeat => unreachable!("the heartbeat loop never ends"),
        };
        if outcome.is_err() {
            // A successful page reports its calls with its completion; a failed one now.
            let _ = self
                .state
                .add_run_counter(&job.source, &job.run, RunCounter::ApiCalls, calls.get())
                .await;
        }
        match outcome {
            Ok(stats) => match self
                .state
                .page_done(&job.source, &job.run, job.token, job.page, stats)
                .await
            {
                Ok(fresh) => {
                    if !fresh {
                        // Done before (a redelivery): its figures are counted, but these calls were made too.
                        let _ = self
                            .state
                            .add_run_counter(&job.source, &job.run, RunCounter::ApiCalls, calls.get())
                            .await;
                    }
                    self.ack(&entry).await
                }
                Err(state::Error::StaleFence(s)) => self.drop_superseded(&job, &entry, &s).await,
                Err(e) => {
                    tracing::warn!(run = %job.run, page = job.page, error = %e, "marking page done failed; will be redelivered")
                }
            },
            Err(JobError::Stale(s)) => self.drop_superseded(&job, &entry, &s).await,
            Err(JobError::Retryable { reason, after }) => {
                tracing::warn!(run = %job.run, page = job.page, %reason, ?after, deliveries, "page failed; will be redelivered");
                let _ = self
                    .state
                    .update_run(&job.source, &job.run, job.token, &RunUpdate::error(reason))
                    .await;
            }
            Err(JobError::Permanent(reason)) => self.dead_letter(&entry, &reason, deliveries).await,
        }
    }

    /// A newer run owns the source: ack and drop the page, counted in its run's `pages_superseded`.
    async fn drop_superseded(&self, job: &PageJob, entry: &Entry, s: &StaleFence) {
        tracing::info!(run = %job.run, page = job.page, %s, "page superseded by a newer run");
        let _ = self.state.page_superseded(&job.source, &job.run).await;
        self.ack(entry).await;
    }

    /// Records documents that failed on their own: in the state (every later
    /// run retries them), in the dead-letter stream (for operators) and as the
    /// run's last error. The rest of their page has been applied.
    async fn record_failures(&self, job: &PageJob, failures: &[Failure]) -> Result<(), JobError> {
        let now = Utc::now();
        let records: Vec<(DocumentId, DocFailure)> = failures
            .iter()
            .map(|f| {
                let failure = DocFailure {
                    reason: f.reason.clone(),
                    retryable: f.retryable,
                    run: job.run.clone(),
                    at: now,
                };
                (f.id.clone(), failure)
            })
            .collect();
        self.state.record_failures(&job.source, job.token, &records).await?;
        for f in failures {
            tracing::warn!(source = %job.source, run = %job.run, page = job.page, document = %f.id, retryable = f.retryable, reason = %f.reason, "document failed; the rest of its page is applied");
            let failed = dlq::FailedDocument {
                source: &job.source,
                run: &job.run,
                page: job.page,
                document: &f.id,
                reason: &f.reason,
                retryable: f.retryable,
            };
            if let Err(e) = dlq::document_failed(&self.pool, &self.keys.dead_letters(), &failed).await {
                tracing::warn!(error = %e, document = %f.id, "could not dead-letter the failed document");
            }
        }
        let last = &failures[failures.len() - 1];
        let _ = self
            .state
            .update_run(
                &job.source,
                &job.run,
                job.token,
                &RunUpdate::error(format!("document {}: {}", last.id, last.reason)),
            )
            .await;
        Ok(())
    }

    /// Applies a page to the sink and the state. Idempotent.
    pub async fn apply(
        &self,
        job: &PageJob,
        source: &dyn Source,
        calls: &sources::ApiCalls,
    ) -> Result<PageStats, JobError> {
        // A job of a superseded run would be refused at its first write anyway;
        // checking first spares the source the fetches (its quota is shared).
        let current = self.state.current_fence(&job.source).await?;
        if current > job.token {
            return Err(JobError::Stale(StaleFence {
                ours: job.token,
                current,
            }));
        }
        let mut stats = PageStats::default();
        let mut failures: Vec<Failure> = Vec::new();
        let of = |action: Action| job.items.iter().filter(move |i| i.action == action);
        let mut deletes: Vec<DocumentId> = of(Action::Delete).map(|i| i.meta.id.clone()).collect();
        let breadcrumbs: HashMap<&DocumentId, &Vec<String>> =
            job.items.iter().map(|i| (&i.meta.id, &i.breadcrumb)).collect();

        let metas: Vec<_> = of(Action::Upsert).map(|i| i.meta.clone()).collect();
        let fetched = if metas.is_empty() {
            Vec::new()
        } else {
            let fetched = source.fetch(&metas, calls).await;
            stats.api_calls = calls.get();
            let fetched = fetched?;
            // Deleted between the feed and the fetch: a deletion, not an error.
            deletes.extend(fetched.missing);
            for (id, e) in fetched.failed {
                failures.push(Failure::new(id, e.is_retryable(), format!("fetch: {e}")));
            }
            fetched.docs
        };

        // What we hold for everything this page touches, and the titles of
        // everything it links to (newest first: this page's own fetches).
        let refreshes: Vec<&DocumentId> = of(Action::Refresh).map(|i| &i.meta.id).collect();
        let touched: Vec<&DocumentId> = fetched
            .iter()
            .map(|d| &d.meta.id)
            .chain(deletes.iter())
            .chain(refreshes.iter().copied())
            .collect();
        let held: HashMap<DocumentId, DocState> = touched
            .iter()
            .zip(self.state.docs(&job.source, &touched).await?)
            .filter_map(|(id, st)| st.map(|st| ((*id).clone(), st)))
            .collect();
        let mut titles: HashMap<DocumentId, Option<String>> = HashMap::new();
        let wanted: Vec<&DocumentId> = fetched
            .iter()
            .flat_map(|d| d.links.iter())
            .chain(
                refreshes
                    .iter()
                    .filter_map(|id| held.get(*id))
                    .flat_map(|h| h.links.iter()),
            )
            .collect();
        for (id, st) in wanted.iter().zip(self.state.docs(&job.source, &wanted).await?) {
            titles.insert((*id).clone(), st.map(|s| s.title));
        }
        for d in &fetched {
            titles.insert(d.meta.id.clone(), Some(d.meta.title.clone()));
        }
        for id in &deletes {
            titles.insert(id.clone(), None);
        }
        let resolve = |links: &[DocumentId]| -> Vec<Link> {
            links
                .iter()
                .map(|t| Link {
                    target: t.clone(),
                    title: titles.get(t).cloned().flatten(),
                })
                .collect()
        };

        let announced_parents: HashMap<&DocumentId, &Option<DocumentId>> =
            job.items.iter().map(|i| (&i.meta.id, &i.meta.parent)).collect();
        // Unsettled documents may differ in the sink from what the state says:
        // the skip check must not trust the state for them.
        let checked: Vec<&DocumentId> = fetched
            .iter()
            .map(|d| &d.meta.id)
            .chain(refreshes.iter().copied())
            .collect();
        let mut unsettled = self.state.unsettled_of(&job.source, &checked).await?;
        unsettled.extend(self.state.failed_of(&job.source, &checked).await?);
        let mut ops: Vec<SinkOp> = Vec::new();
        let mut writes: Vec<DocWrite> = Vec::new();
        // Titles and parents for breadcrumbs rebuilt below: this page's fetches
        // first, completed from the state as needed.
        let mut tree: Option<Tree> = None;
        for doc in &fetched {
            let mut breadcrumb = breadcrumbs.get(&doc.meta.id).map(|b| (*b).clone()).unwrap_or_default();
            if announced_parents
                .get(&doc.meta.id)
                .is_none_or(|p| **p != doc.meta.parent)
            {
                // Moved since the job was planned (or targeted without a hint):
                // the planned breadcrumb is stale, rebuild it from the state.
                let tree = tree.get_or_insert_with(|| {
                    fetched
                        .iter()
                        .map(|d| (d.meta.id.clone(), (d.meta.title.clone(), d.meta.parent.clone())))
                        .collect()
                });
                ancestry::fill(
                    &self.state,
                    &job.source,
                    vec![doc.meta.id.clone()],
                    tree,
                    &HashSet::new(),
                )
                .await?;
                breadcrumb = ancestry::breadcrumb(&doc.meta.id, tree);
            }
            let links = resolve(&doc.links);
            let hash = content_hash(
                &doc.meta.title,
                doc.meta.parent.as_ref(),
                &breadcrumb,
                &doc.content,
                &links,
            );
            let old = held.get(&doc.meta.id);
            if !unsettled.contains(&doc.meta.id)
                && old.is_some_and(|h| h.version == doc.meta.version && h.content_hash == hash)
            {
                stats.skipped += 1;
                continue;
            }
            ops.push(SinkOp::Upsert(SinkDocument {
                source: job.source.clone(),
                id: doc.meta.id.clone(),
                title: doc.meta.title.clone(),
                breadcrumb: breadcrumb.clone(),
                parent: doc.meta.parent.clone(),
                version: doc.meta.version.clone(),
                content: doc.content.clone(),
                content_hash: hash.clone(),
                fencing_token: job.token,
                links,
            }));
            writes.push(DocWrite::Put {
                id: doc.meta.id.clone(),
                new: DocState {
                    version: doc.meta.version.clone(),
                    content_hash: hash,
                    title: doc.meta.title.clone(),
                    parent: doc.meta.parent.clone(),
                    breadcrumb,
                    links: doc.links.clone(),
                    token: job.token,
                    synced_at: Utc::now(),
                },
                old: old.cloned(),
            });
        }

        for id in refreshes {
            // Gone since the run planned it, or never synced: nothing depends on it here.
            let (Some(old), Some(mut doc)) = (held.get(id), self.sink.get(&job.source, id).await?) else {
                stats.skipped += 1;
                continue;
            };
            let breadcrumb = breadcrumbs.get(id).map(|b| (*b).clone()).unwrap_or_default();
            let links = resolve(&old.links);
            let hash = content_hash(&old.title, doc.parent.as_ref(), &breadcrumb, &doc.content, &links);
            if !unsettled.contains(id) && doc.breadcrumb == breadcrumb && doc.links == links && old.content_hash == hash
            {
                stats.skipped += 1;
                continue;
            }
            doc.breadcrumb = breadcrumb.clone();
            doc.links = links;
            doc.content_hash = hash.clone();
            doc.fencing_token = job.token;
            ops.push(SinkOp::Refresh(doc));
            writes.push(DocWrite::Put {
                id: id.clone(),
                new: DocState {
                    content_hash: hash,
                    breadcrumb,
                    token: job.token,
                    synced_at: Utc::now(),
                    ..old.clone()
                },
                old: Some(old.clone()),
            });
        }

        for id in &deletes {
            ops.push(SinkOp::Delete(id.clone()));
            writes.push(DocWrite::Delete {
                id: id.clone(),
                old: held.get(id).cloned(),
            });
        }
        if writes.is_empty() && failures.is_empty() {
            return Ok(stats);
        }

        // Unsettled first, state last: whatever happens between the two (a
        // crash, a takeover), the marks make the next run redo these documents
        // instead of trusting a state that may not match the sink.
        let owner = format!("{}/{}", job.run, job.page);
        let ids: Vec<&DocumentId> = ops.iter().map(SinkOp::id).collect();
        self.state.mark_unsettled(&job.source, job.token, &owner, &ids).await?;
        let mut applied = Vec::with_capacity(writes.len());
        for (op, write) in ops.iter().zip(writes) {
            let result = match op {
                SinkOp::Upsert(doc) | SinkOp::Refresh(doc) => self.sink.upsert(doc).await,
                SinkOp::Delete(id) => self.sink.delete(&job.source, id, job.token).await,
            };
            let written = match result {
                Ok(w) => w,
                Err(sinks::Error::StaleFence(s)) => return Err(JobError::Stale(s)),
                // One document the sink refuses fails alone; the rest of the page goes on.
                Err(e) => {
                    let permanent = matches!(e, sinks::Error::Rejected { .. });
                    failures.push(Failure::new(op.id().clone(), !permanent, format!("sink: {e}")));
                    continue;
                }
            };
            match (op, written) {
                (SinkOp::Upsert(_), Written::Changed) => stats.upserted += 1,
                (SinkOp::Upsert(_), Written::Unchanged) => stats.skipped += 1,
                (SinkOp::Refresh(_), _) => stats.refreshed += 1,
                (SinkOp::Delete(_), Written::Changed) => stats.deleted += 1,
                (SinkOp::Delete(_), Written::Unchanged) => {}
            }
            applied.push(write);
        }
        if failures.len() >= job.items.len() && failures.iter().all(|f| f.retryable) {
            // Nothing of the page worked and all of it may: the page as a whole
            // is redelivered (a full disk, a source down for every document).
            return Err(JobError::retry(format!(
                "every document of the page failed, e.g. {}: {}",
                failures[0].id, failures[0].reason
            )));
        }
        self.state.apply_docs(&job.source, job.token, &applied).await?;
        if !failures.is_empty() {
            stats.failed = failures.len() as u64;
            self.record_failures(job, &failures).await?;
        }
        Ok(stats)
    }
}
