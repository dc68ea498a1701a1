//! Dependents: documents a run's changes made stale without changing them at
//! the source. Descendants of a renamed, moved or deleted document, or of a
//! renamed or moved folder (Drive), have stale breadcrumbs; documents linking to a created, renamed or deleted one have
//! stale link titles. They are found through the reverse indexes
//! (`kids:`, `linkedfrom:`) and rewritten as `Refresh` jobs from the sink's own
//! copy, with no content fetched. Two exceptions: the held children of a
//! deleted document that the run did not plan (a dead run left them) are
//! fetched again (`Upsert`), as the source may have moved or deleted them with
//! it; and of the children a document created by this run already had, only
//! those the run did not write are refreshed.
//!
//! Invariant: computed from what the pages actually wrote (read back from the
//! state), not from what the feed announced, and from everything still owed
//! by earlier writes (`state::owed`: a run that died before this step left
//! its dependents there); cycles are cut by a visited set. A document this run
//! wrote is not refreshed for a link to a target whose title came out as the
//! run planned: its page resolved that title before writing (`state::titles`).

use std::collections::{HashMap, HashSet};

use super::plan::Plan;
use super::{Coordinator, Error};
use crate::ancestry;
use crate::queue::jobs::{Action, JobItem};
use crate::sources::DocMeta;
use crate::state::plan as plan_store;
use crate::state::{HeldMeta, Owed};
use crate::types::{DocumentId, RunId, SourceId};

