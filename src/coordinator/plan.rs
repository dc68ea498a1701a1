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
use crate::ancestry::Tree;
use crate::config::SourcePolicy;
use crate::hooks::Point;
use crate::keys::Keys;
use crate::permissions::Permissions;
use crate::queue::jobs::{Action, SyncRequest};
use crate::sources::{self, DocMeta, Observation, Source};
use crate::state::{self, plan as plan_store};
use crate::state::{HeldMeta, PlanEntry, PlanWrite};
use crate::types::{DocumentId, RunId, SourceId, SyncMode};

/// What a run decided to do, in brief: the changes themselves are in the
/// run's plan in Redis ([`crate::state::plan`]), read back a stretch at a
/// time when the pages go out and when dependents are found.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Documents to fetch and write, or to rewrite from the sink's copy
    /// (their permissions changed, nothing else).
    pub(super) upserts: u64,
    /// Of the upserts, documents whose permissions alone changed.
    pub(super) permissions_changed: u64,
    /// Documents to delete.
    pub(super) deletions: u64,
    /// The deletion guard held the deletions back: they are left out of the pages.
    pub(super) deletions_held_back: bool,
    pub(super) unchanged: u64,
    pub(super) note: Vec<String>,
    /// Folders (not documents) breadcrumbs pass through, as the feed reported
    /// them: as many as the source has folders, not documents.
    pub(super) folders: Tree,
    /// Folders renamed or moved in this run (`ChangeFeed::changed_folders`):
    /// the documents under them are dependents.
    pub(super) changed_folders: Vec<DocumentId>,
    /// Batches of writes applied to the plan in Redis (see `state::plan`).
    pub(super) batches: u64,
    /// Ids the plan lists, counted once the plan is complete.
    pub(super) listed: u64,
}

impl Plan {
    /// The run fails rather than page out part of its plan: found `len` ids of the `listed`.
    pub(super) fn lost_entries(&self, keys: &Keys, source: &SourceId, run: &RunId, len: u64) -> Error {
        state::Error::Corrupt {
            key: keys.run_plan_order(source, run),
            reason: format!(
                "the plan lists {len} of its {} documents: Redis lost writes (restarted without its latest data?)",
                self.listed
            ),
        }
        .into()
    }

