//! What a run does, decided before any job exists: the feed read into a
//! [`Plan`] of upserts and deletions, with breadcrumbs.
//!
//! Invariants:
//! - de-duplication by version: an observation whose version, title and parent
//!   equal what we hold is dropped (overlap windows and repeated listings cost nothing);
//! - mark and sweep in bounded memory: only a complete listing may delete by
//!   id comparison, and the comparison runs in Redis ([`crate::state::sweep`]);
//! - a cursor the source rejects falls back to a full listing, noted in the run;
//! - the deletion guard holds back a plan that would delete more than the
//!   source's `max_delete_share` unless a request confirmed it;
//! - reconciliation turns an incremental request into a full run when due.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, Error};
use crate::ancestry::{self, Tree};
use crate::config::SourcePolicy;
use crate::hooks::Point;
use crate::queue::jobs::{Action, JobItem, SyncRequest};
use crate::sources::{self, DocMeta, Observation, Source};
use crate::state::HeldMeta;
use crate::types::{DocumentId, RunId, SourceId, SyncMode};

/// What a run decided to do, before jobs are enqueued.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) items: Vec<JobItem>,
    pub(super) unchanged: u64,
    pub(super) note: Vec<String>,
    /// Title and parent of the documents this plan touches and of their
    /// ancestors, as known after the feed (what it reported over what we hold),
    /// for breadcrumbs. Proportional to the changes, not to the source.
    pub(super) tree: Tree,
    /// What we held before the run for every document the plan changes or deletes.
    pub(super) before: HashMap<DocumentId, HeldMeta>,
    /// Folders renamed or moved in this run (`ChangeFeed::changed_folders`):
    /// the documents under them are dependents.
    pub(super) changed_folders: Vec<DocumentId>,
}

impl Plan {
    /// The title this plan expects each document it upserts to have: what the
    /// feed reported, else what we hold. A document known by id only (a
    /// targeted run's new document) has none.
    pub(super) fn planned_titles(&self) -> Vec<(&DocumentId, &str)> {
        self.items
            .iter()
            .filter(|i| i.action == Action::Upsert)
            .filter_map(|i| self.tree.get(&i.meta.id).map(|(title, _)| (&i.meta.id, title.as_str())))
            .collect()
    }
}

/// The documents a set of requests targets: their union if every request is
/// targeted, or none (the whole source) if any one is not.
pub(super) fn merged_targets(requests: &[SyncRequest]) -> Vec<DocumentId> {
    if requests.iter().any(|r| r.targets.is_empty()) {
        return Vec::new();
    }
    let mut all: Vec<DocumentId> = requests.iter().flat_map(|r| r.targets.iter().cloned()).collect();
    all.sort();
    all.dedup();
    all
}

/// The mode a run actually uses: an incremental request becomes a full run when
/// periodic reconciliation is due. Returns the mode and, if it changed, why.
pub fn effective_mode(
    requested: SyncMode,
    checkpoint: &sources::Checkpoint,
    policy: &SourcePolicy,
    now: chrono::DateTime<Utc>,
) -> (SyncMode, Option<String>) {
    if requested == SyncMode::Full {
        return (SyncMode::Full, None);
    }
    if let Some(n) = policy.reconcile_every_runs
        && checkpoint.runs_since_full.saturating_add(1) >= n
    {
        return (SyncMode::Full, Some(format!("periodic reconciliation: every {n} runs")));
    }
    if let (Some(every), Some(last)) = (policy.reconcile_every, checkpoint.last_full_at)
        && chrono::Duration::from_std(every).is_ok_and(|every| now - last >= every)
    {
        return (
            SyncMode::Full,
            Some(format!("periodic reconciliation: last full run at {last}")),
        );
    }
    (SyncMode::Incremental, None)
}

/// An upsert of a document named without a feed observation (by a webhook, or
/// unsettled): fetched again, with what we hold as the hint; a document the
/// source no longer has becomes a deletion in the worker.
fn named_item(id: &DocumentId, held: Option<&HeldMeta>) -> JobItem {
    JobItem {
        meta: DocMeta {
            id: id.clone(),
            version: held.map(|h| h.version.clone()).unwrap_or_default(),
            title: held.map(|h| h.title.clone()).unwrap_or_default(),
            parent: held.and_then(|h| h.parent.clone()),
            modified_at: None,
            ..DocMeta::default()
        },
        action: Action::Upsert,
        breadcrumb: Vec::new(),
    }
}

