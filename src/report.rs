//! Printing run records and source status, for people (`text`) and scripts (`json`).

use std::fmt::Write;

use serde::Serialize;

use crate::queue::streams::GroupInfo;
use crate::state::RunRecord;

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

/// One line of figures for a run.
pub fn run_line(r: &RunRecord) -> String {
    format!(
        "run {} [{}] {} by {}: {} processed ({} upserted, {} deleted, {} skipped), {} unchanged by version, {} API calls, {} pages ({} failed), {}",
        &r.run_id[..r.run_id.len().min(8)],
        r.mode,
        r.status,
        r.requested_by,
        r.docs_processed,
        r.upserted,
        r.deleted,
        r.skipped,
        r.unchanged,
        r.api_calls,
        r.pages_total,
        r.pages_failed,
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
