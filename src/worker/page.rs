//! One page applied: fetch, skip what we hold, mark unsettled, write the sink,
//! record the state; documents that fail alone are recorded and the rest goes on.
//!
//! Invariants: nothing reaches the sink before its document is marked
//! unsettled, and nothing is recorded in the state that the sink refused; a
//! page is either applied (some documents perhaps failed alone, each recorded)
//! or returns an error that leaves its entry for redelivery or the dead letters.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::{JobError, Worker};
use crate::ancestry::{self, Tree};
use crate::lock::fencing::StaleFence;
use crate::permissions::Permissions;
use crate::queue::dlq;
use crate::queue::jobs::{Action, PageJob};
use crate::sinks::{self, About, Change, Link, SCHEMA_VERSION, SinkDocument, Written};
use crate::sources::{self, Source};
use crate::state::{ChildrenIndex, DocFailure, DocState, DocWrite, PageStats, RunUpdate};
use crate::telemetry::DeadLetterOrigin;
use crate::types::DocumentId;

/// A document of a page that failed on its own.
struct Failure {
    id: DocumentId,
    retryable: bool,
    reason: String,
}

impl Failure {
    fn new(id: DocumentId, retryable: bool, reason: String) -> Self {
        Self { id, retryable, reason }
    }
}

/// One sink write a page decided on, made after its documents are marked unsettled.
enum SinkOp {
    /// A fetched document, new or changed.
    Upsert(SinkDocument),
    /// A held document whose breadcrumb or link titles changed.
    Refresh(SinkDocument),
    /// A held document whose permissions changed, nothing else (the feed said).
    Permissions(SinkDocument),
    /// A document the source no longer has.
    Delete(DocumentId),
}

impl SinkOp {
    fn id(&self) -> &DocumentId {
        match self {
            SinkOp::Upsert(d) | SinkOp::Refresh(d) | SinkOp::Permissions(d) => &d.id,
            SinkOp::Delete(id) => id,
        }
    }
}

/// SHA-256 over what the sink receives besides the version, so a change in any
/// of it is a change: the skip check and the sink's own idempotence compare
/// version and this hash only.
///
/// The parent is in it because a source may move a document without a new
/// version (Confluence moves a deleted page's children up). Without it, such a
/// child, once refreshed by a run that saw the deletion but not the move, was
/// planned by every later run (the coordinator compares parents) and skipped by
/// the worker and the sink: the dead parent stayed in the sink for good
/// (issue 8, convergence seed 334; `races::children_moved_up_by_a_deletion_racing_a_sync`).
/// [`About`] is in it so a new URL, media type or note is written even when
/// the text is the same, and the permissions so a change of who may read is.
pub fn content_hash(
    title: &str,
    parent: Option<&DocumentId>,
    breadcrumb: &[String],
    content: &str,
    links: &[Link],
    about: &About,
    permissions: &Permissions,
) -> String {
    let mut h = Sha256::new();
    h.update(title.as_bytes());
    h.update([0u8]);
    if let Some(p) = parent {
        h.update([3u8]);
        h.update(p.0.as_bytes());
    }
    h.update([0u8]);
    for b in breadcrumb {
        h.update(b.as_bytes());
        h.update([1u8]);
    }
    h.update([0u8]);
    h.update(content.as_bytes());
    for l in links {
        h.update([2u8]);
        h.update(l.target.0.as_bytes());
        h.update([1u8]);
        if let Some(t) = &l.title {
            h.update(t.as_bytes());
        }
    }
    h.update([4u8]);
    h.update(serde_json::to_vec(about).unwrap_or_default());
    h.update([5u8]);
    h.update(serde_json::to_vec(permissions).unwrap_or_default());
    hex::encode(h.finalize())
}

