//! `tidemark verify`: does each sink hold what the state says it holds, and
//! (with a fresh listing) what the source has? And `--repair`: the targeted run
//! that makes it so.
//!
//! The state is the authority for what the sink holds (see [`crate::state::docs`]);
//! this is the check that the authority is right. Comparing sink and state
//! costs no source calls at all; comparing with the source costs one listing
//! (the feed of a full run, no content fetches).
//!
//! Invariants:
//! - nothing here writes to the sink or the state's documents: a repair only
//!   marks the drifted documents unsettled (fenced with the current token, so
//!   a run that started meanwhile wins) and enqueues a request; the run that
//!   serves it rewrites or deletes them like any run would;
//! - a run in progress makes differences expected; the report says so.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::app::App;
use crate::queue::jobs::SyncRequest;
use crate::sources::{self, Checkpoint, Observation};
use crate::types::{DocumentId, SourceId, SyncMode};

/// Ids listed per kind in a report (the counts are always whole).
const SHOWN_IDS: usize = 20;
/// Above this many documents a repair asks for an incremental run (which
/// picks up every unsettled document) instead of naming them all in one request.
const MAX_TARGETED: usize = 1000;

/// Verification failures (drift is not a failure: it is the report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source is not configured.
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    /// Reading or marking the state failed.
    #[error("state: {0}")]
    State(#[from] crate::state::Error),
    /// Reading the sink failed.
    #[error("sink: {0}")]
    Sink(#[from] crate::sinks::Error),
    /// Listing the source failed.
    #[error("listing the source: {0}")]
    Source(#[from] sources::Error),
    /// Enqueueing the repair failed.
    #[error("enqueueing the repair: {0}")]
    Queue(#[from] crate::queue::Error),
}

/// A kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The state holds it, the sink does not.
    StateWithoutSink,
    /// The sink holds it, the state does not.
    SinkWithoutState,
    /// Both hold it, at different versions.
    VersionDiffersFromState,
    /// A sink write may have happened without the state recording it (a page
    /// interrupted; the next run redoes it).
    Unsettled,
    /// The source has it, the sink does not.
    MissingInSink,
    /// The sink has it, the source does not (only after a complete listing).
    ExtraInSink,
    /// The sink holds another version than the source lists.
    VersionDiffersFromSource,
}

/// All documents of one kind of difference (in one sink).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The kind.
    pub kind: DriftKind,
    /// The sink it is about (every kind but `unsettled`, which is the state's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// How many documents.
    pub count: usize,
    /// The first ids, sorted.
    pub ids: Vec<String>,
    #[serde(skip)]
    all: BTreeSet<DocumentId>,
}

/// What `verify` found for one source.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The source.
    pub source: String,
    /// Documents in each sink the source feeds, in the configured order.
    pub sinks: Vec<SinkCount>,
    /// Documents in the state.
    pub state_documents: usize,
    /// Documents the source listed (with `--source`).
    pub source_documents: Option<usize>,
    /// Whether the listing was complete (extra-in-sink is only reported then).
    pub complete_listing: Option<bool>,
    /// API calls the listing made.
    pub api_calls: u64,
    /// A run of this source is in progress: differences may be transient.
    pub run_in_progress: Option<String>,
    /// Non-empty kinds only, in a fixed order.
    pub findings: Vec<Finding>,
}

/// How many documents one sink holds for the source.
#[derive(Debug, Clone, Serialize)]
pub struct SinkCount {
    /// The sink's name.
    pub name: String,
    /// Documents it holds (a delivering sink: what its receiver accepted).
    pub documents: usize,
}

impl Report {
    /// Any difference at all.
    pub fn drift(&self) -> bool {
        !self.findings.is_empty()
    }

    /// Every document some finding names.
    pub fn drifted(&self) -> BTreeSet<DocumentId> {
        self.findings.iter().flat_map(|f| f.all.iter().cloned()).collect()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|s| format!("{} {}", s.name, s.documents))
            .collect();
        let mut out = format!(
            "{}: sink {} document(s), state {}",
            self.source,
            sinks.join(", "),
            self.state_documents
        );
        if let Some(n) = self.source_documents {
            out.push_str(&format!(", source {n} ({} API calls)", self.api_calls));
            if self.complete_listing == Some(false) {
                out.push_str(" [listing incomplete: extra-in-sink not checked]");
            }
        }
        out.push('\n');
        if let Some(run) = &self.run_in_progress {
            out.push_str(&format!("  run {run} is in progress: differences may be transient\n"));
        }
        if self.findings.is_empty() {
            out.push_str("  no drift\n");
        }
        for f in &self.findings {
            let more = f.count.saturating_sub(f.ids.len());
            let tail = if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            };
            let sink = f.sink.as_ref().map(|s| format!(" in {s}")).unwrap_or_default();
            out.push_str(&format!(
                "  {:?}{sink}: {} [{}]{tail}\n",
                f.kind,
                f.count,
                f.ids.join(", ")
            ));
        }
        out
    }
}

fn finding(kind: DriftKind, sink: Option<&str>, all: BTreeSet<DocumentId>) -> Option<Finding> {
    (!all.is_empty()).then(|| Finding {
        kind,
        sink: sink.map(str::to_owned),
        count: all.len(),
        ids: all.iter().take(SHOWN_IDS).map(|d| d.0.clone()).collect(),
        all,
    })
}

