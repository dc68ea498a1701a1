//! What this process did, as Prometheus counters and histograms: runs by
//! outcome, documents by action, API calls by status class, throttles, dead
//! letters, lost locks, deletion-guard trips, and how long runs, pages and
//! jobs (enqueue to ack) took.
//!
//! Invariants:
//! - Every series here carries the `process` label (the pod name, see
//!   [`process_name`]): two replicas never export the same series, so sums
//!   across replicas are right. The fleet-wide figures read from Redis at
//!   scrape time (queues, documents held, last success) live in
//!   `api::metrics` and are the same from every replica.
//! - One [`Telemetry`] per `App`: nothing global, so tests
//!   running many apps in one process each see only their own counts.
//! - Recording never fails and never blocks: a label set is created on first
//!   use, and the families are fixed at start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::types::SourceId;

/// Histogram buckets for whole runs: a no-op incremental (a second) to a
/// large full sync (hours).
const RUN_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];
/// Histogram buckets for one page.
const PAGE_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Histogram buckets for a job's wait from enqueue to ack: from an idle
/// queue's milliseconds to a backlog's minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's counters and histograms. Clones share them.
#[derive(Clone)]
pub struct Telemetry(Arc<Families>);

struct Families {
    registry: Registry,
    runs: IntCounterVec,
    documents: IntCounterVec,
    api_calls: IntCounterVec,
    throttled: IntCounterVec,
    dead_letters: IntCounterVec,
    lock_lost: IntCounterVec,
    guard_tripped: IntCounterVec,
    run_duration: HistogramVec,
    page_duration: HistogramVec,
    job_latency: HistogramVec,
}

/// The name this process's series carry in `process`: `$TIDEMARK_PROCESS`, else
/// `$HOSTNAME` (the pod name on Kubernetes), else the kernel's host name and pid.
pub fn process_name() -> String {
    let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    from_env("TIDEMARK_PROCESS")
        .or_else(|| from_env("HOSTNAME"))
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
}

/// How a run ended, for `tidemark_runs_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every page applied, checkpoint committed, no document failed.
    Completed,
    /// Finished, but documents failed or the deletion guard held deletions back.
    CompletedWithErrors,
    /// Stopped by an error (a lost lock, a stall, a source that failed).
    Failed,
}

impl RunOutcome {
    fn label(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::CompletedWithErrors => "completed_with_errors",
            RunOutcome::Failed => "failed",
        }
    }
}

/// Where a dead letter came from, for `tidemark_dead_letters_total{origin}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterOrigin {
    /// A sync request that could not be served (malformed, undeliverable).
    Request,
    /// A page job delivered too often (a poison job).
    Job,
    /// A document that failed on its own.
    Document,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter family");
    registry
        .register(Box::new(c.clone()))
        .expect("each family registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &["source"])
        .expect("a valid histogram family");
    registry
        .register(Box::new(h.clone()))
        .expect("each family registered once");
    h
}

