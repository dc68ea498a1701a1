//! Dependents: documents a run's changes made stale without changing them at
//! the source. Descendants of a renamed, moved or deleted document, or of a
//! renamed or moved folder (Drive), have stale breadcrumbs; documents linking to a created, renamed or deleted one have
//! stale link titles. They are found through the reverse indexes
//! (`kids:`, `linkedfrom:`) and rewritten as `Refresh` jobs from the sink's own
//! copy, with no content fetched.
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
use crate::state::Owed;
use crate::types::{DocumentId, SourceId};

impl Coordinator {
    /// The documents to refresh because of this run's changes: the descendants
    /// of renamed, moved or deleted documents (their breadcrumbs), and the
    /// documents linking to created, renamed or deleted ones (their link titles).
    /// Found through the reverse indexes; cycles are cut by the visited set.
    /// Also returns what was owed when they were computed: the run forgets it
    /// once every refresh is applied.
    pub(super) async fn dependents(&self, source: &SourceId, plan: &Plan) -> Result<(Vec<JobItem>, Owed), Error> {
        let keys = &self.keys;
        let owed = self.state.owed(source).await?;
        let mut roots = Vec::new();
        let mut link_targets = Vec::new();
        let mut deleted = HashSet::new();
        let mut tree = plan.tree.clone();
        for item in plan.items.iter().filter(|i| i.action == Action::Delete) {
            deleted.insert(item.meta.id.clone());
        }
        // What the pages actually wrote, not what the feed announced: a fetch may
        // have found a newer title, a new parent, or the document gone.
        let upserted: Vec<&DocumentId> = plan
            .items
            .iter()
            .filter(|i| i.action == Action::Upsert)
            .map(|i| &i.meta.id)
            .collect();
        let planned_title: HashMap<&DocumentId, &str> = plan.planned_titles().into_iter().collect();
        // Created or renamed here, and written with the title this run planned:
        // every page of the run already linked to them under that title.
        let mut as_planned: HashSet<DocumentId> = HashSet::new();
        let mut written: Vec<&DocumentId> = Vec::new();
        for (id, now) in upserted.iter().zip(self.state.docs(source, &upserted).await?) {
            if now.is_some() {
                written.push(id);
            }
            if let Some(now) = &now
                && planned_title.get(*id).is_some_and(|t| *t == now.title)
            {
                as_planned.insert((*id).clone());
            }
            match (now, plan.before.get(*id)) {
                (Some(now), before) => {
                    let renamed = before.is_some_and(|h| h.title != now.title);
                    let moved = before.is_some_and(|h| h.parent != now.parent);
                    // Breadcrumbs planned in this run used the feed's title and
                    // parent; a change between the feed and the fetch (even one
                    // back to what we held) makes them stale too.
                    let not_as_planned = plan
                        .tree
                        .get(*id)
                        .is_some_and(|(title, parent)| *title != now.title || *parent != now.parent);
                    if renamed || moved || not_as_planned {
                        roots.push((*id).clone());
                    }
                    if renamed || before.is_none() {
                        link_targets.push((*id).clone());
                    }
                    tree.insert((*id).clone(), (now.title, now.parent));
                }
                (None, Some(_)) => {
                    deleted.insert((*id).clone());
                }
                (None, None) => {}
            }
        }
        // Owed by earlier writes (this run's pages record theirs too): refreshed
        // whether or not this plan names them.
        let owed_ids: Vec<&DocumentId> = owed.crumbs.iter().chain(&owed.links).collect();
        for (id, held) in owed_ids.iter().zip(self.state.held_meta_of(source, &owed_ids).await?) {
            if held.is_none() {
                deleted.insert((*id).clone());
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
            tree.remove(id);
        }
        roots.extend(owed.crumbs.iter().filter(|d| is_root.insert((*d).clone())).cloned());
        // Renamed or moved folders (not documents): what sits in them needs new breadcrumbs.
        roots.extend(
            plan.changed_folders
                .iter()
                .filter(|d| is_root.insert((*d).clone()))
                .cloned(),
        );
        link_targets.extend(owed.links.iter().filter(|d| is_target.insert((*d).clone())).cloned());
        let mut found: HashSet<DocumentId> = HashSet::new();
        let mut visited: HashSet<DocumentId> = roots.iter().cloned().collect();
        let mut level = roots;
        while !level.is_empty() {
            let sets: Vec<String> = level.iter().map(|d| keys.children(source, d)).collect();
            let kids = self.state.union_of(&sets).await?;
            // Every descendant is refreshed, even one this run wrote itself: its
            // breadcrumb was planned from the feed, before an ancestor's fetch
            // found a new title (issue 8, convergence seed 45). The visited set
            // only cuts cycles; a refresh that changes nothing writes nothing.
            found.extend(kids.iter().cloned());
            level = kids.into_iter().filter(|d| visited.insert(d.clone())).collect();
        }
        // Linkers of a target written as planned need no refresh if this run wrote
        // them too (they resolved its planned title, see `state::titles`): a full
        // sync of pages linking to one another writes each once. Linkers written
        // before this run, or whose write failed or is unsettled, still do.
        let mut written_here: HashSet<DocumentId> = written.iter().map(|d| (*d).clone()).collect();
        for doc in self.state.failed_of(source, &written).await? {
            written_here.remove(&doc);
        }
        for doc in self.state.unsettled_of(source, &written).await? {
            written_here.remove(&doc);
        }
        let (fresh, other): (Vec<&DocumentId>, Vec<&DocumentId>) =
            link_targets.iter().partition(|d| as_planned.contains(*d));
        let sets: Vec<String> = other.iter().map(|d| keys.linked_from(source, d)).collect();
        found.extend(self.state.union_of(&sets).await?);
        let sets: Vec<String> = fresh.iter().map(|d| keys.linked_from(source, d)).collect();
        found.extend(
            self.state
                .union_of(&sets)
                .await?
                .into_iter()
                .filter(|linker| !written_here.contains(linker)),
        );

        let mut ids: Vec<DocumentId> = found.into_iter().filter(|d| !deleted.contains(d)).collect();
        ids.sort();
        // Their own entries may be stale in the plan's tree (a descendant of a
        // renamed page was not in the feed): read them, and their ancestors, now.
        for id in &ids {
            tree.remove(id);
        }
        ancestry::fill(&self.state, source, ids.clone(), &mut tree, &deleted).await?;
        let items = ids
            .into_iter()
            .map(|id| {
                let (title, parent) = tree.get(&id).cloned().unwrap_or_default();
                JobItem {
                    breadcrumb: ancestry::breadcrumb(&id, &tree),
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
}