/// A plan for named documents only.
pub(super) fn targeted_plan(targets: &[DocumentId], before: HashMap<DocumentId, HeldMeta>) -> Plan {
    let items = targets.iter().map(|id| named_item(id, before.get(id))).collect();
    Plan {
        items,
        note: vec![format!("targeted: {} document(s) named by a webhook", targets.len())],
        tree: before
            .iter()
            .map(|(k, v)| (k.clone(), (v.title.clone(), v.parent.clone())))
            .collect(),
        before,
        ..Plan::default()
    }
}

/// The deletion guard: a listing that comes back empty after an outage or a lost
/// permission must not wipe the knowledge base. If the plan deletes more than
/// `max_delete_share` of the `held` documents and the request did not confirm,
/// the deletions are taken out of the plan (the rest still runs) and the refusal
/// is returned, to be recorded and to keep the checkpoint where it is.
pub(super) fn deletion_guard(plan: &mut Plan, held: usize, policy: &SourcePolicy, confirmed: bool) -> Option<String> {
    let deletions = plan.items.iter().filter(|i| i.action == Action::Delete).count();
    if deletions == 0 || confirmed || held == 0 || (deletions as f64) <= policy.max_delete_share * held as f64 {
        return None;
    }
    plan.items.retain(|i| i.action != Action::Delete);
    let refusal = format!(
        "deletion guard: {deletions} of {held} documents ({:.0}%) would be deleted, above max_delete_share {:.0}%; \
         nothing was deleted. If this is right, re-run with --allow-mass-delete (API: \"allow_mass_delete\": true)",
        100.0 * deletions as f64 / held as f64,
        100.0 * policy.max_delete_share
    );
    plan.note.push(refusal.clone());
    Some(refusal)
}

impl Coordinator {
    /// Adds the source's unsettled documents (written to the sink, or about to
    /// be, without the state recording it: see [`crate::state::docs`]) and its
    /// failed ones ([`crate::state::failures`]) that the plan does not already
    /// touch, as named upserts. This is what makes a sink
    /// write lost between sink and state (a dead worker, a superseded run)
    /// repaired by the next run rather than trusted away by the skip check.
    pub(super) async fn include_unsettled(
        &self,
        source: &SourceId,
        plan: &mut Plan,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let unsettled = self
            .redis(lost, "reading unsettled documents", || self.state.unsettled(source))
            .await?;
        let failed = self
            .redis(lost, "reading failed documents", || self.state.failures(source))
            .await?;
        let planned: HashSet<&DocumentId> = plan.items.iter().map(|i| &i.meta.id).collect();
        let mut extra: Vec<&DocumentId> = unsettled
            .keys()
            .chain(failed.keys())
            .filter(|id| !planned.contains(id))
            .collect();
        extra.sort();
        extra.dedup();
        if extra.is_empty() {
            return Ok(());
        }
        let held = self
            .redis(lost, "reading held documents", || {
                self.state.held_meta_of(source, &extra)
            })
            .await?;
        for (id, h) in extra.iter().zip(held) {
            plan.items.push(named_item(id, h.as_ref()));
            if let Some(h) = h {
                plan.tree.insert((*id).clone(), (h.title.clone(), h.parent.clone()));
                plan.before.insert((*id).clone(), h);
            }
        }
        plan.note.push(format!(
            "{} document(s) redone: failed before, or left unsettled by an interrupted page",
            extra.len()
        ));
        Ok(())
    }