/// Compares the sink with the state and, if `with_source`, with a fresh
/// listing of the source (no content fetched).
pub async fn verify(app: &App, source: &SourceId, with_source: bool) -> Result<Report, Error> {
    let connector = app
        .sources
        .get(source)
        .cloned()
        .ok_or_else(|| Error::UnknownSource(source.to_string()))?;
    let state = app.state();
    let held = state.held_meta(source).await?;
    let unsettled = state.unsettled(source).await?;
    let run_in_progress = state.run_in_progress(source).await?.map(|r| r.0);
    let mut report = Report {
        source: source.to_string(),
        sinks: Vec::new(),
        state_documents: held.len(),
        source_documents: None,
        complete_listing: None,
        api_calls: 0,
        run_in_progress,
        findings: Vec::new(),
    };
    let mut findings: Vec<Finding> = finding(DriftKind::Unsettled, None, unsettled.into_keys().collect())
        .into_iter()
        .collect();
    let listed = if with_source {
        let calls = sources::ApiCalls::observed(app.telemetry.source_api(source));
        // Verification compares whole sets, so it holds the map anyway: it answers the feed too.
        let mut versions = sources::HeldMap::default();
        for (id, h) in &held {
            versions.insert(id.clone(), h.version.clone(), h.parent.clone());
        }
        let versions: sources::Held = Arc::new(versions);
        let listed = list(connector.as_ref(), versions, &calls).await?;
        report.api_calls = calls.get();
        report.source_documents = Some(listed.docs.len());
        report.complete_listing = Some(listed.complete);
        Some(listed)
    } else {
        None
    };

    for (name, sink) in app.sinks.each(source) {
        let sink_docs = sink.versions(source).await?;
        report.sinks.push(SinkCount {
            name: name.clone(),
            documents: sink_docs.len(),
        });
        let mut state_without_sink = BTreeSet::new();
        let mut version_differs = BTreeSet::new();
        for (id, h) in &held {
            match sink_docs.get(id) {
                None => {
                    state_without_sink.insert(id.clone());
                }
                Some(v) if *v != h.version => {
                    version_differs.insert(id.clone());
                }
                Some(_) => {}
            }
        }
        let sink_without_state = sink_docs.keys().filter(|id| !held.contains_key(*id)).cloned().collect();
        let at = Some(name.as_str());
        findings.extend(
            [
                finding(DriftKind::StateWithoutSink, at, state_without_sink),
                finding(DriftKind::SinkWithoutState, at, sink_without_state),
                finding(DriftKind::VersionDiffersFromState, at, version_differs),
            ]
            .into_iter()
            .flatten(),
        );
        let Some(listed) = &listed else { continue };
        let mut missing = BTreeSet::new();
        let mut differs = BTreeSet::new();
        for (id, version) in &listed.docs {
            match sink_docs.get(id) {
                None => {
                    missing.insert(id.clone());
                }
                Some(v) if v != version => {
                    differs.insert(id.clone());
                }
                Some(_) => {}
            }
        }
        let extra = if listed.complete {
            sink_docs
                .keys()
                .filter(|id| !listed.docs.contains_key(*id))
                .cloned()
                .collect()
        } else {
            BTreeSet::new()
        };
        findings.extend(
            [
                finding(DriftKind::MissingInSink, at, missing),
                finding(DriftKind::ExtraInSink, at, extra),
                finding(DriftKind::VersionDiffersFromSource, at, differs),
            ]
            .into_iter()
            .flatten(),
        );
    }
    findings.sort_by(|a, b| (a.kind, &a.sink).cmp(&(b.kind, &b.sink)));
    report.findings = findings;
    Ok(report)
}

/// A source's documents as a full listing reports them.
struct Listing {
    docs: HashMap<DocumentId, String>,
    complete: bool,
}

async fn list(source: &dyn sources::Source, held: sources::Held, calls: &sources::ApiCalls) -> Result<Listing, Error> {
    let mut feed = source
        .open_feed(&Checkpoint::default(), SyncMode::Full, held, calls.clone())
        .await?;
    let mut docs = HashMap::new();
    while let Some(page) = feed.next_page().await? {
        for obs in page.observations {
            match obs {
                Observation::Present(meta) => {
                    docs.insert(meta.id, meta.version);
                }
                Observation::Moved { from, to } => {
                    docs.remove(&from);
                    docs.insert(to.id, to.version);
                }
                Observation::Deleted(id) => {
                    docs.remove(&id);
                }
                Observation::Access { .. } => {}
            }
        }
    }
    Ok(Listing {
        docs,
        complete: feed.end().complete_listing,
    })
}

/// What `--repair` asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Repair {
    /// The request that will serve the repair.
    pub request_id: String,
    /// Documents marked for it.
    pub documents: usize,
    /// Whether the request names them (targeted) or is an incremental run.
    pub targeted: bool,
}

/// Marks every drifted document unsettled and enqueues the run that rewrites
/// or deletes them: a targeted run naming them (each is fetched; what the
/// source no longer has is deleted), or, for many, an incremental run (which
/// includes every unsettled document). `None` when there is nothing to repair.
pub async fn repair(app: &App, source: &SourceId, report: &Report) -> Result<Option<Repair>, Error> {
    let drifted: Vec<DocumentId> = report.drifted().into_iter().collect();
    if drifted.is_empty() {
        return Ok(None);
    }
    let state = app.state();
    let token = state.current_fence(source).await?;
    let refs: Vec<&DocumentId> = drifted.iter().collect();
    state.mark_unsettled(source, token, "verify --repair", &refs).await?;
    let mut request = SyncRequest::new(source.clone(), SyncMode::Incremental, "verify");
    let targeted = drifted.len() <= MAX_TARGETED;
    if targeted {
        request.targets = drifted.clone();
    }
    crate::queue::enqueue(&app.pool, &app.keys, &request).await?;
    Ok(Some(Repair {
        request_id: request.request_id,
        documents: drifted.len(),
        targeted,
    }))
}
