//! A `RunHooks` for tests that replay races: the test arms a point of a
//! source's next run, the run pauses there, the test changes the source, and
//! the run goes on. With `ordered`, the pages of each run are also applied one
//! at a time in page order, so "before page k" means "after pages 0..k".
//!
//! What decides a race between a sync and a change at the source is where in
//! the run the change lands, and, between the pages of one run, their order.
//! Both are fixed here by the test instead of by the scheduler, so a replay of a
//! seed repeats its interleaving. Runs of different sources still run
//! concurrently: they share no data, only the workers.

use std::collections::HashMap;
use std::sync::Mutex;

use tidemark::hooks::{At, Point, RunHooks};
use tidemark::types::{RunId, SourceId};
use tokio::sync::{Notify, mpsc, oneshot};

/// Where in a source's next run to pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// After feed page `n` (from 0) is read and planned.
    FeedPage(u32),
    /// After the plan, before any page job exists.
    Planned,
    /// Before page `k` (from 0) is applied; with `ordered`, after pages `0..k` ended.
    PageStart(u32),
    /// After the pages, before dependents.
    PagesDone,
    /// After the dependents, before the checkpoint is committed.
    BeforeCommit,
}

impl When {
    fn matches(self, p: Point) -> bool {
        match (self, p) {
            (When::FeedPage(n), Point::FeedPage(m)) => n == m,
            (When::Planned, Point::Planned) => true,
            (When::PageStart(k), Point::PageStart { page, deliveries: 1 }) => k == page,
            (When::PagesDone, Point::PagesDone) => true,
            (When::BeforeCommit, Point::BeforeCommit) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::FeedPage(n) => write!(f, "after feed page {n}"),
            When::Planned => f.write_str("after the plan"),
            When::PageStart(k) => write!(f, "before page {k}"),
            When::PagesDone => f.write_str("after the pages, before dependents"),
            When::BeforeCommit => f.write_str("before the commit"),
        }
    }
}

/// A run paused at an armed point; it goes on when this is resumed or dropped.
pub struct Paused {
    pub source: SourceId,
    pub when: When,
    resume: oneshot::Sender<()>,
}

impl Paused {
    /// Lets the run go on.
    pub fn resume(self) {
        let _ = self.resume.send(());
    }
}

#[derive(Default)]
struct Inner {
    armed: HashMap<SourceId, When>,
    /// Per run: the page whose first delivery goes next (ordered mode).
    next_page: HashMap<RunId, u32>,
}

/// The hooks; share it as `Arc<Director>` with `App::with_hooks`.
pub struct Director {
    ordered: bool,
    inner: Mutex<Inner>,
    turn: Notify,
    paused: mpsc::UnboundedSender<Paused>,
}

impl Director {
    /// A director and the receiver of paused runs. `ordered`: one page of a run at a time, in order.
    pub fn new(ordered: bool) -> (Self, mpsc::UnboundedReceiver<Paused>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Director {
                ordered,
                inner: Mutex::new(Inner::default()),
                turn: Notify::new(),
                paused: tx,
            },
            rx,
        )
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses `source`'s next run at `when` (replacing any armed point).
    pub fn arm(&self, source: &SourceId, when: When) {
        self.inner().armed.insert(source.clone(), when);
    }

    /// Disarms `source`; returns the point if the run never reached it.
    pub fn disarm(&self, source: &SourceId) -> Option<When> {
        self.inner().armed.remove(source)
    }

    /// Ordered mode: waits until it is `page`'s turn in `run` (first deliveries only).
    async fn wait_turn(&self, run: &RunId, page: u32) {
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner().next_page.get(run).copied().unwrap_or(0) >= page {
                return;
            }
            notified.await;
        }
    }
}

#[async_trait::async_trait]
impl RunHooks for Director {
    async fn at(&self, at: At<'_>) {
        if self.ordered
            && let Point::PageStart { page, deliveries: 1 } = at.point
        {
            self.wait_turn(at.run, page).await;
        }
        let fire = {
            let mut inner = self.inner();
            match inner.armed.get(at.source) {
                Some(w) if w.matches(at.point) => inner.armed.remove(at.source),
                _ => None,
            }
        };
        if let Some(when) = fire {
            let (tx, rx) = oneshot::channel();
            let paused = Paused {
                source: at.source.clone(),
                when,
                resume: tx,
            };
            if self.paused.send(paused).is_ok() {
                let _ = rx.await;
            }
        }
        if self.ordered
            && let Point::PageEnd { page, .. } = at.point
        {
            let mut inner = self.inner();
            let next = inner.next_page.entry(at.run.clone()).or_insert(0);
            *next = (*next).max(page + 1);
            drop(inner);
            self.turn.notify_waiters();
        }
    }
}
