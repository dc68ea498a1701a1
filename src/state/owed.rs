//! Dependents owed: what a page's writes made stale elsewhere, recorded in the
//! same fenced script that writes them ([`super::StateStore::apply_docs`]), and
//! forgotten only once a run has refreshed it.
//!
//! A renamed, moved, deleted or created document owes its descendants a
//! breadcrumb refresh (`tm:{S}:owed:crumbs`: created, for children already
//! held, written without it: a parent restored, or re-created after a
//! deletion a dead run left half done); a created, renamed or deleted one
//! owes the documents linking to it a link-title refresh
//! (`tm:{S}:owed:links`), and so does a target a page's links name with the
//! run's planned title when the state holds it under another by the time
//! the page is written (its own page fetched a newer title and was written
//! first, before this linker was in its linked-from set: the script compares
//! titles itself). Only when it has any: the script records the debt
//! only if the document's children or linked-from set exists at that moment
//! (a child or linker written later reads the new state, or its run's plan),
//! so a first sync of a million documents owes little; and the run that
//! created a document refreshes only the children it did not write itself
//! (see `coordinator::dependents`). A run
//! computes its dependents from its plan *and* from these sets (see
//! `coordinator::dependents`), so a run that died between its pages and its
//! dependents (a killed coordinator, a lost lease) leaves them to the next run
//! instead of to nobody: the next run finds the rename already in the state and
//! would otherwise see nothing to do (issue 8, chaos seed 11).
//!
//! Invariants: an id enters a set atomically with the state write that makes
//! it owed; it leaves only by [`StateStore::forget_owed`], fenced, after the
//! run that read it has applied every refresh page. The sets hold a run's
//! changes that have dependents at most, and are empty between runs.

use std::sync::LazyLock;

use deadpool_redis::redis::{AsyncCommands, Script};

use super::{Error, StateStore};
use crate::lock::fencing;
use crate::types::{DocumentId, FencingToken, SourceId};

/// Ids forgotten per script.
const FORGET_BATCH: usize = 1000;

static FENCED_FORGET_OWED: LazyLock<Script> =
    LazyLock::new(|| fencing::fenced_script(include_str!("lua/forget_owed.lua")));

/// Dependents owed by earlier writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owed {
    /// Documents whose descendants' breadcrumbs are owed a refresh.
    pub crumbs: Vec<DocumentId>,
    /// Documents whose linkers' link titles are owed a refresh.
    pub links: Vec<DocumentId>,
}

impl Owed {
    /// Nothing owed.
    pub fn is_empty(&self) -> bool {
        self.crumbs.is_empty() && self.links.is_empty()
    }
}

impl StateStore {
    /// Everything owed now, sorted.
    pub async fn owed(&self, source: &SourceId) -> Result<Owed, Error> {
        let mut conn = self.pool.get().await?;
        let mut crumbs: Vec<String> = conn.smembers(self.keys.owed_crumbs(source)).await?;
        let mut links: Vec<String> = conn.smembers(self.keys.owed_links(source)).await?;
        crumbs.sort();
        links.sort();
        Ok(Owed {
            crumbs: crumbs.into_iter().map(DocumentId).collect(),
            links: links.into_iter().map(DocumentId).collect(),
        })
    }

    /// Forgets `owed` under `token`: its refreshes have all been applied.
    pub async fn forget_owed(&self, source: &SourceId, token: FencingToken, owed: &Owed) -> Result<(), Error> {
        if owed.is_empty() {
            return Ok(());
        }
        let keys = [
            self.keys.fence(source),
            self.keys.owed_crumbs(source),
            self.keys.owed_links(source),
        ];
        // A batch per script: a first sync can leave half a million ids owed,
        // and one script removing them all would hold Redis for a second.
        // SREM is idempotent, so a batch retried or a run cut off midway
        // leaves only ids still owed.
        let batches = owed
            .crumbs
            .chunks(FORGET_BATCH)
            .map(|c| (c, &[][..]))
            .chain(owed.links.chunks(FORGET_BATCH).map(|l| (&[][..], l)));
        for (crumbs, links) in batches {
            let mut args: Vec<Vec<u8>> = vec![crumbs.len().to_string().into_bytes()];
            args.extend(crumbs.iter().chain(links).map(|d| d.0.as_bytes().to_vec()));
            self.fenced(&FENCED_FORGET_OWED, &keys, token, &args).await?;
        }
        Ok(())
    }
}
