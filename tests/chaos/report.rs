//! The chaos test's report: what was injected, what the fleet did about it,
//! and what the end state is. Printed always, success or failure.
//!
//! Definitions (plain, so a reader can check them against the run records):
//! - runs: every run record of the four sources seen during the test, by status;
//! - documents re-processed: documents planned by runs that did not complete
//!   (failed, or abandoned after a takeover), whose changes a later run planned
//!   again, plus documents a run redid because an interrupted page left them
//!   unsettled or failed (the "N document(s) redone" of run notes);
//! - skipped on apply: documents in page jobs found already written with the
//!   same version and content (redone pages, overlapping runs);
//! - stale pages refused: pages workers dropped because a newer run owned the
//!   source (`pages_superseded` of the stale runs): none of their writes landed;
//! - documents lost: after the final sync, documents of a source missing from
//!   the sink, documents in the sink the source no longer has, and documents
//!   whose sink copy differs from the source. Must be 0;
//! - drift: documents `tidemark verify --source` reports, summed over sources. Must be 0.

use std::collections::BTreeMap;
use std::fmt;

use tidemark::state::{RunRecord, RunStatus};

use super::fleet::Fault;

/// Everything the report prints.
pub struct Report {
    pub seed: u64,
    /// Where Redis runs, as the header says it.
    pub redis: &'static str,
    pub secs: u64,
    pub chaos_secs: f64,
    pub settle_secs: f64,
    /// Operations applied to the sources.
    pub operations: u64,
    /// Sync requests (enqueued, refused while Redis was unreachable).
    pub requests: (u64, u64),
    pub faults: BTreeMap<Fault, u64>,
    pub runs: Vec<RunRecord>,
    /// Documents the sources hold at the end.
    pub documents: u64,
    pub missing: u64,
    pub extra: u64,
    pub stale: u64,
    pub drift: u64,
    pub unexpected_exits: Vec<String>,
    /// Printed after the figures (failures only).
    pub detail: Vec<String>,
}

/// "N document(s) redone" in a run's note.
fn redone(note: &str) -> u64 {
    note.split(';')
        .filter_map(|part| {
            let part = part.trim();
            let (n, rest) = part.split_once(' ')?;
            rest.starts_with("document(s) redone").then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

impl Report {
    pub fn new(seed: u64, secs: u64) -> Self {
        Report {
            seed,
            redis: "redis AOF always, 3 lock nodes",
            secs,
            chaos_secs: 0.0,
            settle_secs: 0.0,
            operations: 0,
            requests: (0, 0),
            faults: BTreeMap::new(),
            runs: Vec::new(),
            documents: 0,
            missing: 0,
            extra: 0,
            stale: 0,
            drift: 0,
            unexpected_exits: Vec::new(),
            detail: Vec::new(),
        }
    }

    /// Documents lost or wrong in the sink after the final sync.
    pub fn lost(&self) -> u64 {
        self.missing + self.extra + self.stale
    }

    fn sum(&self, f: impl Fn(&RunRecord) -> u64) -> u64 {
        self.runs.iter().map(f).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "==== chaos report ====")?;
        writeln!(
            f,
            "seed {} | faults for {:.1}s (asked {}s) | queues drained {:.1}s after | 2 coordinators, 3 workers, {}",
            self.seed, self.chaos_secs, self.secs, self.settle_secs, self.redis
        )?;
        writeln!(
            f,
            "source operations: {} | sync requests: {} enqueued, {} refused (Redis unreachable)",
            self.operations, self.requests.0, self.requests.1
        )?;
        let total: u64 = self.faults.values().sum();
        writeln!(f, "faults injected: {total}")?;
        for (fault, n) in &self.faults {
            writeln!(f, "  {n:5}  {fault}")?;
        }
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for r in &self.runs {
            *by_status.entry(r.status.to_string()).or_default() += 1;
        }
        let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let mut walls: Vec<u64> = self.runs.iter().filter_map(|r| r.wall_ms).collect();
        walls.sort_unstable();
        let median = walls.get(walls.len() / 2).copied().unwrap_or(0);
        let max = walls.last().copied().unwrap_or(0);
        writeln!(
            f,
            "runs: {} ({}); wall time median {median} ms, longest {max} ms",
            self.runs.len(),
            statuses.join(", ")
        )?;
        let unfinished = self.sum(|r| match r.status {
            RunStatus::Failed | RunStatus::Abandoned => r.docs_processed,
            _ => 0,
        });
        let marks = self.sum(|r| redone(&r.note));
        writeln!(
            f,
            "documents re-processed: {} ({} planned by runs that did not complete, {} redone from unsettled or failed marks)",
            unfinished + marks,
            unfinished,
            marks
        )?;
        writeln!(
            f,
            "documents written: {} upserted, {} deleted, {} skipped on apply (already written), {} failed alone",
            self.sum(|r| r.upserted),
            self.sum(|r| r.deleted),
            self.sum(|r| r.skipped),
            self.sum(|r| r.docs_failed)
        )?;
        writeln!(
            f,
            "stale pages refused (superseded runs): {} | pages dead-lettered: {}",
            self.sum(|r| r.pages_superseded),
            self.sum(|r| r.pages_failed)
        )?;
        writeln!(
            f,
            "documents at the end: {} | LOST: {} (missing {}, extra {}, differing {}) | DRIFT (verify): {} | processes that exited by themselves: {}",
            self.documents,
            self.lost(),
            self.missing,
            self.extra,
            self.stale,
            self.drift,
            self.unexpected_exits.len()
        )?;
        for e in &self.unexpected_exits {
            writeln!(f, "  {e}")?;
        }
        for d in &self.detail {
            writeln!(f, "{d}")?;
        }
        write!(f, "======================")
    }
}

#[test]
fn redone_reads_run_notes() {
    assert_eq!(
        redone("complete listing; 3 document(s) redone: failed before, or left unsettled by an interrupted page"),
        3
    );
    assert_eq!(redone("nothing"), 0);
}