    /// Adds the held children of documents a feed of changes deleted: parts
    /// of them (`Source::dies_with_parent`: a page's attachments) as deletions,
    /// the others as upserts. Such a feed says a document went, not where the
    /// source put its children (Confluence moves child pages up to its parent
    /// without a new version, so a search of changes never reports them).
    /// Fetching them learns their parent; one that went too is found missing
    /// and deleted.
    async fn adopt_orphans(
        &self,
        id: &SourceId,
        source: &dyn Source,
        deleted: &mut HashSet<DocumentId>,
        changed: &mut HashMap<DocumentId, DocMeta>,
        plan: &mut Plan,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let sets: Vec<String> = deleted.iter().map(|d| self.keys.children(id, d)).collect();
        let mut kids = self
            .redis(lost, "reading children of deleted documents", || {
                self.state.union_of(&sets)
            })
            .await?;
        kids.retain(|k| !deleted.contains(k) && !changed.contains_key(k));
        kids.sort();
        if kids.is_empty() {
            return Ok(());
        }
        let refs: Vec<&DocumentId> = kids.iter().collect();
        let held = self
            .redis(lost, "reading children of deleted documents", || {
                self.state.held_meta_of(id, &refs)
            })
            .await?;
        let (mut parts, mut moved) = (0usize, 0usize);
        for (kid, h) in kids.iter().zip(held) {
            let Some(h) = h else { continue };
            if source.dies_with_parent(kid) {
                parts += 1;
                deleted.insert(kid.clone());
            } else {
                moved += 1;
                plan.tree.insert(kid.clone(), (h.title.clone(), h.parent.clone()));
                changed.insert(kid.clone(), named_item(kid, Some(&h)).meta);
            }
            plan.before.insert(kid.clone(), h);
        }
        if parts > 0 {
            plan.note.push(format!(
                "{parts} part(s) of deleted documents (attachments) deleted with them"
            ));
        }
        if moved > 0 {
            plan.note.push(format!(
                "{moved} child document(s) of deleted ones fetched again (their parent changed at the source)"
            ));
        }
        Ok(())
    }

    /// Gives every upsert of the plan its breadcrumb, reading missing ancestors from the state.
    pub(super) async fn complete_breadcrumbs(
        &self,
        source: &SourceId,
        plan: &mut Plan,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let gone: HashSet<DocumentId> = plan
            .items
            .iter()
            .filter(|i| i.action == Action::Delete)
            .map(|i| i.meta.id.clone())
            .collect();
        for id in &gone {
            plan.tree.remove(id);
        }
        let upserts: Vec<DocumentId> = plan
            .items
            .iter()
            .filter(|i| i.action == Action::Upsert)
            .map(|i| i.meta.id.clone())
            .collect();
        let mut retrier = self.retrier(lost, "reading ancestors");
        loop {
            // Repeating a partial fill is harmless: it only adds what the state holds.
            match ancestry::fill(&self.state, source, upserts.clone(), &mut plan.tree, &gone).await {
                Ok(()) => break,
                Err(e) => retrier.failed(e).await?,
            }
        }
        for item in plan.items.iter_mut().filter(|i| i.action == Action::Upsert) {
            item.breadcrumb = ancestry::breadcrumb(&item.meta.id, &plan.tree);
        }
        Ok(())
    }

