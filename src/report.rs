//! Source and queue status: gathering it from Redis ([`collect_status`]) and
//! printing it for people (`text`) and scripts (`json`).
//!
//! `tidemark status` and the HTTP API (`GET /v1/sources`) both gather through
//! [`collect_status`], so the two never disagree about what a status contains.
//! Nothing here writes to Redis.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::app::App;
use crate::queue::streams::{self, GroupInfo};
use crate::state::{self, DocFailure, RunRecord};
use crate::types::SourceId;

/// One source's status, as `tidemark status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// Source id.
    pub source: String,
    /// Documents held.
    pub documents: u64,
    /// Highest fencing token seen.
    pub fence: u64,
    /// The checkpoint's watermark, if any (source clock).
    pub watermark: Option<String>,
    /// The checkpoint's cursor, if any.
    pub cursor: Option<String>,
    /// Recent runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Documents that failed on their own, by id (retried by every run until they succeed).
    pub failed_documents: BTreeMap<String, DocFailure>,
    /// Documents left unsettled by an interrupted page (the next run redoes them).
    pub unsettled_documents: u64,
}

/// Queue figures.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// The requests stream.
    pub requests: GroupInfo,
    /// The jobs stream.
    pub jobs: GroupInfo,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// Gathers the status of one source, or of every configured source plus any
/// source that ever ran (so a source removed from the config stays visible),
/// with up to `runs` recent runs each, and the queue figures.
pub async fn collect_status(
    app: &App,
    source: Option<&SourceId>,
    runs: usize,
) -> Result<(Vec<SourceStatus>, QueueStatus), state::Error> {
    let state = app.state();
    let ids: Vec<SourceId> = match source {
        Some(s) => vec![s.clone()],
        None => {
            let mut ids: Vec<SourceId> = app.config.sources.iter().map(|s| s.id.clone()).collect();
            for k in state.known_sources().await? {
                if !ids.contains(&k) {
                    ids.push(k);
                }
            }
            ids
        }
    };
    let mut sources = Vec::with_capacity(ids.len());
    for id in ids {
        let cp = state.checkpoint(&id).await?;
        sources.push(SourceStatus {
            source: id.to_string(),
            documents: state.doc_count(&id).await?,
            fence: state.current_fence(&id).await?.0,
            watermark: cp.watermark.map(|w| w.to_rfc3339()),
            cursor: cp.cursor,
            runs: state.recent_runs(&id, runs).await?,
            failed_documents: state.failures(&id).await?.into_iter().map(|(d, f)| (d.0, f)).collect(),
            unsettled_documents: state.unsettled(&id).await?.len() as u64,
        });
    }
    Ok((sources, queue_status(app).await?))
}

/// The job streams' figures added up (one stream, or `[queue] job_partitions`);
/// lag is known only if every stream can tell it.
async fn jobs_info(app: &App) -> Result<streams::GroupInfo, state::Error> {
    let mut total = streams::GroupInfo {
        lag: Some(0),
        ..streams::GroupInfo::default()
    };
    for stream in app.keys.job_streams() {
        let g = streams::group_info(&app.pool, &stream, crate::queue::JOBS_GROUP).await?;
        total.length += g.length;
        total.pending += g.pending;
        total.lag = total.lag.zip(g.lag).map(|(a, b)| a + b);
    }
    Ok(total)
}

/// The queue figures alone (the requests and jobs groups, and the dead-letter length).
pub async fn queue_status(app: &App) -> Result<QueueStatus, state::Error> {
    Ok(QueueStatus {
        requests: streams::group_info(&app.pool, &app.keys.requests(), crate::queue::REQUESTS_GROUP).await?,
        jobs: jobs_info(app).await?,
        // The dead-letter stream has no consumer group; only its length means anything.
        dead_letters: streams::group_info(&app.pool, &app.keys.dead_letters(), "-")
            .await?
            .length,
    })
}

/// One line of figures for a run.
pub fn run_line(r: &RunRecord) -> String {
    format!(
        "run {} [{}] {} by {}: {} processed ({} upserted, {} deleted, {} skipped, {} failed), {} unchanged by version, {} dependents updated, {} permissions updated, {} API calls, {} pages ({} failed, {} superseded), {}",
        &r.run_id.0[..r.run_id.0.len().min(8)],
        r.mode,
        r.status,
        r.requested_by,
        r.docs_processed,
        r.upserted,
        r.deleted,
        r.skipped,
        r.docs_failed,
        r.unchanged,
        r.dependents_updated,
        r.permissions_updated,
        r.api_calls,
        r.pages_total,
        r.pages_failed,
        r.pages_superseded,
        r.wall_ms
            .map(|ms| format!("{:.2}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "in progress".into()),
    )
}

/// Human-readable status of sources and queues.
pub fn status_text(sources: &[SourceStatus], queues: &QueueStatus) -> String {
    let mut out = String::new();
    for s in sources {
        let _ = writeln!(out, "source {}: {} documents, fence {}", s.source, s.documents, s.fence);
        if let Some(w) = &s.watermark {
            let _ = writeln!(out, "  watermark (source clock): {w}");
        }
        if let Some(c) = &s.cursor {
            let _ = writeln!(out, "  cursor: {c}");
        }
        if !s.failed_documents.is_empty() {
            let _ = writeln!(
                out,
                "  failed documents: {} (retried by every run)",
                s.failed_documents.len()
            );
            for (id, f) in s.failed_documents.iter().take(10) {
                let kind = if f.retryable { "retryable" } else { "permanent" };
                let _ = writeln!(out, "    {id} [{kind}, run {}]: {}", f.run.0, f.reason);
            }
        }
        if s.unsettled_documents > 0 {
            let _ = writeln!(
                out,
                "  unsettled documents: {} (an interrupted page; the next run redoes them)",
                s.unsettled_documents
            );
        }
        for r in &s.runs {
            let _ = writeln!(out, "  {}", run_line(r));
            if !r.last_error.is_empty() {
                let _ = writeln!(out, "    last error: {}", r.last_error);
            }
            if !r.note.is_empty() {
                let _ = writeln!(out, "    note: {}", r.note);
            }
        }
    }
    let _ = writeln!(
        out,
        "queues: requests {} pending / {} lag; jobs {} pending / {} lag; dead letters {}",
        queues.requests.pending,
        queues.requests.lag.map(|l| l.to_string()).unwrap_or("?".into()),
        queues.jobs.pending,
        queues.jobs.lag.map(|l| l.to_string()).unwrap_or("?".into()),
        queues.dead_letters
    );
    out
}