impl Telemetry {
    /// Families for a process named `process`, with `tidemark_build_info` set.
    pub fn new(process: &str) -> Self {
        let labels = HashMap::from([("process".to_owned(), process.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels)).expect("a valid const label");
        let build = IntGaugeVec::new(
            Opts::new(
                "tidemark_build_info",
                "The running build: 1, labelled with its version.",
            ),
            &["version"],
        )
        .expect("a valid gauge family");
        registry.register(Box::new(build.clone())).expect("registered once");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let families = Families {
            runs: counter(
                &registry,
                "tidemark_runs_total",
                "Runs this process drove to their end, by outcome.",
                &["source", "outcome"],
            ),
            documents: counter(
                &registry,
                "tidemark_documents_total",
                "Documents this process's pages handled, by action (upserted, deleted, unchanged, refreshed, failed).",
                &["source", "action"],
            ),
            api_calls: counter(
                &registry,
                "tidemark_api_calls_total",
                "Requests sent to a source, retries included, by status class (2xx, 3xx, 4xx, 5xx, or error: no answer).",
                &["source", "status_class"],
            ),
            throttled: counter(
                &registry,
                "tidemark_api_throttled_total",
                "Answers a source gave as a throttle (429, or its own rate-limit signal).",
                &["source"],
            ),
            dead_letters: counter(
                &registry,
                "tidemark_dead_letters_total",
                "Entries this process moved to the dead-letter stream, by origin (request, job, document).",
                &["origin"],
            ),
            lock_lost: counter(
                &registry,
                "tidemark_lock_lost_total",
                "Runs stopped because their lock's lease was not extended in time.",
                &["source"],
            ),
            guard_tripped: counter(
                &registry,
                "tidemark_deletion_guard_tripped_total",
                "Runs whose deletions the deletion guard held back (more than max_delete_share).",
                &["source"],
            ),
            run_duration: histogram(
                &registry,
                "tidemark_run_duration_seconds",
                "Wall time of a run, from taking the lock to its end.",
                RUN_BUCKETS,
            ),
            page_duration: histogram(
                &registry,
                "tidemark_page_duration_seconds",
                "Time a worker spent on one page job (fetch, write, state).",
                PAGE_BUCKETS,
            ),
            job_latency: histogram(
                &registry,
                "tidemark_job_latency_seconds",
                "Time from a page job's enqueue (its stream entry id) to its ack.",
                LATENCY_BUCKETS,
            ),
            registry,
        };
        Telemetry(Arc::new(families))
    }

    /// The registry, for the exposition.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// A run ended after `took`.
    pub fn run_ended(&self, source: &SourceId, outcome: RunOutcome, took: Duration) {
        self.0.runs.with_label_values(&[source.as_str(), outcome.label()]).inc();
        self.0
            .run_duration
            .with_label_values(&[source.as_str()])
            .observe(took.as_secs_f64());
    }

    /// A run stopped because its lease was lost.
    pub fn lock_lost(&self, source: &SourceId) {
        self.0.lock_lost.with_label_values(&[source.as_str()]).inc();
    }

    /// The deletion guard held a run's deletions back.
    pub fn guard_tripped(&self, source: &SourceId) {
        self.0.guard_tripped.with_label_values(&[source.as_str()]).inc();
    }

    /// A page was applied: `(action, count)` pairs, and how long it took.
    pub fn page_done(&self, source: &SourceId, actions: &[(&str, u64)], took: Duration) {
        for (action, n) in actions {
            if *n > 0 {
                self.0
                    .documents
                    .with_label_values(&[source.as_str(), action])
                    .inc_by(*n);
            }
        }
        self.0
            .page_duration
            .with_label_values(&[source.as_str()])
            .observe(took.as_secs_f64());
    }

    /// A page job was acked `waited` after it was enqueued.
    pub fn job_acked(&self, source: &SourceId, waited: Duration) {
        self.0
            .job_latency
            .with_label_values(&[source.as_str()])
            .observe(waited.as_secs_f64());
    }

    /// Entries moved to the dead-letter stream.
    pub fn dead_lettered(&self, origin: DeadLetterOrigin, n: u64) {
        let label = match origin {
            DeadLetterOrigin::Request => "request",
            DeadLetterOrigin::Job => "job",
            DeadLetterOrigin::Document => "document",
        };
        self.0.dead_letters.with_label_values(&[label]).inc_by(n);
    }

    /// What one source's API calls report to.
    pub fn source_api(&self, source: &SourceId) -> SourceApi {
        SourceApi {
            telemetry: self.clone(),
            source: source.as_str().to_owned(),
        }
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

/// One source's API call counters, handed to the HTTP client through
/// `sources::ApiCalls`.
#[derive(Debug, Clone)]
pub struct SourceApi {
    telemetry: Telemetry,
    source: String,
}

impl SourceApi {
    /// One answer with `status` (`None`: no answer, a network error or timeout).
    pub fn answered(&self, status: Option<u16>) {
        let class = match status {
            Some(s @ 100..=599) => ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(s / 100 - 1)],
            _ => "error",
        };
        self.telemetry
            .0
            .api_calls
            .with_label_values(&[self.source.as_str(), class])
            .inc();
    }

    /// The source throttled us.
    pub fn throttled(&self) {
        self.telemetry
            .0
            .throttled
            .with_label_values(&[self.source.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &Telemetry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&t.registry().gather())
            .expect("encodes")
    }

    /// Every series carries the process label, counters end in `_total`, and
    /// status codes fall in their class.
    #[test]
    fn series_carry_the_process_and_classes() {
        let t = Telemetry::new("worker-7f9c");
        let eng = SourceId::new("eng").unwrap();
        t.run_ended(&eng, RunOutcome::Completed, Duration::from_secs(3));
        let api = t.source_api(&eng);
        for s in [Some(200), Some(200), Some(429), Some(503), None, Some(304)] {
            api.answered(s);
        }
        api.throttled();
        t.page_done(&eng, &[("upserted", 3), ("deleted", 0)], Duration::from_millis(40));
        t.dead_lettered(DeadLetterOrigin::Job, 1);
        let out = text(&t);
        for line in [
            "tidemark_runs_total{outcome=\"completed\",source=\"eng\",process=\"worker-7f9c\"} 1",
            "tidemark_api_calls_total{source=\"eng\",status_class=\"2xx\",process=\"worker-7f9c\"} 2",
            "tidemark_api_calls_total{source=\"eng\",status_class=\"3xx\",process=\"worker-7f9c\"} 1",
            "tidemark_api_calls_total{source=\"eng\",status_class=\"4xx\",process=\"worker-7f9c\"} 1",
            "tidemark_api_calls_total{source=\"eng\",status_class=\"5xx\",process=\"worker-7f9c\"} 1",
            "tidemark_api_calls_total{source=\"eng\",status_class=\"error\",process=\"worker-7f9c\"} 1",
            "tidemark_api_throttled_total{source=\"eng\",process=\"worker-7f9c\"} 1",
            "tidemark_documents_total{action=\"upserted\",source=\"eng\",process=\"worker-7f9c\"} 3",
            "tidemark_dead_letters_total{origin=\"job\",process=\"worker-7f9c\"} 1",
            "tidemark_run_duration_seconds_count{source=\"eng\",process=\"worker-7f9c\"} 1",
            "tidemark_build_info{version=\"",
        ] {
            assert!(out.contains(line), "missing {line:?} in:\n{out}");
        }
        assert!(
            !out.contains("action=\"deleted\""),
            "zero counts create no series:\n{out}"
        );
    }
}
