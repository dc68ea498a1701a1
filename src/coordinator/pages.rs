//! The plan read back as page jobs: a stretch of the run's plan at a time
//! ([`crate::state::plan`]), each upsert given its breadcrumb, cut into pages
//! of `page_size`.
//!
//! Invariants:
//! - every planned document is in exactly one page, in the order it was first
//!   planned; ids dropped from the plan, and deletions the guard held back, are in none;
//! - a breadcrumb is what the run expects: an ancestor the run upserts is
//!   named as the feed reported it, one it deletes ends the breadcrumb, and
//!   the others are read from the state, as [`crate::ancestry::fill`] does;
//! - memory is a stretch of the plan plus a bounded cache of ancestors
//!   (at most [`MAX_CACHED`]), not the plan.

use std::collections::{HashSet, VecDeque};

use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::{Coordinator, Error};
use crate::ancestry::{self, Found, Tree};
use crate::queue::jobs::{Action, JobItem};
use crate::types::{DocumentId, RunId, SourceId};

/// Ancestors kept between stretches at most; then the cache starts over (from the folders).
const MAX_CACHED: usize = 10_000;

/// A cursor over a run's plan that yields its pages.
pub(super) struct PlanPages<'a> {
    source: &'a SourceId,
    run: &'a RunId,
    plan: &'a Plan,
    /// Position of the next stretch in the plan's order.
    at: u64,
    exhausted: bool,
    ready: VecDeque<JobItem>,
    /// Titles and parents known so far: the folders, then ancestors read
    /// (a stretch's own documents only while their breadcrumbs are made).
    tree: Tree,
}

impl<'a> PlanPages<'a> {
    pub(super) fn new(source: &'a SourceId, run: &'a RunId, plan: &'a Plan) -> Self {
        PlanPages {
            source,
            run,
            plan,
            at: 0,
            exhausted: false,
            ready: VecDeque::new(),
            tree: plan.folders.clone(),
        }
    }

    /// The next page's items, or `None` after the last.
    pub(super) async fn next(
        &mut self,
        coordinator: &Coordinator,
        lost: &CancellationToken,
    ) -> Result<Option<Vec<JobItem>>, Error> {
        let size = coordinator.cfg.page_size.get();
        while self.ready.len() < size && !self.exhausted {
            self.read_stretch(coordinator, lost).await?;
        }
        if self.ready.is_empty() {
            return Ok(None);
        }
        let n = size.min(self.ready.len());
        Ok(Some(self.ready.drain(..n).collect()))
    }

    async fn read_stretch(&mut self, coordinator: &Coordinator, lost: &CancellationToken) -> Result<(), Error> {
        if self.at >= self.plan.listed {
            self.exhausted = true;
            return Ok(());
        }
        let stretch = coordinator.plan_stretch(self.source, self.run, self.at, lost).await?;
        if stretch.is_empty() {
            return Err(self
                .plan
                .lost_entries(&coordinator.keys, self.source, self.run, self.at));
        }
        self.at += stretch.len() as u64;
        if self.tree.len() > self.plan.folders.len() + MAX_CACHED {
            self.tree = self.plan.folders.clone();
        }
        let mut items = Vec::with_capacity(stretch.len());
        let mut own = Vec::new();
        for (id, entry) in stretch {
            let Some(entry) = entry else { continue };
            match entry.action {
                Action::Delete if self.plan.deletions_held_back => {}
                Action::Delete => {
                    items.push(JobItem {
                        meta: entry.meta,
                        action: Action::Delete,
                        breadcrumb: Vec::new(),
                    });
                }
                _ => {
                    if entry.placed
                        && self
                            .tree
                            .insert(id.clone(), (entry.meta.title.clone(), entry.meta.parent.clone()))
                            .is_none()
                    {
                        own.push(id);
                    }
                    // An upsert, or a refresh of a document whose permissions changed.
                    items.push(JobItem {
                        meta: entry.meta,
                        action: entry.action,
                        breadcrumb: Vec::new(),
                    });
                }
            }
        }
        let upserts: Vec<DocumentId> = items
            .iter()
            .filter(|i| i.action != Action::Delete)
            .map(|i| i.meta.id.clone())
            .collect();
        coordinator
            .place(self.source, self.run, upserts, &mut self.tree, lost)
            .await?;
        for item in items.iter_mut().filter(|i| i.action != Action::Delete) {
            item.breadcrumb = ancestry::breadcrumb(&item.meta.id, &self.tree);
        }
        // The cache keeps ancestors, not every document planned: a later
        // stretch that needs one of these as an ancestor reads it from the plan again.
        for id in own {
            self.tree.remove(&id);
        }
        self.ready.extend(items);
        Ok(())
    }
}

impl Coordinator {
    /// Adds to `tree` the ancestors of `start` it lacks (an [`ancestry::walk`]):
    /// from the run's plan first (an upsert as the feed reported it; a
    /// deletion ends the breadcrumb), else from the state.
    async fn place(
        &self,
        source: &SourceId,
        run: &RunId,
        start: Vec<DocumentId>,
        tree: &mut Tree,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        // No set of deletions is kept: the plan says which ancestors it
        // deletes, and those never enter the tree.
        ancestry::walk(start, tree, &HashSet::new(), |ids| async move {
            let refs: Vec<&DocumentId> = ids.iter().collect();
            let planned = self
                .redis(lost, "reading the plan", || self.state.planned_of(source, run, &refs))
                .await?;
            let mut found = Vec::with_capacity(ids.len());
            let mut unplanned = Vec::new();
            for (i, entry) in planned.into_iter().enumerate() {
                found.push(match entry {
                    Some(e) if e.action == Action::Delete => Found::Gone,
                    Some(e) if e.placed => Found::At(e.meta.title, e.meta.parent),
                    _ => {
                        unplanned.push(i);
                        Found::Unknown
                    }
                });
            }
            let asked: Vec<&DocumentId> = unplanned.iter().map(|i| refs[*i]).collect();
            let held = self
                .redis(lost, "reading ancestors", || self.state.held_meta_of(source, &asked))
                .await?;
            for (i, meta) in unplanned.into_iter().zip(held) {
                if let Some(m) = meta {
                    found[i] = Found::At(m.title, m.parent);
                }
            }
            Ok(found)
        })
        .await
    }
}
