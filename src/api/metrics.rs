//! `GET /metrics`: the Prometheus text format (version 0.0.4), from the
//! `prometheus` crate: this process's counters and histograms
//! ([`crate::telemetry`], labelled with `process`), then the fleet's figures
//! read from Redis at scrape time.
//!
//! The fleet figures are the same from every replica (they describe shared
//! state, so nothing is lost when a process restarts): aggregate them with
//! `max by (source)`, not `sum`. They cost a few Redis reads per configured
//! source per scrape.
//!
//! Fleet series:
//! - `tidemark_queue_length{stream}` for `requests`, `jobs` and `dlq`;
//!   `tidemark_queue_pending{stream}` and `tidemark_queue_lag{stream}` for
//!   `requests` and `jobs` only (the dead-letter stream has no consumer group),
//!   and lag only when Redis can tell it.
//! - per configured source: `tidemark_source_documents`, `tidemark_source_fence`,
//!   `tidemark_source_schedule_seconds` (sources with a schedule), and
//!   `tidemark_last_success_timestamp_seconds` once a run has committed its
//!   checkpoint.
//! - per configured source with a finished run, from its most recent finished
//!   run (a run still in progress is skipped, so `tidemark_last_run_success`
//!   does not drop to 0 for the length of every run): `tidemark_last_run_*`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

use super::error::ApiError;
use crate::app::App;
use crate::report::{self, QueueStatus};
use crate::state::{RunRecord, RunStatus};

/// The Prometheus text exposition content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How many recent runs to look through for the latest finished one. At most
/// one run of a source is in progress, plus possibly one whose coordinator died
/// and which the next run has not yet marked abandoned.
const RUN_LOOKBACK: usize = 5;

/// One source's figures.
#[derive(Debug, Clone, Default)]
pub struct SourceFigures {
    /// Source id.
    pub source: String,
    /// Documents held.
    pub documents: u64,
    /// Highest fencing token seen.
    pub fence: u64,
    /// The schedule's period, for sources with one.
    pub schedule_secs: Option<u64>,
    /// When a run last committed the source's checkpoint (Unix seconds).
    pub last_success: Option<i64>,
    /// The most recent finished run, if any.
    pub last_run: Option<RunRecord>,
}

/// Handler: reads the figures and renders them with this process's own.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security((), ("bearer" = ["read"])),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "With protect_metrics: no or unknown token")))]
pub async fn metrics(State(app): State<App>) -> Result<impl IntoResponse, ApiError> {
    let queues = report::queue_status(&app).await?;
    let state = app.state();
    let mut sources = Vec::with_capacity(app.config.sources.len());
    for s in &app.config.sources {
        let runs = state.recent_runs(&s.id, RUN_LOOKBACK).await?;
        let checkpoint = state.checkpoint(&s.id).await?;
        sources.push(SourceFigures {
            source: s.id.to_string(),
            documents: state.doc_count(&s.id).await?,
            fence: state.current_fence(&s.id).await?.0,
            schedule_secs: s.schedule_every.map(|d| d.as_secs()),
            last_success: checkpoint.committed_at.map(|t| t.timestamp()),
            last_run: runs.into_iter().find(|r| r.status.is_terminal()),
        });
    }
    let mut families = app.telemetry.registry().gather();
    families.extend(fleet(&queues, &sources).gather());
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], encode(&families)))
}

