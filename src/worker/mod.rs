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
//! - one document that cannot be fetched or written (a corrupt body, a sink
//!   that refuses it): it fails alone, recorded with its reason (state, run
//!   record, dead letters) and retried by every later run; the rest of the page
//!   is applied;
//! - a retryable source error for the whole page (or every document of it
//!   failing retryably): the entry stays pending and is redelivered after
//!   `job_idle_timeout`, to this worker or another;
//! - an undecodable entry, an unknown source, a permanent source error, or too
//!   many deliveries: the entry goes to the dead-letter stream with the reason,
//!   its page is counted as failed in its run, and the worker goes on.
//!
//! Crash safety: a worker killed mid-page leaves the entry pending; another
//! worker claims it once idle and redoes it. Redoing is harmless because every
//! write is idempotent (same version and hash are skipped; page completion is a set).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::Pool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SyncConfig;
use crate::hooks::{Hooks, Point};
use crate::keys::Keys;
use crate::lock::fencing::StaleFence;
use crate::queue::acks::Acker;
use crate::queue::jobs::{self, PageJob};
use crate::queue::streams::{self, Entry};
use crate::queue::{self, dlq};
use crate::retry::{self, Backoff};
use crate::sinks::{self, routes::Routes};
use crate::sources::{self, Source};
use crate::state::{self, RunCounter, RunUpdate, StateStore};
use crate::telemetry::{DeadLetterOrigin, Telemetry};
use crate::types::SourceId;

mod page;

pub use page::content_hash;

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

/// Everything a worker needs; shared by its in-flight pages.
pub struct Worker {
    pool: Pool,
    keys: Keys,
    state: StateStore,
    sources: HashMap<SourceId, Arc<dyn Source>>,
    sinks: Routes,
    cfg: SyncConfig,
    consumer: String,
    /// How the run loop rides out Redis faults, and the (redacted) address it names in logs.
    retry: Backoff,
    redis_addr: String,
    /// Run points for tests ([`crate::hooks`]); none in production.
    hooks: Hooks,
    /// This process's counters and histograms.
    telemetry: Telemetry,
    /// Acks finished pages, several to an XACK when they finish together.
    acker: Acker,
    /// Pages fetching from their source at once: `worker_concurrency`. As many
    /// again may be writing (sink, state) meanwhile, so a source's latency is
    /// not paid again for each page's writes.
    fetching: Arc<Semaphore>,
}

impl Worker {
    /// A worker named `consumer` (unique per process, e.g. the pod name plus a random suffix).
    pub fn new(
        pool: Pool,
        keys: Keys,
        sources: HashMap<SourceId, Arc<dyn Source>>,
        sinks: Routes,
        cfg: SyncConfig,
        consumer: String,
    ) -> Self {
        let state = StateStore::new(pool.clone(), keys.clone());
        Self {
            acker: Acker::new(pool.clone(), GROUP),
            fetching: Arc::new(Semaphore::new(cfg.worker_concurrency.get())),
            pool,
            keys,
            state,
            sources,
            sinks,
            cfg,
            consumer,
            retry: Backoff::default(),
            redis_addr: "redis".into(),
            hooks: Hooks::default(),
            telemetry: Telemetry::new("unnamed"),
        }
    }

