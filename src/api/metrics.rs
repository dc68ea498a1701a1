//! `GET /metrics`: queue and per-source figures in the Prometheus text format (version 0.0.4).
//!
//! Every value is read from Redis at scrape time, so any replica serving the API
//! reports the same numbers and nothing is lost when a process restarts; the
//! price is a few Redis reads per configured source per scrape.
//!
//! Written by hand rather than through a metrics crate: these are all gauges
//! over state that already lives in Redis, and the format is a few lines.
//!
//! Series:
//! - `tidemark_queue_length{stream}` for `requests`, `jobs` and `dlq`;
//!   `tidemark_queue_pending{stream}` and `tidemark_queue_lag{stream}` for
//!   `requests` and `jobs` only (the dead-letter stream has no consumer group),
//!   and lag only when Redis can tell it.
//! - per configured source: `tidemark_source_documents`, `tidemark_source_fence`.
//! - per configured source with a finished run, from its most recent finished
//!   run (a run still in progress is skipped, so `tidemark_last_run_success`
//!   does not drop to 0 for the length of every run): `tidemark_last_run_*`.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

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
#[derive(Debug, Clone)]
pub struct SourceFigures {
    /// Source id.
    pub source: String,
    /// Documents held.
    pub documents: u64,
    /// Highest fencing token seen.
    pub fence: u64,
    /// The most recent finished run, if any.
    pub last_run: Option<RunRecord>,
}

/// Handler: reads the figures and renders them.
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
        sources.push(SourceFigures {
            source: s.id.to_string(),
            documents: state.doc_count(&s.id).await?,
            fence: state.current_fence(&s.id).await?.0,
            last_run: runs.into_iter().find(|r| r.status.is_terminal()),
        });
    }
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&queues, &sources)))
}

/// One metric family: its HELP and TYPE lines, then its samples (the format
/// requires a family's samples to be contiguous).
fn family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (value_of_label, v) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {v}", escape_label(value_of_label));
    }
}

/// Escapes a label value as the format requires (backslash, double quote, newline).
/// Source ids cannot contain these today; this keeps the output valid if that changes.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Reads one figure of a run.
type RunFigure = fn(&RunRecord) -> u64;

/// Renders the exposition text.
pub fn render(queues: &QueueStatus, sources: &[SourceFigures]) -> String {
    let mut out = String::new();
    let grouped = [("requests", &queues.requests), ("jobs", &queues.jobs)];
    family(
        &mut out,
        "tidemark_queue_length",
        "Entries in the stream.",
        "stream",
        [
            ("requests", queues.requests.length),
            ("jobs", queues.jobs.length),
            ("dlq", queues.dead_letters),
        ],
    );
    family(
        &mut out,
        "tidemark_queue_pending",
        "Entries delivered to the stream's consumer group and not yet acknowledged.",
        "stream",
        grouped.iter().map(|(s, g)| (*s, g.pending)),
    );
    family(
        &mut out,
        "tidemark_queue_lag",
        "Entries not yet delivered to the stream's consumer group.",
        "stream",
        grouped.iter().filter_map(|(s, g)| g.lag.map(|l| (*s, l))),
    );
    let per_source = |f: fn(&SourceFigures) -> Option<u64>| {
        sources
            .iter()
            .filter_map(move |s| f(s).map(|v| (s.source.as_str(), v)))
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "tidemark_source_documents",
        "Documents held for the source.",
        "source",
        per_source(|s| Some(s.documents)),
    );
    family(
        &mut out,
        "tidemark_source_fence",
        "Highest fencing token seen for the source (one per lock acquisition).",
        "source",
        per_source(|s| Some(s.fence)),
    );
    let last: [(&str, &str, RunFigure); 7] = [
        (
            "tidemark_last_run_docs_processed",
            "Documents put into jobs by the source's latest finished run.",
            |r| r.docs_processed,
        ),
        (
            "tidemark_last_run_upserted",
            "Documents written to the sink by the source's latest finished run.",
            |r| r.upserted,
        ),
        (
            "tidemark_last_run_deleted",
            "Documents removed from the sink by the source's latest finished run.",
            |r| r.deleted,
        ),
        (
            "tidemark_last_run_api_calls",
            "Requests to the source's API made by its latest finished run.",
            |r| r.api_calls,
        ),
        (
            "tidemark_last_run_dependents_updated",
            "Dependents (breadcrumbs, link titles) rewritten by the source's latest finished run.",
            |r| r.dependents_updated,
        ),
        (
            "tidemark_last_run_success",
            "1 if the source's latest finished run completed without errors, else 0.",
            |r| u64::from(r.status == RunStatus::Completed),
        ),
        (
            "tidemark_last_run_end_timestamp_seconds",
            "When the source's latest finished run ended, in Unix seconds.",
            |r| r.ended_at.map_or(0, |t| t.timestamp().max(0) as u64),
        ),
    ];
    for (name, help, value) in last {
        family(
            &mut out,
            name,
            help,
            "source",
            sources
                .iter()
                .filter_map(|s| s.last_run.as_ref().map(|r| (s.source.as_str(), value(r)))),
        );
    }
    out
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
                last_run: Some(run(RunStatus::Completed)),
            },
            SourceFigures {
                source: "hr".into(),
                documents: 0,
                fence: 0,
                last_run: None,
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
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("tidemark_queue_lag{stream=\"jobs\"}"), "{text}");
        assert!(!text.contains("tidemark_last_run_success{source=\"hr\"}"), "{text}");
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
        }];
        assert!(render(&queues, &sources).contains("tidemark_last_run_success{source=\"eng\"} 0\n"));
    }

    /// Label values are escaped.
    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