impl Worker {
    /// Records documents that failed on their own: in the state (every later
    /// run retries them), in the dead-letter stream (for operators) and as the
    /// run's last error. The rest of their page has been applied.
    async fn record_failures(&self, job: &PageJob, failures: &[Failure]) -> Result<(), JobError> {
        let now = Utc::now();
        let records: Vec<(DocumentId, DocFailure)> = failures
            .iter()
            .map(|f| {
                let failure = DocFailure {
                    reason: f.reason.clone(),
                    retryable: f.retryable,
                    run: job.run.clone(),
                    at: now,
                };
                (f.id.clone(), failure)
            })
            .collect();
        self.state.record_failures(&job.source, job.token, &records).await?;
        for f in failures {
            tracing::warn!(source = %job.source, run = %job.run, page = job.page, document = %f.id, retryable = f.retryable, reason = %f.reason, "document failed; the rest of its page is applied");
            let failed = dlq::FailedDocument {
                source: &job.source,
                run: &job.run,
                page: job.page,
                document: &f.id,
                reason: &f.reason,
                retryable: f.retryable,
            };
            match dlq::document_failed(&self.pool, &self.keys.dead_letters(), &failed).await {
                Ok(_) => self.telemetry.dead_lettered(DeadLetterOrigin::Document, 1),
                Err(e) => tracing::warn!(error = %e, document = %f.id, "could not dead-letter the failed document"),
            }
        }
        let last = &failures[failures.len() - 1];
        let _ = self
            .state
            .update_run(
                &job.source,
                &job.run,
                job.token,
                &RunUpdate::error(format!("document {}: {}", last.id, last.reason)),
            )
            .await;
        Ok(())
    }