    /// Reads the whole feed and decides what to do: the changed documents and the deletions.
    ///
    /// Mark and sweep in bounded memory: each feed page's ids are compared with
    /// what we hold by one HMGET and marked in the run's seen set in Redis; after
    /// a complete listing, held documents not marked are deletions, found by
    /// scanning in batches. Connectors consult what we hold the same way
    /// ([`sources::HeldVersions`]), so memory is proportional to a page plus the changes.
    pub(super) async fn plan(
        &self,
        source: &dyn Source,
        checkpoint: &sources::Checkpoint,
        mode: SyncMode,
        run: &RunId,
        lost: &CancellationToken,
        calls: &sources::ApiCalls,
    ) -> Result<(Plan, sources::FeedEnd), Error> {
        let id = source.id().clone();
        let src_err = |error| Error::Source {
            source_id: id.clone(),
            error,
        };
        let seen = self.keys.run_seen(&id, run);
        let mut plan = Plan::default();
        let versions: sources::Held = Arc::new(self.state.held_lookup(&id, &seen, self.retry, lost.clone()));
        let mut moves = 0u64;
        let mut feed = match source
            .open_feed(checkpoint, mode, versions.clone(), calls.clone())
            .await
        {
            Err(sources::Error::CursorExpired { context }) => {
                plan.note.push(format!("{context}: fell back to a full listing"));
                source
                    .open_feed(checkpoint, SyncMode::Full, versions.clone(), calls.clone())
                    .await
                    .map_err(src_err)?
            }
            other => other.map_err(src_err)?,
        };

        let mut changed: HashMap<DocumentId, DocMeta> = HashMap::new();
        let mut deleted: HashSet<DocumentId> = HashSet::new();
        let mut feed_pages = 0u32;
        loop {
            if lost.is_cancelled() {
                return Err(Error::LockLost(id));
            }
            let page = match feed.next_page().await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(sources::Error::CursorExpired { context }) => {
                    // Expired mid-feed: start over with a full listing.
                    plan.note.push(format!("{context}: fell back to a full listing"));
                    self.redis(lost, "clearing the seen set", || self.state.clear_seen(&seen))
                        .await?;
                    changed.clear();
                    deleted.clear();
                    plan.before.clear();
                    plan.tree.clear();
                    plan.unchanged = 0;
                    feed = source
                        .open_feed(checkpoint, SyncMode::Full, versions.clone(), calls.clone())
                        .await
                        .map_err(src_err)?;
                    continue;
                }
                Err(e) => return Err(src_err(e)),
            };
            // Everything this page names, looked up at once.
            let named: Vec<&DocumentId> = page
                .observations
                .iter()
                .flat_map(|o| match o {
                    Observation::Present(m) => vec![&m.id],
                    Observation::Deleted(d) => vec![d],
                    Observation::Moved { from, to } => vec![from, &to.id],
                })
                .collect();
            let held_meta = self
                .redis(lost, "reading held documents", || self.state.held_meta_of(&id, &named))
                .await?;
            let held: HashMap<DocumentId, HeldMeta> = named
                .iter()
                .zip(held_meta)
                .filter_map(|(d, m)| m.map(|m| ((*d).clone(), m)))
                .collect();
            let mut mark = Vec::new();
            let mut unmark = Vec::new();
            for obs in &page.observations {
                match obs {
                    Observation::Present(meta) => {
                        mark.push(&meta.id);
                        deleted.remove(&meta.id);
                        let h = held.get(&meta.id);
                        let same_as_held = h.is_some_and(|h| {
                            h.version == meta.version && h.title == meta.title && h.parent == meta.parent
                        });
                        if mode == SyncMode::Incremental && same_as_held {
                            plan.unchanged += 1;
                            changed.remove(&meta.id);
                        } else {
                            if let Some(h) = h {
                                plan.before.insert(meta.id.clone(), h.clone());
                            }
                            plan.tree
                                .insert(meta.id.clone(), (meta.title.clone(), meta.parent.clone()));
                            changed.insert(meta.id.clone(), meta.clone());
                        }
                    }
                    Observation::Moved { from, to } => {
                        moves += 1;
                        changed.remove(from);
                        unmark.push(from);
                        if let Some(h) = held.get(from) {
                            plan.before.insert(from.clone(), h.clone());
                            deleted.insert(from.clone());
                        }
                        mark.push(&to.id);
                        deleted.remove(&to.id);
                        if let Some(h) = held.get(&to.id) {
                            plan.before.insert(to.id.clone(), h.clone());
                        }
                        plan.tree.insert(to.id.clone(), (to.title.clone(), to.parent.clone()));
                        changed.insert(to.id.clone(), to.clone());
                    }
                    Observation::Deleted(doc) => {
                        changed.remove(doc);
                        unmark.push(doc);
                        if let Some(h) = held.get(doc) {
                            plan.before.insert(doc.clone(), h.clone());
                            deleted.insert(doc.clone());
                        }
                    }
                }
            }
            // SADD and SREM: repeating them changes nothing.
            self.redis(lost, "marking seen documents", || {
                self.state.mark_seen(&seen, &mark, &unmark)
            })
            .await?;
            self.hooks.at(&id, run, Point::FeedPage(feed_pages)).await;
            feed_pages += 1;
        }
        let end = feed.end();
        // Directories and the like: not documents, but breadcrumbs pass through them.
        for folder in feed.folders() {
            plan.tree.insert(folder.id, (folder.title, folder.parent));
        }
        plan.changed_folders = feed.changed_folders();
        if !plan.changed_folders.is_empty() {
            plan.note.push(format!(
                "{} folder(s) renamed or moved, or under one",
                plan.changed_folders.len()
            ));
        }
        if moves > 0 {
            plan.note.push(format!("{moves} document(s) moved or renamed"));
        }
        if let Some(note) = &end.note {
            plan.note.push(note.clone());
        }
        if end.complete_listing {
            let mut missing = 0usize;
            let unseen = self
                .redis(lost, "sweeping for unlisted documents", || {
                    self.state.unseen(&id, &seen)
                })
                .await?;
            for (doc, meta) in unseen {
                if !changed.contains_key(&doc) && deleted.insert(doc.clone()) {
                    missing += 1;
                    plan.before.insert(doc, meta);
                }
            }
            if missing > 0 {
                plan.note
                    .push(format!("complete listing: {missing} held document(s) no longer listed"));
            }
        } else if !deleted.is_empty() {
            self.adopt_orphans(&id, source, &mut deleted, &mut changed, &mut plan, lost)
                .await?;
        }
        self.redis(lost, "clearing the seen set", || self.state.clear_seen(&seen))
            .await?;

