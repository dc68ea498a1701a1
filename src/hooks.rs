//! Run points: named moments of a run at which a test may pause it and act.
//!
//! A race between a sync and a change at the source is decided by *where* in
//! the run the change lands: between two pages of the feed, after the plan,
//! before a given page job is applied, after the pages and before the
//! dependents, before the checkpoint. Timing cannot hit such a point reliably
//! (issue 8: convergence seed 334 failed under load and passed on replay), so
//! the coordinator and the worker announce each point to an optional
//! [`RunHooks`] and wait for it to return. A test installs one through
//! `App::with_hooks` (in `app`), applies its change while the run waits, and
//! so replays the same interleaving every time.
//!
//! Production never installs hooks: [`Hooks::at`] is then one `Option` check.
//! Hooks observe; they cannot change what the run does, only when it goes on.
//!
//! Invariant: every point is announced by the one task that is doing that step
//! (the coordinator for feed, plan, dependents and commit; the worker for a page),
//! before the step's effects (`PageStart`, `Planned`, `PagesDone`,
//! `BeforeCommit`) or after them (`FeedPage`, `PageEnd`), as named.

use std::fmt;
use std::sync::Arc;

use crate::types::{RunId, SourceId};

/// A point of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// The coordinator has read and planned feed page `n` (from 0) and not yet
    /// asked for the next one.
    FeedPage(u32),
    /// The whole feed is read and planned; no page job exists yet.
    Planned,
    /// A worker is about to apply page `page` of the run (delivery `deliveries`, from 1):
    /// nothing of it is fetched or written yet.
    PageStart {
        /// Page number within the run (dependents' pages continue the numbering).
        page: u32,
        /// How often the entry has been delivered, this time included.
        deliveries: u64,
    },
    /// A worker has finished with page `page` (applied, dropped, left for
    /// redelivery or dead-lettered).
    PageEnd {
        /// Page number within the run.
        page: u32,
        /// How often the entry has been delivered, this time included.
        deliveries: u64,
    },
    /// Every page of the feed's plan is done or failed; dependents are not yet looked up.
    PagesDone,
    /// Every page, dependents included, is done; the checkpoint is not yet committed.
    BeforeCommit,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::FeedPage(n) => write!(f, "after feed page {n}"),
            Point::Planned => f.write_str("after the plan"),
            Point::PageStart { page, deliveries } => write!(f, "before page {page} (delivery {deliveries})"),
            Point::PageEnd { page, deliveries } => write!(f, "after page {page} (delivery {deliveries})"),
            Point::PagesDone => f.write_str("after the pages, before dependents"),
            Point::BeforeCommit => f.write_str("before the commit"),
        }
    }
}

/// Where a run is: its source, its id, and the point.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The run's source.
    pub source: &'a SourceId,
    /// The run.
    pub run: &'a RunId,
    /// The point reached.
    pub point: Point,
}

/// What a test installs: called at every point; the run goes on when it returns.
#[async_trait::async_trait]
pub trait RunHooks: Send + Sync {
    /// The run has reached `at`; it waits until this returns.
    async fn at(&self, at: At<'_>);
}

/// The hooks a coordinator or worker announces its points to: none unless a test installed some.
#[derive(Clone, Default)]
pub struct Hooks(Option<Arc<dyn RunHooks>>);

impl Hooks {
    /// Announces to `hooks`.
    pub fn new(hooks: Arc<dyn RunHooks>) -> Self {
        Self(Some(hooks))
    }

    /// Announces `point` of `run` and waits for the hooks; returns at once when none are installed.
    pub async fn at(&self, source: &SourceId, run: &RunId, point: Point) {
        if let Some(h) = &self.0 {
            h.at(At { source, run, point }).await;
        }
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hooks(installed)"
        } else {
            "Hooks(none)"
        })
    }
}