    /// Documents the run's pages carry.
    pub(super) fn items(&self) -> u64 {
        self.upserts + if self.deletions_held_back { 0 } else { self.deletions }
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
/// unsettled): fetched again, with what we hold as the hint (and who may read
/// it, when the feed said so in an `Access`); a document the source no
/// longer has becomes a deletion in the worker.
fn named_entry(id: &DocumentId, held: Option<HeldMeta>, permissions: Option<Permissions>) -> PlanEntry {
    PlanEntry {
        meta: DocMeta {
            id: id.clone(),
            version: held.as_ref().map(|h| h.version.clone()).unwrap_or_default(),
            title: held.as_ref().map(|h| h.title.clone()).unwrap_or_default(),
            parent: held.as_ref().and_then(|h| h.parent.clone()),
            permissions,
            ..DocMeta::default()
        },
        action: Action::Upsert,
        placed: held.is_some(),
        before: held,
    }
}

/// A deletion of a document we hold.
fn deletion(id: &DocumentId, held: HeldMeta) -> PlanEntry {
    PlanEntry {
        meta: DocMeta {
            id: id.clone(),
            version: held.version.clone(),
            title: held.title.clone(),
            parent: held.parent.clone(),
            ..DocMeta::default()
        },
        action: Action::Delete,
        placed: false,
        before: Some(held),
    }
}

/// An upsert of what the feed reported.
fn reported(meta: &DocMeta, held: Option<&HeldMeta>) -> PlanEntry {
    PlanEntry {
        meta: meta.clone(),
        action: Action::Upsert,
        before: held.cloned(),
        placed: true,
    }
}

/// The deletion guard: a listing that comes back empty after an outage or a lost
/// permission must not wipe the knowledge base. If the plan deletes more than
/// `max_delete_share` of the `held` documents and the request did not confirm,
/// the deletions are taken out of the plan (the rest still runs) and the refusal
/// is returned, to be recorded and to keep the checkpoint where it is.
pub(super) fn deletion_guard(plan: &mut Plan, held: usize, policy: &SourcePolicy, confirmed: bool) -> Option<String> {
    let deletions = plan.deletions;
    if deletions == 0 || confirmed || held == 0 || (deletions as f64) <= policy.max_delete_share * held as f64 {
        return None;
    }
    plan.deletions_held_back = true;
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
    /// Plans the named documents only (a targeted run: webhook targets), then
    /// what `include_unsettled` adds.
    pub(super) async fn targeted_plan(
        &self,
        source: &SourceId,
        run: &RunId,
        targets: &[DocumentId],
        lost: &CancellationToken,
    ) -> Result<Plan, Error> {
        let mut plan = Plan {
            note: vec![format!("targeted: {} document(s) named by a webhook", targets.len())],
            ..Plan::default()
        };
        for chunk in targets.chunks(plan_store::READ_BATCH) {
            let refs: Vec<&DocumentId> = chunk.iter().collect();
            let held = self.held(source, &refs, lost).await?;
            let writes: Vec<PlanWrite> = chunk
                .iter()
                .zip(held)
                .map(|(id, h)| PlanWrite::Put(named_entry(id, h, None)))
                .collect();
            self.write_plan(source, run, &mut plan, &writes, lost).await?;
        }
        self.include_unsettled(source, run, &mut plan, &HashMap::new(), lost)
            .await?;
        self.tally(source, run, &mut plan, lost).await?;
        Ok(plan)
    }

    /// Applies `writes` to the run's plan; returns how many conditional puts took effect.
    async fn write_plan(
        &self,
        source: &SourceId,
        run: &RunId,
        plan: &mut Plan,
        writes: &[PlanWrite],
        lost: &CancellationToken,
    ) -> Result<u64, Error> {
        if writes.is_empty() {
            return Ok(0);
        }
        // Numbered batches: a retry after an unknown outcome applies none twice.
        let after = plan.batches;
        let written = self
            .redis(lost, "writing the plan", || {
                self.state.write_plan(source, run, after, writes)
            })
            .await?;
        plan.batches = written.batches;
        Ok(written.added)
    }

    /// What we hold of `ids` (version, title, parent).
    async fn held(
        &self,
        source: &SourceId,
        ids: &[&DocumentId],
        lost: &CancellationToken,
    ) -> Result<Vec<Option<HeldMeta>>, Error> {
        self.redis(lost, "reading held documents", || self.state.held_meta_of(source, ids))
            .await
    }

    /// A stretch of the run's plan, from position `start`.
    pub(super) async fn plan_stretch(
        &self,
        source: &SourceId,
        run: &RunId,
        start: u64,
        lost: &CancellationToken,
    ) -> Result<Vec<(DocumentId, Option<PlanEntry>)>, Error> {
        self.redis(lost, "reading the plan", || {
            self.state.plan_range(source, run, start, plan_store::READ_BATCH)
        })
        .await
    }

    /// Counts what the plan upserts and deletes, reading it a stretch at a time.
    async fn tally(
        &self,
        source: &SourceId,
        run: &RunId,
        plan: &mut Plan,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let batches = self
            .redis(lost, "reading the plan", || self.state.plan_batches(source, run))
            .await?;
        if batches != plan.batches {
            return Err(self.state.plan_lost(source, run, plan.batches, batches).into());
        }
        let len = self
            .redis(lost, "reading the plan", || self.state.plan_len(source, run))
            .await?;
        plan.listed = len;
        (plan.upserts, plan.deletions) = (0, 0);
        let mut at = 0;
        while at < len {
            let stretch = self.plan_stretch(source, run, at, lost).await?;
            if stretch.is_empty() {
                return Err(plan.lost_entries(&self.keys, source, run, at));
            }
            at += stretch.len() as u64;
            for (_, entry) in stretch {
                match entry.map(|e| e.action) {
                    Some(Action::Upsert | Action::Refresh) => plan.upserts += 1,
                    Some(Action::Delete) => plan.deletions += 1,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The ids the plan deletes (a feed of changes: as many as it reported gone).
    async fn planned_deletions(
        &self,
        source: &SourceId,
        run: &RunId,
        lost: &CancellationToken,
    ) -> Result<HashSet<DocumentId>, Error> {
        let mut deleted = HashSet::new();
        let mut at = 0;
        loop {
            let stretch = self.plan_stretch(source, run, at, lost).await?;
            if stretch.is_empty() {
                return Ok(deleted);
            }
            at += stretch.len() as u64;
            deleted.extend(
                stretch
                    .into_iter()
                    .filter(|(_, e)| e.as_ref().is_some_and(|e| e.action == Action::Delete))
                    .map(|(id, _)| id),
            );
        }
    }

    /// Adds the source's unsettled documents (written to the sink, or about to
    /// be, without the state recording it: see [`crate::state::docs`]) and its
    /// failed ones ([`crate::state::failures`]) that the plan does not already
    /// touch, as named upserts. This is what makes a sink
    /// write lost between sink and state (a dead worker, a superseded run)
    /// repaired by the next run rather than trusted away by the skip check.
    async fn include_unsettled(
        &self,
        source: &SourceId,
        run: &RunId,
        plan: &mut Plan,
        announced: &HashMap<DocumentId, Permissions>,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let extra = self.to_redo(source, lost).await?;
        let mut added = 0;
        for chunk in extra.chunks(plan_store::READ_BATCH) {
            let refs: Vec<&DocumentId> = chunk.iter().collect();
            let held = self.held(source, &refs, lost).await?;
            let writes: Vec<PlanWrite> = chunk
                .iter()
                .zip(held)
                .map(|(id, h)| PlanWrite::PutIfAbsent(named_entry(id, h, announced.get(id).cloned())))
                .collect();
            added += self.write_plan(source, run, plan, &writes, lost).await?;
        }
        if added > 0 {
            plan.note.push(format!(
                "{added} document(s) redone: failed before, or left unsettled by an interrupted page"
            ));
        }
        Ok(())
    }

    /// The source's unsettled and failed documents, sorted: every run redoes them.
    async fn to_redo(&self, source: &SourceId, lost: &CancellationToken) -> Result<Vec<DocumentId>, Error> {
        let unsettled = self
            .redis(lost, "reading unsettled documents", || self.state.unsettled(source))
            .await?;
        let failed = self
            .redis(lost, "reading failed documents", || self.state.failures(source))
            .await?;
        let mut extra: Vec<DocumentId> = unsettled.into_keys().chain(failed.into_keys()).collect();
        extra.sort();
        extra.dedup();
        Ok(extra)
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
        run: &RunId,
        source: &dyn Source,
        plan: &mut Plan,
        lost: &CancellationToken,
    ) -> Result<(), Error> {
        let deleted = self.planned_deletions(id, run, lost).await?;
        let sets: Vec<String> = deleted.iter().map(|d| self.keys.children(id, d)).collect();
        let mut kids = self
            .redis(lost, "reading children of deleted documents", || {
                self.state.union_of(&sets)
            })
            .await?;
        kids.retain(|k| !deleted.contains(k));
        kids.sort();
        let (mut parts, mut moved) = (0u64, 0u64);
        for chunk in kids.chunks(plan_store::READ_BATCH) {
            let refs: Vec<&DocumentId> = chunk.iter().collect();
            let held = self.held(id, &refs, lost).await?;
            let planned = self
                .redis(lost, "reading the plan", || self.state.planned_of(id, run, &refs))
                .await?;
            let mut writes = Vec::new();
            for ((kid, h), planned) in chunk.iter().zip(held).zip(planned) {
                let Some(h) = h else { continue };
                // Already planned (the feed changed it too): that stands, but
                // for a rewrite for new readers only, which is fetched instead
                // (its parent changed), with those readers.
                let (write, permissions): (fn(PlanEntry) -> PlanWrite, _) = match planned {
                    None => (PlanWrite::PutIfAbsent, None),
                    Some(e) if e.action == Action::Refresh => (PlanWrite::Put, e.meta.permissions),
                    Some(_) => continue,
                };
                if source.dies_with_parent(kid) {
                    parts += 1;
                    writes.push(write(deletion(kid, h)));
                } else {
                    moved += 1;
                    writes.push(write(named_entry(kid, Some(h), permissions)));
                }
            }
            self.write_plan(id, run, plan, &writes, lost).await?;
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

    /// Reads the whole feed and plans what to do: the changed documents and the
    /// deletions, written to the run's plan in Redis a feed page at a time.
    ///
    /// Mark and sweep in bounded memory: each feed page's ids are compared with
    /// what we hold by one HMGET and marked in the run's seen set in Redis; after
    /// a complete listing, held documents not marked are deletions, found by
    /// scanning in batches. Connectors consult what we hold the same way
    /// ([`sources::HeldVersions`]), so memory is proportional to a page, not to the source.
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

        // Documents every run redoes (unsettled, failed): what an `Access`
        // says of them is kept for their named entries, which have no other
        // observation to carry it (a handful; everything else is streamed).
        let redo: HashSet<DocumentId> = self.to_redo(&id, lost).await?.into_iter().collect();
        let mut redo_permissions: HashMap<DocumentId, Permissions> = HashMap::new();
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
                    self.redis(lost, "clearing the plan", || self.state.clear_plan(&id, run))
                        .await?;
                    plan.unchanged = 0;
                    plan.permissions_changed = 0;
                    plan.batches = 0;
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
                    Observation::Deleted(d) | Observation::Access { id: d, .. } => vec![d],
                    Observation::Moved { from, to } => vec![from, &to.id],
                })
                .collect();
            let held_meta = self.held(&id, &named, lost).await?;
            let held: HashMap<DocumentId, HeldMeta> = named
                .iter()
                .zip(held_meta)
                .filter_map(|(d, m)| m.map(|m| ((*d).clone(), m)))
                .collect();
            let mut mark = Vec::new();
            let mut unmark = Vec::new();
            // In feed order: a later observation of a document replaces an earlier one.
            let mut writes = Vec::new();
            let gone = |doc: &DocumentId| match held.get(doc) {
                Some(h) => PlanWrite::Put(deletion(doc, h.clone())),
                None => PlanWrite::Drop(doc.clone()),
            };
            for obs in &page.observations {
                match obs {
                    Observation::Present(meta) => {
                        mark.push(&meta.id);
                        let h = held.get(&meta.id);
                        let same_as_held = h.is_some_and(|h| {
                            h.version == meta.version && h.title == meta.title && h.parent == meta.parent
                        });
                        // Who may read changed, nothing else: rewritten from the sink's copy.
                        // (Fingerprinted only then: anything else is fetched and written anyway.)
                        let access_changed = || {
                            h.is_some_and(|h| {
                                meta.permissions
                                    .as_ref()
                                    .is_some_and(|p| h.access.as_deref() != Some(p.fingerprint().as_str()))
                            })
                        };
                        let incremental_and_same = mode == SyncMode::Incremental && same_as_held;
                        if incremental_and_same && !access_changed() {
                            plan.unchanged += 1;
                            writes.push(PlanWrite::Drop(meta.id.clone()));
                        } else if incremental_and_same {
                            plan.permissions_changed += 1;
                            writes.push(PlanWrite::Put(PlanEntry {
                                action: Action::Refresh,
                                ..reported(meta, h)
                            }));
                        } else {
                            writes.push(PlanWrite::Put(reported(meta, h)));
                        }
                    }
                    Observation::Moved { from, to } => {
                        moves += 1;
                        unmark.push(from);
                        writes.push(gone(from));
                        mark.push(&to.id);
                        writes.push(PlanWrite::Put(reported(to, held.get(&to.id))));
                    }
                    Observation::Deleted(doc) => {
                        unmark.push(doc);
                        writes.push(gone(doc));
                    }
                    // Not a listing: nothing is marked. A document not held is
                    // written when its listing or search reports it; a full
                    // run rewrites everything it lists anyway.
                    Observation::Access { id: doc, permissions } => {
                        if redo.contains(doc) {
                            redo_permissions.insert(doc.clone(), permissions.clone());
                        }
                        let Some(h) = held.get(doc) else { continue };
                        if mode != SyncMode::Incremental
                            || h.access.as_deref() == Some(permissions.fingerprint().as_str())
                        {
                            continue;
                        }
                        plan.permissions_changed += 1;
                        writes.push(PlanWrite::Put(PlanEntry {
                            meta: DocMeta {
                                id: doc.clone(),
                                version: h.version.clone(),
                                title: h.title.clone(),
                                parent: h.parent.clone(),
                                permissions: Some(permissions.clone()),
                                ..DocMeta::default()
                            },
                            action: Action::Refresh,
                            before: Some(h.clone()),
                            placed: true,
                        }));
                    }
                }
            }
            self.write_plan(&id, run, &mut plan, &writes, lost).await?;
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
            plan.folders.insert(folder.id, (folder.title, folder.parent));
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
        if plan.permissions_changed > 0 {
            plan.note.push(format!(
                "{} document(s) with new permissions only: rewritten without fetching",
                plan.permissions_changed
            ));
        }
        if let Some(note) = &end.note {
            plan.note.push(note.clone());
        }
        if end.complete_listing {
            let mut missing = 0u64;
            let mut cursor = 0u64;
            loop {
                let (next, unseen) = self
                    .redis(lost, "sweeping for unlisted documents", || {
                        self.state.unseen_batch(&id, &seen, cursor)
                    })
                    .await?;
                // Planned already (reported deleted, or moved away): that stands.
                let writes: Vec<PlanWrite> = unseen
                    .into_iter()
                    .map(|(doc, meta)| PlanWrite::PutIfAbsent(deletion(&doc, meta)))
                    .collect();
                missing += self.write_plan(&id, run, &mut plan, &writes, lost).await?;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            if missing > 0 {
                plan.note
                    .push(format!("complete listing: {missing} held document(s) no longer listed"));
            }
        } else {
            self.adopt_orphans(&id, run, source, &mut plan, lost).await?;
        }
        self.redis(lost, "clearing the seen set", || self.state.clear_seen(&seen))
            .await?;
        self.include_unsettled(&id, run, &mut plan, &redo_permissions, lost)
            .await?;
        self.tally(&id, run, &mut plan, lost).await?;
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

    /// The guard holds deletions above the share back unless confirmed, and keeps the rest of the plan.
    #[test]
    fn deletion_guard_thresholds() {
        let plan = || Plan {
            upserts: 1,
            deletions: 2,
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
        assert_eq!(p.items(), 1, "only the upsert remains");
        let mut p = plan();
        assert!(deletion_guard(&mut p, 3, &policy, true).is_none(), "confirmed");
        assert_eq!(p.items(), 3);
    }
}