    /// Applies a page to the sink and the state. Idempotent.
    pub async fn apply(
        &self,
        job: &PageJob,
        source: &dyn Source,
        calls: &sources::ApiCalls,
    ) -> Result<PageStats, JobError> {
        let sink = self
            .sinks
            .sink(&job.source)
            .ok_or_else(|| JobError::Permanent(format!("source {} feeds no configured sink", job.source)))?;
        let mut stats = PageStats::default();
        let mut failures: Vec<Failure> = Vec::new();
        let of = |action: Action| job.items.iter().filter(move |i| i.action == action);
        let mut deletes: Vec<DocumentId> = of(Action::Delete).map(|i| i.meta.id.clone()).collect();
        let breadcrumbs: HashMap<&DocumentId, &Vec<String>> =
            job.items.iter().map(|i| (&i.meta.id, &i.breadcrumb)).collect();
        // Who may read, as the feed reported it (a fetch that says so wins).
        let announced_permissions: HashMap<&DocumentId, &Permissions> = job
            .items
            .iter()
            .filter_map(|i| i.meta.permissions.as_ref().map(|p| (&i.meta.id, p)))
            .collect();

        // Unsettled and failed documents may differ in the sink from what the
        // state says: the skip check must not trust the state for them, and
        // one to refresh is fetched instead (the sink's copy may be a dead
        // run's, or missing).
        let checked: Vec<&DocumentId> = job
            .items
            .iter()
            .filter(|i| i.action != Action::Delete)
            .map(|i| &i.meta.id)
            .collect();
        let mut unsettled = self.state.unsettled_of(&job.source, &checked).await?;
        unsettled.extend(self.state.failed_of(&job.source, &checked).await?);
        // A sink that keeps no copy (a webhook) cannot rewrite a document from
        // what it holds: a document to refresh is fetched again instead.
        let refetch = |id: &DocumentId| !sink.reads_back() || unsettled.contains(id);
        let metas: Vec<_> = job
            .items
            .iter()
            .filter(|i| i.action == Action::Upsert || (i.action == Action::Refresh && refetch(&i.meta.id)))
            .map(|i| i.meta.clone())
            .collect();
        let fetched = if metas.is_empty() {
            Vec::new()
        } else {
            // A job of a superseded run would be refused at its first write
            // anyway; checking first spares the source the fetches (its quota
            // is shared). A page with nothing to fetch skips the round trip.
            let current = self.state.current_fence(&job.source).await?;
            if current > job.token {
                return Err(JobError::Stale(StaleFence {
                    ours: job.token,
                    current,
                }));
            }
            let fetched = {
                let _fetching = self.fetching.acquire().await.expect("the semaphore is never closed");
                source.fetch(&metas, calls).await
            };
            stats.api_calls = calls.get();
            let fetched = fetched?;
            // Deleted between the feed and the fetch: a deletion, not an error.
            deletes.extend(fetched.missing);
            for (id, e) in fetched.failed {
                failures.push(Failure::new(id, e.is_retryable(), format!("fetch: {e}")));
            }
            fetched.docs
        };

        // Before any write: the run's other pages and its dependents resolve
        // links to these from what was fetched, not from what the feed said.
        let seen: Vec<(&DocumentId, &str)> = fetched.iter().map(|d| (&d.meta.id, d.meta.title.as_str())).collect();
        let gone: Vec<&DocumentId> = deletes.iter().collect();
        self.state
            .correct_planned_titles(&job.source, &job.run, &seen, &gone)
            .await?;

        // What we hold for everything this page touches, and the titles of
        // everything it links to: this page's own fetches first, then the
        // run's planned titles, then what the state holds.
        let refreshes: Vec<&DocumentId> = of(Action::Refresh)
            .filter(|i| !refetch(&i.meta.id))
            .map(|i| &i.meta.id)
            .collect();
        let touched: Vec<&DocumentId> = fetched
            .iter()
            .map(|d| &d.meta.id)
            .chain(deletes.iter())
            .chain(refreshes.iter().copied())
            .collect();
        let held: HashMap<DocumentId, DocState> = touched
            .iter()
            .zip(self.state.docs(&job.source, &touched).await?)
            .filter_map(|(id, st)| st.map(|st| ((*id).clone(), st)))
            .collect();
        let mut titles: HashMap<DocumentId, Option<String>> = HashMap::new();
        let wanted: Vec<&DocumentId> = fetched
            .iter()
            .flat_map(|d| d.links.iter())
            .chain(
                refreshes
                    .iter()
                    .filter_map(|id| held.get(*id))
                    .flat_map(|h| h.links.iter()),
            )
            .collect();
        for (id, st) in wanted.iter().zip(self.state.docs(&job.source, &wanted).await?) {
            titles.insert((*id).clone(), st.map(|s| s.title));
        }
        // Documents this run writes, wherever their page is: the titles its feed
        // announced (see `state::titles`), so a link to one created or renamed
        // by a later page is right at this first write.
        // (Which titles came from the plan: another page of the run may write
        // one of them first, with a newer title; see `StateStore::apply_docs`.)
        let mut from_plan: HashSet<DocumentId> = HashSet::new();
        for (id, planned) in wanted
            .iter()
            .zip(self.state.planned_titles(&job.source, &job.run, &wanted).await?)
        {
            if let Some(title) = planned {
                titles.insert((*id).clone(), Some(title));
                from_plan.insert((*id).clone());
            }
        }
        for d in &fetched {
            titles.insert(d.meta.id.clone(), Some(d.meta.title.clone()));
            from_plan.remove(&d.meta.id);
        }
        for id in &deletes {
            titles.insert(id.clone(), None);
            from_plan.remove(id);
        }
        let resolve = |links: &[DocumentId]| -> Vec<Link> {
            links
                .iter()
                .map(|t| Link {
                    target: t.clone(),
                    title: titles.get(t).cloned().flatten(),
                })
                .collect()
        };

        let announced_parents: HashMap<&DocumentId, &Option<DocumentId>> =
            job.items.iter().map(|i| (&i.meta.id, &i.meta.parent)).collect();
        let mut ops: Vec<SinkOp> = Vec::new();
        let mut writes: Vec<DocWrite> = Vec::new();
        // Titles and parents for breadcrumbs rebuilt below: this page's fetches
        // first, completed from the state as needed.
        let mut tree: Option<Tree> = None;
        for doc in &fetched {
            let mut breadcrumb = breadcrumbs.get(&doc.meta.id).map(|b| (*b).clone()).unwrap_or_default();
            if announced_parents
                .get(&doc.meta.id)
                .is_none_or(|p| **p != doc.meta.parent)
            {
                // Moved since the job was planned (or targeted without a hint):
                // the planned breadcrumb is stale, rebuild it from the state.
                let tree = tree.get_or_insert_with(|| {
                    fetched
                        .iter()
                        .map(|d| (d.meta.id.clone(), (d.meta.title.clone(), d.meta.parent.clone())))
                        .collect()
                });
                ancestry::fill(
                    &self.state,
                    &job.source,
                    vec![doc.meta.id.clone()],
                    tree,
                    &HashSet::new(),
                )
                .await?;
                breadcrumb = ancestry::breadcrumb(&doc.meta.id, tree);
            }
            let links = resolve(&doc.links);
            let about = About {
                url: doc.meta.url.clone(),
                mime_type: doc.meta.mime_type.clone(),
                modified_at: doc.meta.modified_at,
                size_bytes: doc.meta.size,
                source_sha256: doc.source_sha256.clone(),
                content_note: doc.content_note.clone(),
                raw_html: doc.raw_html.clone(),
            };
            // Neither the fetch nor the feed said: what the sink holds stands
            // (a document named by a webhook), else nobody, never everybody.
            let permissions = match doc
                .meta
                .permissions
                .clone()
                .or_else(|| announced_permissions.get(&doc.meta.id).map(|p| (*p).clone()))
            {
                Some(p) => p,
                None if sink.reads_back() && held.contains_key(&doc.meta.id) => sink
                    .get(&job.source, &doc.meta.id)
                    .await?
                    .map(|held| held.permissions)
                    .unwrap_or_default(),
                None => Permissions::default(),
            };
            let hash = content_hash(
                &doc.meta.title,
                doc.meta.parent.as_ref(),
                &breadcrumb,
                &doc.content,
                &links,
                &about,
                &permissions,
            );
            let old = held.get(&doc.meta.id);
            if !unsettled.contains(&doc.meta.id) && old.is_some_and(|h| h.version == doc.meta.version && h.wrote(&hash))
            {
                stats.skipped += 1;
                continue;
            }
            let access = permissions.fingerprint();
            ops.push(SinkOp::Upsert(SinkDocument {
                schema_version: SCHEMA_VERSION,
                source: job.source.clone(),
                id: doc.meta.id.clone(),
                title: doc.meta.title.clone(),
                breadcrumb: breadcrumb.clone(),
                parent: doc.meta.parent.clone(),
                version: doc.meta.version.clone(),
                content: doc.content.clone(),
                about,
                permissions,
                content_hash: hash.clone(),
                fencing_token: job.token,
                links,
            }));
            writes.push(DocWrite::Put {
                id: doc.meta.id.clone(),
                new: DocState {
                    version: doc.meta.version.clone(),
                    content_hash: hash,
                    title: doc.meta.title.clone(),
                    parent: doc.meta.parent.clone(),
                    links: doc.links.clone(),
                    access: Some(access),
                },
                old: old.cloned(),
            });
        }

        for id in refreshes {
            // Gone since the run planned it, or never synced: nothing depends on it here.
            let (Some(old), Some(mut doc)) = (held.get(id), sink.get(&job.source, id).await?) else {
                stats.skipped += 1;
                continue;
            };
            let breadcrumb = breadcrumbs.get(id).map(|b| (*b).clone()).unwrap_or_default();
            let links = resolve(&old.links);
            // A change of permissions alone is a refresh too: the feed said who may read.
            let new_permissions = announced_permissions.get(id).map(|p| (*p).clone());
            let reauthorized = new_permissions.as_ref().is_some_and(|p| *p != doc.permissions);
            if let Some(permissions) = new_permissions {
                doc.permissions = permissions;
            }
            let hash = content_hash(
                &old.title,
                doc.parent.as_ref(),
                &breadcrumb,
                &doc.content,
                &links,
                &doc.about,
                &doc.permissions,
            );
            if !unsettled.contains(id) && doc.breadcrumb == breadcrumb && doc.links == links && old.wrote(&hash) {
                stats.skipped += 1;
                continue;
            }
            doc.schema_version = SCHEMA_VERSION;
            doc.breadcrumb = breadcrumb.clone();
            doc.links = links;
            doc.content_hash = hash.clone();
            doc.fencing_token = job.token;
            let access = Some(doc.permissions.fingerprint());
            ops.push(if reauthorized {
                SinkOp::Permissions(doc)
            } else {
                SinkOp::Refresh(doc)
            });
            writes.push(DocWrite::Put {
                id: id.clone(),
                new: DocState {
                    content_hash: hash,
                    access,
                    ..old.clone()
                },
                old: Some(old.clone()),
            });
        }

        for id in &deletes {
            ops.push(SinkOp::Delete(id.clone()));
            writes.push(DocWrite::Delete {
                id: id.clone(),
                old: held.get(id).cloned(),
            });
        }
        if writes.is_empty() && failures.is_empty() {
            return Ok(stats);
        }

        // Unsettled first, state last: whatever happens between the two (a
        // crash, a takeover), the marks make the next run redo these documents
        // instead of trusting a state that may not match the sink.
        let owner = format!("{}/{}", job.run, job.page);
        let ids: Vec<&DocumentId> = ops.iter().map(SinkOp::id).collect();
        self.state.mark_unsettled(&job.source, job.token, &owner, &ids).await?;
        let changes: Vec<Change<'_>> = ops
            .iter()
            .map(|op| match op {
                SinkOp::Upsert(doc) | SinkOp::Refresh(doc) | SinkOp::Permissions(doc) => Change::Put(doc),
                SinkOp::Delete(id) => Change::Delete(id),
            })
            .collect();
        let results = match sink.apply(&job.source, job.token, &changes).await {
            Ok(results) => results,
            Err(sinks::Error::StaleFence(s)) => return Err(JobError::Stale(s)),
            // Refused as a whole (a receiver's 4xx): dead-lettered with its answer.
            Err(e @ sinks::Error::Refused { .. }) => return Err(JobError::Permanent(e.to_string())),
            // The sink is down: the whole page is retried (its unsettled marks make
            // the retry redo what this attempt wrote), no document is failed for it.
            Err(e) => return Err(JobError::retry(e)),
        };
        let mut applied = Vec::with_capacity(writes.len());
        for ((op, write), result) in ops.iter().zip(writes).zip(results) {
            let written = match result {
                Ok(w) => w,
                // One document the sink refuses fails alone; the rest of the page goes on.
                Err(e) => {
                    let permanent = matches!(e, sinks::Error::Rejected { .. });
                    failures.push(Failure::new(op.id().clone(), !permanent, format!("sink: {e}")));
                    continue;
                }
            };
            match (op, written) {
                (SinkOp::Upsert(_), Written::Changed) => stats.upserted += 1,
                (SinkOp::Upsert(_), Written::Unchanged) => stats.skipped += 1,
                (SinkOp::Refresh(_), _) => stats.refreshed += 1,
                (SinkOp::Permissions(_), _) => stats.permissions_updated += 1,
                (SinkOp::Delete(_), Written::Changed) => stats.deleted += 1,
                (SinkOp::Delete(_), Written::Unchanged) => {}
            }
            applied.push(write);
        }
        if failures.len() >= job.items.len() && failures.iter().all(|f| f.retryable) {
            // Nothing of the page worked and all of it may: the page as a whole
            // is redelivered (a full disk, a source down for every document).
            return Err(JobError::retry(format!(
                "every document of the page failed, e.g. {}: {}",
                failures[0].id, failures[0].reason
            )));
        }
        let children = ChildrenIndex::if_needed(source.needs_children_index());
        let linked_titles: BTreeMap<&DocumentId, String> = applied
            .iter()
            .filter_map(|w| match w {
                DocWrite::Put { new, .. } => Some(new.links.iter()),
                DocWrite::Delete { .. } => None,
            })
            .flatten()
            .filter(|t| from_plan.contains(*t))
            .map(|t| (t, titles.get(t).cloned().flatten().unwrap_or_default()))
            .collect();
        let linked_titles: Vec<(DocumentId, String)> =
            linked_titles.into_iter().map(|(t, title)| (t.clone(), title)).collect();
        self.state
            .apply_docs(&job.source, job.token, &applied, children, &linked_titles)
            .await?;
        if !failures.is_empty() {
            stats.failed = failures.len() as u64;
            self.record_failures(job, &failures).await?;
        }
        Ok(stats)
    }
}