        let mut changed: Vec<DocMeta> = changed.into_values().collect();
        changed.sort_by(|a, b| a.id.cmp(&b.id));
        plan.items.extend(changed.into_iter().map(|meta| JobItem {
            meta,
            action: Action::Upsert,
            breadcrumb: Vec::new(),
        }));
        let mut deleted: Vec<DocumentId> = deleted.into_iter().collect();
        deleted.sort();
        for doc in deleted {
            let h = plan.before.get(&doc).cloned();
            plan.items.push(JobItem {
                meta: DocMeta {
                    id: doc,
                    version: h.as_ref().map(|h| h.version.clone()).unwrap_or_default(),
                    title: h.as_ref().map(|h| h.title.clone()).unwrap_or_default(),
                    parent: h.and_then(|h| h.parent),
                    modified_at: None,
                    ..DocMeta::default()
                },
                action: Action::Delete,
                breadcrumb: Vec::new(),
            });
        }
        self.include_unsettled(&id, &mut plan, lost).await?;
        self.complete_breadcrumbs(&id, &mut plan, lost).await?;
        Ok((plan, end))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Reconciliation turns an incremental request full every N runs or after T, and says why.
    #[test]
    fn reconciliation_schedule() {
        let now = Utc::now();
        let policy = SourcePolicy {
            reconcile_every_runs: Some(3),
            reconcile_every: Some(Duration::from_secs(3600)),
            ..SourcePolicy::default()
        };
        let cp = |runs, last: Option<chrono::DateTime<Utc>>| sources::Checkpoint {
            runs_since_full: runs,
            last_full_at: last,
            ..Default::default()
        };
        let recent = Some(now - chrono::Duration::minutes(5));
        assert_eq!(
            effective_mode(SyncMode::Incremental, &cp(0, recent), &policy, now).0,
            SyncMode::Incremental
        );
        let (mode, why) = effective_mode(SyncMode::Incremental, &cp(2, recent), &policy, now);
        assert_eq!(mode, SyncMode::Full);
        assert!(why.unwrap().contains("every 3 runs"));
        let old = Some(now - chrono::Duration::hours(2));
        assert_eq!(
            effective_mode(SyncMode::Incremental, &cp(0, old), &policy, now).0,
            SyncMode::Full
        );
        assert_eq!(
            effective_mode(SyncMode::Incremental, &cp(9, None), &SourcePolicy::default(), now).0,
            SyncMode::Incremental
        );
    }

    /// The guard strips deletions above the share unless confirmed, and keeps the rest of the plan.
    #[test]
    fn deletion_guard_thresholds() {
        let item = |id: &str, action| JobItem {
            meta: DocMeta {
                id: id.into(),
                version: "1".into(),
                title: id.into(),
                parent: None,
                modified_at: None,
                ..DocMeta::default()
            },
            action,
            breadcrumb: vec![],
        };
        let plan = || Plan {
            items: vec![
                item("a", Action::Delete),
                item("b", Action::Delete),
                item("c", Action::Upsert),
            ],
            ..Plan::default()
        };
        let policy = SourcePolicy::default();
        let mut p = plan();
        assert!(
            deletion_guard(&mut p, 4, &policy, false).is_none(),
            "2 of 4 is not above 50%"
        );
        let mut p = plan();
        let refusal = deletion_guard(&mut p, 3, &policy, false).expect("2 of 3 is above 50%");
        assert!(refusal.contains("2 of 3"));
        assert_eq!(p.items.len(), 1, "only the upsert remains");
        let mut p = plan();
        assert!(deletion_guard(&mut p, 3, &policy, true).is_none(), "confirmed");
        assert_eq!(p.items.len(), 3);
    }
}