impl Coordinator {
    /// The documents to refresh because of this run's changes: the descendants
    /// of renamed, moved or deleted documents (their breadcrumbs), and the
    /// documents linking to created, renamed or deleted ones (their link titles).
    /// Found through the reverse indexes, reading the plan a stretch at a
    /// time; cycles are cut by the visited set.
    /// Also returns what was owed when they were computed: the run forgets it
    /// once every refresh is applied.
    pub(super) async fn dependents(
        &self,
        source: &SourceId,
        run: &RunId,
        plan: &Plan,
    ) -> Result<(Vec<JobItem>, Owed), Error> {
        let keys = &self.keys;
        let owed = self.state.owed(source).await?;
        let owes_crumbs: HashSet<&DocumentId> = owed.crumbs.iter().collect();
        // Created by this run while children of theirs were already held.
        let mut created_with_kids: HashSet<DocumentId> = HashSet::new();
        let mut roots = Vec::new();
        let mut link_targets = Vec::new();
        let mut deleted = HashSet::new();
        let mut found: HashSet<DocumentId> = HashSet::new();
        let mut at = 0u64;
        loop {
            let stretch = self.state.plan_range(source, run, at, plan_store::READ_BATCH).await?;
            if stretch.is_empty() {
                break;
            }
            at += stretch.len() as u64;
            let mut upserted = Vec::new();
            for (id, entry) in stretch {
                match entry {
                    Some(e) if e.action == Action::Delete && !plan.deletions_held_back => {
                        deleted.insert(id);
                    }
                    Some(e) if e.action == Action::Upsert => upserted.push(e),
                    _ => {}
                }
            }
            // What the pages actually wrote, not what the feed announced: a fetch may
            // have found a newer title, a new parent, or the document gone.
            let ids: Vec<&DocumentId> = upserted.iter().map(|e| &e.meta.id).collect();
            // Created or renamed here, and written with the title this run planned:
            // every page of the run already linked to them under that title.
            let mut as_planned = Vec::new();
            for (entry, now) in upserted.iter().zip(self.state.docs(source, &ids).await?) {
                let id = &entry.meta.id;
                match (now, &entry.before) {
                    (Some(now), before) => {
                        let renamed = before.as_ref().is_some_and(|h| h.title != now.title);
                        let moved = before.as_ref().is_some_and(|h| h.parent != now.parent);
                        // Breadcrumbs planned in this run used the feed's title and
                        // parent; a change between the feed and the fetch (even one
                        // back to what we held) makes them stale too.
                        let not_as_planned =
                            entry.placed && (entry.meta.title != now.title || entry.meta.parent != now.parent);
                        if renamed || moved || not_as_planned {
                            roots.push(id.clone());
                        }
                        if before.is_none() && owes_crumbs.contains(id) {
                            created_with_kids.insert(id.clone());
                        }
                        if renamed || before.is_none() {
                            if entry.planned_title() == Some(now.title.as_str()) {
                                as_planned.push(id.clone());
                            } else {
                                link_targets.push(id.clone());
                            }
                        }
                    }
                    (None, Some(_)) => {
                        deleted.insert(id.clone());
                    }
                    (None, None) => {}
                }
            }
            // Linkers of a target written as planned need no refresh if this run wrote
            // them too (they resolved its planned title, see `state::titles`): a full
            // sync of pages linking to one another writes each once. Linkers written
            // before this run, or whose write failed or is unsettled, still do.
            let sets: Vec<String> = as_planned.iter().map(|d| keys.linked_from(source, d)).collect();
            let linkers = self.state.union_of(&sets).await?;
            found.extend(self.not_written_by(source, run, linkers).await?);
        }
        // Owed by earlier writes (this run's pages record theirs too): refreshed
        // whether or not this plan names them.
        // A batch at a time: a first sync of pages linking to one another
        // leaves about half of them owing link titles.
        for chunk in owed
            .crumbs
            .chunks(plan_store::READ_BATCH)
            .chain(owed.links.chunks(plan_store::READ_BATCH))
        {
            let refs: Vec<&DocumentId> = chunk.iter().collect();
            for (id, held) in chunk.iter().zip(self.state.held_meta_of(source, &refs).await?) {
                if held.is_none() {
                    deleted.insert(id.clone());
                }
            }
        }
        let mut is_root: HashSet<DocumentId> = roots.iter().cloned().collect();
        let mut is_target: HashSet<DocumentId> = link_targets.iter().cloned().collect();
        for id in &deleted {
            if is_root.insert(id.clone()) {
                roots.push(id.clone());
            }
            if is_target.insert(id.clone()) {
                link_targets.push(id.clone());
            }
        }
        roots.extend(
            owed.crumbs
                .iter()
                .filter(|d| !created_with_kids.contains(*d) && is_root.insert((*d).clone()))
                .cloned(),
        );
        // A document this run created owes breadcrumbs only to the children it
        // found already held: the ones this run wrote planned theirs through it
        // (a first sync whose children came before their parent refreshes nothing).
        let created: Vec<&DocumentId> = created_with_kids.iter().collect();
        for chunk in created.chunks(plan_store::READ_BATCH) {
            let sets: Vec<String> = chunk.iter().map(|d| keys.children(source, d)).collect();
            let kids = self.state.union_of(&sets).await?;
            for kid in self.not_written_by(source, run, kids).await? {
                found.insert(kid.clone());
                if is_root.insert(kid.clone()) {
                    roots.push(kid);
                }
            }
        }
        let refetch = self.children_to_fetch_again(source, run, &deleted).await?;
        // Renamed or moved folders (not documents): what sits in them needs new breadcrumbs.
        roots.extend(
            plan.changed_folders
                .iter()
                .filter(|d| is_root.insert((*d).clone()))
                .cloned(),
        );
        // Owed link targets this run upserted as planned are fresh too: only
        // linkers it did not write need their titles.
        // (A set's members: no duplicates among them, so no copy of each in `is_target`.)
        let owed_links: Vec<&DocumentId> = owed.links.iter().filter(|d| !is_target.contains(*d)).collect();
        for chunk in owed_links.chunks(plan_store::READ_BATCH) {
            let planned = self.state.planned_of(source, run, chunk).await?;
            let now = self.state.docs(source, chunk).await?;
            let mut fresh = Vec::new();
            for ((id, planned), now) in chunk.iter().zip(planned).zip(now) {
                let planned_title = planned.as_ref().and_then(|p| p.planned_title());
                if now.is_some_and(|now| planned_title == Some(now.title.as_str())) {
                    fresh.push(keys.linked_from(source, id));
                } else {
                    link_targets.push((*id).clone());
                }
            }
            let linkers = self.state.union_of(&fresh).await?;
            found.extend(self.not_written_by(source, run, linkers).await?);
        }
        let mut visited: HashSet<DocumentId> = roots.iter().cloned().collect();
        let mut level = roots;
        while !level.is_empty() {
            let mut kids = Vec::new();
            for chunk in level.chunks(plan_store::READ_BATCH) {
                let sets: Vec<String> = chunk.iter().map(|d| keys.children(source, d)).collect();
                kids.extend(self.state.union_of(&sets).await?);
            }
            // Every descendant is refreshed, even one this run wrote itself: its
            // breadcrumb was planned from the feed, before an ancestor's fetch
            // found a new title (issue 8, convergence seed 45). The visited set
            // only cuts cycles; a refresh that changes nothing writes nothing.
            found.extend(kids.iter().cloned());
            level = kids.into_iter().filter(|d| visited.insert(d.clone())).collect();
        }
        for chunk in link_targets.chunks(plan_store::READ_BATCH) {
            let sets: Vec<String> = chunk.iter().map(|d| keys.linked_from(source, d)).collect();
            found.extend(self.state.union_of(&sets).await?);
        }

        let mut ids: Vec<DocumentId> = found.into_iter().filter(|d| !deleted.contains(d)).collect();
        ids.sort();
        // Their breadcrumbs from what the pages wrote (the state), through the
        // folders the feed reported.
        let mut tree = plan.folders.clone();
        ancestry::fill(&self.state, source, ids.clone(), &mut tree, &deleted).await?;
        let items = ids
            .into_iter()
            .map(|id| {
                let breadcrumb = ancestry::breadcrumb(&id, &tree);
                if let Some(held) = refetch.get(&id) {
                    return JobItem {
                        breadcrumb,
                        meta: DocMeta {
                            id,
                            version: held.version.clone(),
                            title: held.title.clone(),
                            parent: held.parent.clone(),
                            ..DocMeta::default()
                        },
                        action: Action::Upsert,
                    };
                }
                let (title, parent) = tree.get(&id).cloned().unwrap_or_default();
                JobItem {
                    breadcrumb,
                    meta: DocMeta {
                        id,
                        version: String::new(),
                        title,
                        parent,
                        modified_at: None,
                        ..DocMeta::default()
                    },
                    action: Action::Refresh,
                }
            })
            .collect();
        Ok((items, owed))
    }