    /// The state store to use (one that waits for replicas, `[redis] wait_replicas`).
    pub fn with_state(mut self, state: StateStore) -> Self {
        self.state = state;
        self
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

    /// Records into `telemetry` (the app's) instead of a registry of its own.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// [`Worker::handle`] between the `PageStart` and `PageEnd` run points.
    async fn handle_at_points(&self, stream: &str, entry: Entry, deliveries: u64) {
        let r = jobs::routing(&entry);
        let (Some(source), Some(run), Some(page)) = (r.source, r.run, r.page) else {
            return self.handle(stream, entry, deliveries).await;
        };
        // Paused at the point (a test deciding when the page goes), the entry is
        // kept fresh as if in flight, so no other worker claims it meanwhile.
        let start = self.hooks.at(&source, &run, Point::PageStart { page, deliveries });
        let keep_fresh = async {
            loop {
                tokio::time::sleep(self.cfg.job_idle_timeout / 3).await;
                let _ = streams::touch(&self.pool, stream, GROUP, &self.consumer, &entry.id).await;
            }
        };
        tokio::select! {
            () = start => {}
            _ = keep_fresh => unreachable!("the refresh loop never ends"),
        }
        self.handle(stream, entry, deliveries).await;
        self.hooks.at(&source, &run, Point::PageEnd { page, deliveries }).await;
    }

    /// Consumes jobs until `shutdown` is cancelled, then lets in-flight pages finish
    /// (up to `drain_timeout`) before returning.
    ///
    /// With several job streams (`[queue] job_partitions`) one loop reads them
    /// all, fairly: each read starts at the next stream in turn and takes what
    /// the first stream with entries has; when none has any, it blocks on the
    /// next stream in turn for a share of `block`, so a page on any stream
    /// waits at most about `block` for a free worker. (A read never names two
    /// streams: on a Redis Cluster they live in different slots.)
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), queue::Error> {
        let job_streams = self.keys.job_streams();
        // Started before Redis (or during an outage): wait for it, never exit.
        let reached = retry::until_reachable(self.retry, &shutdown, "worker", &self.redis_addr, || async {
            for stream in &job_streams {
                streams::ensure_group(&self.pool, stream, GROUP).await?;
            }
            Ok::<(), queue::Error>(())
        })
        .await?;
        if !reached {
            return Ok(());
        }
        let mut delays = self.retry.delays();
        // Pages in flight: up to `worker_concurrency` fetching (`self.fetching`)
        // and as many writing.
        let permits = Arc::new(Semaphore::new(2 * self.cfg.worker_concurrency.get()));
        let tracker = TaskTracker::new();
        let mut last_reclaim = tokio::time::Instant::now();
        let mut turn = 0usize;
        let mut idle = false;
        let share = (self.cfg.block / job_streams.len() as u32).max(Duration::from_millis(10));
        tracing::info!(consumer = %self.consumer, streams = job_streams.len(), "worker started");

        loop {
            // Wait for a free slot first, so we never read entries we cannot start.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            if last_reclaim.elapsed() >= self.cfg.job_idle_timeout / 2 {
                last_reclaim = tokio::time::Instant::now();
                drop(permit);
                for stream in &job_streams {
                    if let Err(e) = self.reclaim_idle(stream, &tracker, &permits).await {
                        tracing::warn!(error = %e, %stream, "reclaiming idle jobs failed");
                    }
                }
                continue;
            }
            let free = permits.available_permits() + 1;
            turn = turn.wrapping_add(1);
            // Not raced against shutdown: a read cancelled mid-flight could leave
            // entries delivered to us that nobody processes until they go idle.
            let read = self.read_fairly(&job_streams, turn, free, share, idle).await;
            let (stream, entries) = match read {
                Ok(r) => {
                    idle = r.1.is_empty();
                    if delays.attempts() > 0 {
                        tracing::info!(redis = %self.redis_addr, "reading jobs again");
                    }
                    delays.reset();
                    r
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
                let (me, stream) = (self.clone(), stream.clone());
                tracker.spawn(async move {
                    me.handle_at_points(&stream, entry, 1).await;
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

    /// Up to `count` new entries of one of `job_streams`, starting the look at
    /// stream `turn` (mod their number); with one stream, a plain blocking read.
    /// After a read that found nothing (`idle`), the look is the blocking read
    /// alone: an idle worker sends one command per `share`, not one per stream.
    async fn read_fairly(
        &self,
        job_streams: &[String],
        turn: usize,
        count: usize,
        share: Duration,
        idle: bool,
    ) -> Result<(String, Vec<Entry>), queue::Error> {
        let n = job_streams.len();
        if n == 1 {
            let entries = streams::read_new(
                &self.pool,
                &job_streams[0],
                GROUP,
                &self.consumer,
                count,
                self.cfg.block,
            )
            .await?;
            return Ok((job_streams[0].clone(), entries));
        }
        for i in (0..n).filter(|_| !idle) {
            let stream = &job_streams[(turn + i) % n];
            let entries = streams::read_new(&self.pool, stream, GROUP, &self.consumer, count, Duration::ZERO).await?;
            if !entries.is_empty() {
                return Ok((stream.clone(), entries));
            }
        }
        let stream = &job_streams[turn % n];
        let entries = streams::read_new(&self.pool, stream, GROUP, &self.consumer, count, share).await?;
        Ok((stream.clone(), entries))
    }

    /// Claims entries other consumers left idle too long; dead-letters the ones
    /// delivered too often.
    async fn reclaim_idle(
        self: &Arc<Self>,
        stream: &str,
        tracker: &TaskTracker,
        permits: &Arc<Semaphore>,
    ) -> Result<(), queue::Error> {
        let idle = self.cfg.job_idle_timeout;
        let pending = streams::pending_idle(&self.pool, stream, GROUP, idle, 50).await?;
        for p in pending {
            let claimed = streams::claim(&self.pool, stream, GROUP, &self.consumer, idle, &[p.id.as_str()]).await?;
            let Some(entry) = claimed.into_iter().next() else {
                continue;
            };
            let deliveries = p.deliveries + 1;
            if deliveries > u64::from(self.cfg.max_deliveries) {
                let reason = format!(
                    "delivered {} times without being acked (max_deliveries = {})",
                    p.deliveries, self.cfg.max_deliveries
                );
                self.dead_letter(stream, &entry, &reason, p.deliveries).await;
                continue;
            }
            tracing::info!(entry = %entry.id, from = %p.consumer, deliveries, "claimed an idle job");
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (me, stream) = (self.clone(), stream.to_owned());
            tracker.spawn(async move {
                me.handle_at_points(&stream, entry, deliveries).await;
                drop(permit);
            });
        }
        Ok(())
    }

    async fn dead_letter(&self, stream: &str, entry: &Entry, reason: &str, deliveries: u64) {
        tracing::warn!(entry = %entry.id, %reason, "dead-lettering job");
        let r = jobs::routing(entry);
        if let (Some(source), Some(run), Some(page)) = (r.source, r.run, r.page)
            && let Err(e) = self.state.page_failed(&source, &run, page, reason).await
        {
            tracing::warn!(error = %e, "could not mark the dead-lettered page as failed");
        }
        match dlq::dead_letter(
            &self.pool,
            &self.keys.dead_letters(),
            stream,
            GROUP,
            entry,
            reason,
            deliveries,
        )
        .await
        {
            Ok(_) => self.telemetry.dead_lettered(DeadLetterOrigin::Job, 1),
            // Left pending: it will be claimed and dead-lettered again later.
            Err(e) => tracing::warn!(error = %e, entry = %entry.id, "dead-lettering failed"),
        }
    }

    async fn ack(&self, stream: &str, source: &SourceId, entry: &Entry) {
        match self.acker.ack(stream, &entry.id).await {
            Ok(()) => {
                if let Some(waited) = streams::age(&entry.id) {
                    self.telemetry.job_acked(source, waited);
                }
            }
            // Unacked means redelivered; the redo is a no-op because the page is marked done.
            Err(e) => tracing::warn!(error = %e, entry = %entry.id, "ack failed; the job will be redelivered"),
        }
    }

    /// Processes one entry to its conclusion: acked, left for redelivery, or dead-lettered.
    pub async fn handle(&self, stream: &str, entry: Entry, deliveries: u64) {
        let job = match PageJob::from_entry(&entry) {
            Ok(j) => j,
            Err(e) => {
                // Decoding is deterministic: redelivering cannot help.
                self.dead_letter(stream, &entry, &e.to_string(), deliveries).await;
                return;
            }
        };
        let Some(source) = self.sources.get(&job.source).cloned() else {
            let reason = format!(
                "unknown source {:?}: not in this worker's configuration",
                job.source.as_str()
            );
            self.dead_letter(stream, &entry, &reason, deliveries).await;
            return;
        };
        let calls = sources::ApiCalls::observed(self.telemetry.source_api(&job.source));
        let started = Instant::now();
        // A page may legitimately take longer than the idle timeout (a source
        // answering 429 with Retry-After): keep the entry fresh so no other
        // worker claims it while we are still on it.
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.cfg.job_idle_timeout / 3).await;
                if let Err(e) = streams::touch(&self.pool, stream, GROUP, &self.consumer, &entry.id).await {
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
                    let actions = [
                        ("upserted", stats.upserted),
                        ("deleted", stats.deleted),
                        ("unchanged", stats.skipped),
                        ("refreshed", stats.refreshed),
                        ("failed", stats.failed),
                    ];
                    self.telemetry.page_done(&job.source, &actions, started.elapsed());
                    if !fresh {
                        // Done before (a redelivery): its figures are counted, but these calls were made too.
                        let _ = self
                            .state
                            .add_run_counter(&job.source, &job.run, RunCounter::ApiCalls, calls.get())
                            .await;
                    }
                    self.ack(stream, &job.source, &entry).await
                }
                Err(state::Error::StaleFence(s)) => self.drop_superseded(stream, &job, &entry, &s).await,
                Err(e) => {
                    tracing::warn!(run = %job.run, page = job.page, error = %e, "marking page done failed; will be redelivered")
                }
            },
            Err(JobError::Stale(s)) => self.drop_superseded(stream, &job, &entry, &s).await,
            Err(JobError::Retryable { reason, after }) => {
                tracing::warn!(run = %job.run, page = job.page, %reason, ?after, deliveries, "page failed; will be redelivered");
                let _ = self
                    .state
                    .update_run(&job.source, &job.run, job.token, &RunUpdate::error(reason))
                    .await;
            }
            Err(JobError::Permanent(reason)) => self.dead_letter(stream, &entry, &reason, deliveries).await,
        }
    }

    /// A newer run owns the source: ack and drop the page, counted in its run's `pages_superseded`.
    async fn drop_superseded(&self, stream: &str, job: &PageJob, entry: &Entry, s: &StaleFence) {
        tracing::info!(run = %job.run, page = job.page, %s, "page superseded by a newer run");
        let _ = self.state.page_superseded(&job.source, &job.run).await;
        self.ack(stream, &job.source, entry).await;
    }
}