/// The text exposition of `families`.
pub fn encode(families: &[prometheus::proto::MetricFamily]) -> String {
    let mut out = Vec::new();
    // Encoding what `gather` produced cannot fail (it checked the families).
    let _ = TextEncoder::new().encode(families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// One gauge family in `registry`, `samples` given as (label value, value).
fn gauge<'a>(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, i64)>,
) {
    let family = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid gauge family");
    for (value_of_label, v) in samples {
        family.with_label_values(&[value_of_label]).set(v);
    }
    registry
        .register(Box::new(family))
        .expect("each family registered once");
}

/// Reads one figure of a run.
type RunFigure = fn(&RunRecord) -> i64;

/// The fleet's figures as a registry of gauges.
pub fn fleet(queues: &QueueStatus, sources: &[SourceFigures]) -> Registry {
    let registry = Registry::new();
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let grouped = [("requests", &queues.requests), ("jobs", &queues.jobs)];
    gauge(
        &registry,
        "tidemark_queue_length",
        "Entries in the stream.",
        "stream",
        [
            ("requests", n(queues.requests.length)),
            ("jobs", n(queues.jobs.length)),
            ("dlq", n(queues.dead_letters)),
        ],
    );
    gauge(
        &registry,
        "tidemark_queue_pending",
        "Entries delivered to the stream's consumer group and not yet acknowledged.",
        "stream",
        grouped.iter().map(|(s, g)| (*s, n(g.pending))),
    );
    gauge(
        &registry,
        "tidemark_queue_lag",
        "Entries not yet delivered to the stream's consumer group.",
        "stream",
        grouped.iter().filter_map(|(s, g)| g.lag.map(|l| (*s, n(l)))),
    );
    let per_source = |f: &dyn Fn(&SourceFigures) -> Option<i64>| {
        sources
            .iter()
            .filter_map(|s| f(s).map(|v| (s.source.as_str(), v)))
            .collect::<Vec<_>>()
    };
    gauge(
        &registry,
        "tidemark_source_documents",
        "Documents held for the source.",
        "source",
        per_source(&|s| Some(n(s.documents))),
    );
    gauge(
        &registry,
        "tidemark_source_fence",
        "Highest fencing token seen for the source (one per lock acquisition).",
        "source",
        per_source(&|s| Some(n(s.fence))),
    );
    gauge(
        &registry,
        "tidemark_source_schedule_seconds",
        "The source's schedule period (schedule_every_secs), for sources with one.",
        "source",
        per_source(&|s| s.schedule_secs.map(n)),
    );
    gauge(
        &registry,
        "tidemark_last_success_timestamp_seconds",
        "When a run last committed the source's checkpoint (every page applied, no deletion held back), in Unix seconds.",
        "source",
        per_source(&|s| s.last_success),
    );
    let last: [(&str, &str, RunFigure); 8] = [
        (
            "tidemark_last_run_docs_processed",
            "Documents put into jobs by the source's latest finished run.",
            |r| r.docs_processed as i64,
        ),
        (
            "tidemark_last_run_upserted",
            "Documents written to the sink by the source's latest finished run.",
            |r| r.upserted as i64,
        ),
        (
            "tidemark_last_run_deleted",
            "Documents removed from the sink by the source's latest finished run.",
            |r| r.deleted as i64,
        ),
        (
            "tidemark_last_run_api_calls",
            "Requests to the source's API made by its latest finished run.",
            |r| r.api_calls as i64,
        ),
        (
            "tidemark_last_run_dependents_updated",
            "Dependents (breadcrumbs, link titles) rewritten by the source's latest finished run.",
            |r| r.dependents_updated as i64,
        ),
        (
            "tidemark_last_run_permissions_updated",
            "Documents whose permissions alone changed, rewritten by the source's latest finished run.",
            |r| r.permissions_updated as i64,
        ),
        (
            "tidemark_last_run_success",
            "1 if the source's latest finished run completed without errors, else 0.",
            |r| i64::from(r.status == RunStatus::Completed),
        ),
        (
            "tidemark_last_run_end_timestamp_seconds",
            "When the source's latest finished run ended, in Unix seconds.",
            |r| r.ended_at.map_or(0, |t| t.timestamp()),
        ),
    ];
    for (name, help, value) in last {
        gauge(
            &registry,
            name,
            help,
            "source",
            sources
                .iter()
                .filter_map(|s| s.last_run.as_ref().map(|r| (s.source.as_str(), value(r)))),
        );
    }
    registry
}

/// The fleet's figures alone, as text.
pub fn render(queues: &QueueStatus, sources: &[SourceFigures]) -> String {
    encode(&fleet(queues, sources).gather())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::streams::GroupInfo;
    use crate::types::{FencingToken, RunId, SourceId, SyncMode};

    fn run(status: RunStatus) -> RunRecord {
        RunRecord {
            run_id: RunId("r1".into()),
            source: SourceId::new("eng").expect("a valid id"),
            status,
            mode: SyncMode::Full,
            requested_by: "api".into(),
            coordinator: "c1".into(),
            request_ids: vec![],
            token: FencingToken(3),
            started_at: None,
            ended_at: None,
            feed_done: true,
            pages_total: 3,
            pages_done: 3,
            pages_failed: 0,
            pages_superseded: 0,
            docs_failed: 0,
            docs_processed: 60,
            upserted: 58,
            deleted: 2,
            skipped: 0,
            unchanged: 0,
            api_calls: 7,
            dependents: 0,
            dependents_updated: 0,
            permissions_updated: 0,
            errors: 0,
            last_error: String::new(),
            note: String::new(),
            wall_ms: None,
        }
    }

    /// Every family has HELP and TYPE lines before its samples; unknown lag and
    /// sources without a finished run produce no sample rather than a made-up 0.
    #[test]
    fn renders_families_and_skips_unknowns() {
        let queues = QueueStatus {
            requests: GroupInfo {
                length: 4,
                pending: 1,
                lag: Some(2),
            },
            jobs: GroupInfo {
                length: 9,
                pending: 3,
                lag: None,
            },
            dead_letters: 5,
        };
        let sources = vec![
            SourceFigures {
                source: "eng".into(),
                documents: 60,
                fence: 3,
                schedule_secs: Some(900),
                last_success: Some(1_700_000_000),
                last_run: Some(run(RunStatus::Completed)),
            },
            SourceFigures {
                source: "hr".into(),
                ..SourceFigures::default()
            },
        ];
        let text = render(&queues, &sources);
        for line in [
            "tidemark_queue_length{stream=\"requests\"} 4",
            "tidemark_queue_length{stream=\"dlq\"} 5",
            "tidemark_queue_pending{stream=\"jobs\"} 3",
            "tidemark_queue_lag{stream=\"requests\"} 2",
            "tidemark_source_documents{source=\"eng\"} 60",
            "tidemark_source_documents{source=\"hr\"} 0",
            "tidemark_source_fence{source=\"eng\"} 3",
            "tidemark_last_run_docs_processed{source=\"eng\"} 60",
            "tidemark_last_run_upserted{source=\"eng\"} 58",
            "tidemark_last_run_deleted{source=\"eng\"} 2",
            "tidemark_last_run_api_calls{source=\"eng\"} 7",
            "tidemark_last_run_success{source=\"eng\"} 1",
            "tidemark_source_schedule_seconds{source=\"eng\"} 900",
            "tidemark_last_success_timestamp_seconds{source=\"eng\"} 1700000000",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("tidemark_queue_lag{stream=\"jobs\"}"), "{text}");
        assert!(!text.contains("tidemark_last_run_success{source=\"hr\"}"), "{text}");
        assert!(
            !text.contains("tidemark_last_success_timestamp_seconds{source=\"hr\"}"),
            "{text}"
        );
        // HELP and TYPE precede the first sample of every family.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if !l.starts_with('#') {
                let name = l.split('{').next().unwrap_or_default();
                assert!(declared.contains(name), "sample before TYPE: {l}");
            }
        }
    }

    /// A run that finished with errors reports success 0.
    #[test]
    fn failed_run_is_not_success() {
        let queues = QueueStatus {
            requests: GroupInfo::default(),
            jobs: GroupInfo::default(),
            dead_letters: 0,
        };
        let sources = [SourceFigures {
            source: "eng".into(),
            documents: 1,
            fence: 1,
            last_run: Some(run(RunStatus::CompletedWithErrors)),
            ..SourceFigures::default()
        }];
        assert!(render(&queues, &sources).contains("tidemark_last_run_success{source=\"eng\"} 0\n"));
    }

    /// Label values are escaped.
    #[test]
    fn escapes_label_values() {
        let sources = [SourceFigures {
            source: "a\"b\\c\nd".into(),
            ..SourceFigures::default()
        }];
        let queues = QueueStatus {
            requests: GroupInfo::default(),
            jobs: GroupInfo::default(),
            dead_letters: 0,
        };
        let text = render(&queues, &sources);
        assert!(text.contains("{source=\"a\\\"b\\\\c\\nd\"}"), "{text}");
    }

    /// Every series the shipped alert rules and Grafana dashboard query is one
    /// tidemark exports (a renamed family would otherwise leave an alert that
    /// can never fire, or an empty panel).
    #[test]
    fn dashboards_and_alerts_use_only_exported_series() {
        use crate::telemetry::{DeadLetterOrigin, RunOutcome, Telemetry};
        use std::collections::BTreeSet;
        use std::time::Duration;

        let t = Telemetry::new("p");
        let eng = SourceId::new("eng").expect("a valid id");
        t.run_ended(&eng, RunOutcome::Completed, Duration::from_secs(1));
        t.lock_lost(&eng);
        t.guard_tripped(&eng);
        t.page_done(&eng, &[("upserted", 1)], Duration::from_secs(1));
        t.job_acked(&eng, Duration::from_secs(1));
        t.dead_lettered(DeadLetterOrigin::Job, 1);
        t.source_api(&eng).answered(Some(200));
        t.source_api(&eng).throttled();
        let queues = QueueStatus {
            requests: GroupInfo::default(),
            jobs: GroupInfo {
                lag: Some(1),
                ..GroupInfo::default()
            },
            dead_letters: 0,
        };
        let sources = [SourceFigures {
            source: "eng".into(),
            schedule_secs: Some(900),
            last_success: Some(1),
            last_run: Some(run(RunStatus::Completed)),
            ..SourceFigures::default()
        }];
        let mut families = t.registry().gather();
        families.extend(fleet(&queues, &sources).gather());
        let exported: BTreeSet<String> = families.iter().map(|f| f.name().to_owned()).collect();

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["deploy/prometheus/alerts.yaml", "deploy/grafana/tidemark.json"] {
            let text = std::fs::read_to_string(root.join(file)).expect("shipped file");
            let mut used = BTreeSet::new();
            for (at, _) in text.match_indices("tidemark_") {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.ends_with('_') {
                    continue; // a prose wildcard (`tidemark_queue_*`), not a query
                }
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|f| exported.contains(*f)))
                    .unwrap_or(&name)
                    .to_owned();
                used.insert(family);
            }
            assert!(used.len() >= 5, "{file} uses hardly any series: {used:?}");
            let unknown: Vec<_> = used.difference(&exported).collect();
            assert!(
                unknown.is_empty(),
                "{file} queries series tidemark does not export: {unknown:?}"
            );
        }
    }
}