    /// The held children of `deleted` documents that this run did not plan,
    /// with what we hold of them: a run that died after a deletion left them
    /// (the coordinator's `adopt_orphans` plans them with the deletion). They
    /// are fetched again rather than refreshed, so the source says where they
    /// are now (a page moved up, an attachment gone with its page) instead of
    /// a breadcrumb that stops at the gap (cluster chaos, seed 3).
    async fn children_to_fetch_again(
        &self,
        source: &SourceId,
        run: &RunId,
        deleted: &HashSet<DocumentId>,
    ) -> Result<HashMap<DocumentId, HeldMeta>, Error> {
        let mut out = HashMap::new();
        let gone: Vec<&DocumentId> = deleted.iter().collect();
        for chunk in gone.chunks(plan_store::READ_BATCH) {
            let sets: Vec<String> = chunk.iter().map(|d| self.keys.children(source, d)).collect();
            let kids: Vec<DocumentId> = self
                .state
                .union_of(&sets)
                .await?
                .into_iter()
                .filter(|k| !deleted.contains(k))
                .collect();
            for batch in kids.chunks(plan_store::READ_BATCH) {
                let refs: Vec<&DocumentId> = batch.iter().collect();
                let planned = self.state.planned_of(source, run, &refs).await?;
                let held = self.state.held_meta_of(source, &refs).await?;
                for ((kid, planned), held) in batch.iter().zip(planned).zip(held) {
                    if let (None, Some(held)) = (planned, held) {
                        out.insert(kid.clone(), held);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Of `linkers`, those this run did not write: not upserted by its plan,
    /// not held after its pages, or failed or unsettled.
    async fn not_written_by(
        &self,
        source: &SourceId,
        run: &RunId,
        linkers: Vec<DocumentId>,
    ) -> Result<Vec<DocumentId>, Error> {
        if linkers.is_empty() {
            return Ok(linkers);
        }
        let refs: Vec<&DocumentId> = linkers.iter().collect();
        let planned = self.state.planned_of(source, run, &refs).await?;
        let held = self.state.held_meta_of(source, &refs).await?;
        let mut written: HashSet<DocumentId> = refs
            .iter()
            .zip(planned.iter().zip(&held))
            .filter(|(_, (p, h))| p.as_ref().is_some_and(|p| p.action == Action::Upsert) && h.is_some())
            .map(|(d, _)| (*d).clone())
            .collect();
        let maybe: Vec<&DocumentId> = refs.iter().copied().filter(|d| written.contains(*d)).collect();
        for doc in self.state.failed_of(source, &maybe).await? {
            written.remove(&doc);
        }
        for doc in self.state.unsettled_of(source, &maybe).await? {
            written.remove(&doc);
        }
        Ok(linkers.into_iter().filter(|d| !written.contains(d)).collect())
    }
}
