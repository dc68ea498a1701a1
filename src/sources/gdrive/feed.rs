//! One run's change feed: the change list from the saved page token
//! (incremental runs), then `files.list` listings of folders, one page per
//! `next_page`.
//!
//! Invariants:
//! - Changes are applied against the tree as it is at the *end* of the change
//!   list (each change carries the file's *current* resource), so the order in
//!   which a folder move and a change inside that folder are reported does not
//!   matter, nor does a file appearing more than once.
//! - A folder leaving the tree deletes every document under it; one entering
//!   it is listed from its top, each folder once per run.
//! - The synced folder itself trashed or deleted deletes everything and drops
//!   the token, so the next run lists from scratch.
//! - A feed claims `complete_listing` only for a full walk of the tree.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;

use super::api::Client;
use super::api::DriveFile;
use super::tree::{Folders, SCOPE_FOLDER_ACCESS, SCOPE_FOLDER_NAME, Tree, changed_under, reachable};
use crate::sources::{ApiCalls, ChangeFeed, Checkpoint, Error, FeedEnd, FeedPage, Folder, Held, Observation};
use crate::types::DocumentId;

/// Counts for the run note.
#[derive(Debug, Default, Clone)]
struct Stats {
    changes: usize,
    listed_folders: usize,
    /// Folders listed again because who may read them changed.
    reshared_folders: usize,
    documents: usize,
    deleted: usize,
}

/// One run's change feed: first the change list (incremental runs), then
/// folder listings, one `files.list` page per `next_page`.
pub(super) struct GdriveFeed {
    client: Arc<Client>,
    calls: ApiCalls,
    held: Held,
    /// The checkpoint the run started from.
    base: Checkpoint,
    /// The saved token, until the change list has been read.
    changes_from: Option<String>,
    /// The token the next run starts from.
    cursor: Option<String>,
    /// Folders still to list, with the page to continue from.
    queue: VecDeque<(String, Option<String>)>,
    /// Folders queued for listing in this run (each is listed once).
    queued: HashSet<String>,
    tree: Tree,
    /// The synced folder's name, the head of every breadcrumb (`None` until known).
    root_name: Option<String>,
    /// The folder tree and root name the run started from, to find renamed or
    /// moved folders (`None`: nothing to compare with, e.g. a first run).
    prior: Option<(Folders, Option<String>)>,
    scope: BTreeMap<String, String>,
    complete: bool,
    runs_since_sweep: u32,
    stats: Stats,
    reason: String,
    /// Folder id -> fingerprint of its permissions ([`SCOPE_FOLDER_ACCESS`]).
    access: BTreeMap<String, String>,
}

/// The fingerprint of who may read `f`, if Drive said.
pub(super) fn access_of(f: &DriveFile) -> Option<String> {
    f.permissions
        .as_ref()
        .map(|p| super::sharing::permissions(p, chrono::Utc::now()).fingerprint())
}

fn load_access(scope: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    scope
        .get(SCOPE_FOLDER_ACCESS)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

#[async_trait]
impl ChangeFeed for GdriveFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        if let Some(token) = self.changes_from.take() {
            return self.read_changes(token).await.map(Some);
        }
        let Some((folder, page)) = self.queue.pop_front() else {
            return Ok(None);
        };
        let c = Arc::clone(&self.client);
        let mut list = c.list_children(&folder, page.as_deref(), &self.calls).await?;
        let mut files: Vec<&mut _> = list.files.iter_mut().collect();
        c.fill_permissions(&mut files, &self.calls).await?;
        if page.is_none() {
            self.stats.listed_folders += 1;
        }
        if let Some(next) = list.next_page_token {
            if page.as_ref() == Some(&next) {
                return Err(c.http.permanent(format_args!(
                    "GET /drive/v3/files: pagination did not advance for folder {folder}"
                )));
            }
            // Finish this folder before the ones queued behind it.
            self.queue.push_front((folder.clone(), Some(next)));
        }
        let mut observations = Vec::new();
        for f in list.files {
            if f.trashed {
                continue;
            }
            if f.is_folder() {
                if let Some(a) = access_of(&f) {
                    self.access.insert(f.id.clone(), a);
                }
                if f.id != c.settings.folder_id {
                    self.tree.folders.insert(f.id.clone(), (folder.clone(), f.name.clone()));
                    if self.queued.insert(f.id.clone()) {
                        self.queue.push_back((f.id.clone(), None));
                    }
                }
                continue;
            }
            // Every file but a folder is a document (`Kind::of_mime`).
            if let Some(meta) = f.meta() {
                self.stats.documents += 1;
                observations.push(Observation::Present(meta));
            }
        }
        Ok(Some(FeedPage { observations }))
    }

    fn folders(&self) -> Vec<Folder> {
        let root = &self.client.settings.folder_id;
        let mut out: Vec<Folder> = self
            .tree
            .folders
            .iter()
            .map(|(id, (parent, name))| Folder {
                id: DocumentId(id.clone()),
                title: name.clone(),
                parent: Some(DocumentId(parent.clone())),
            })
            .collect();
        if let Some(name) = &self.root_name {
            out.push(Folder {
                id: DocumentId(root.clone()),
                title: name.clone(),
                parent: None,
            });
        }
        out
    }

    fn changed_folders(&self) -> Vec<DocumentId> {
        let Some((before, before_root)) = &self.prior else {
            return Vec::new();
        };
        let root_renamed = before_root.is_some() && *before_root != self.root_name;
        let mut out: Vec<DocumentId> = changed_under(before, &self.tree.folders, root_renamed)
            .into_iter()
            .map(DocumentId)
            .collect();
        if root_renamed {
            out.push(DocumentId(self.client.settings.folder_id.clone()));
        }
        out
    }

    fn end(&self) -> FeedEnd {
        let mut scope = self.scope.clone();
        self.tree.save(&mut scope);
        let root = &self.client.settings.folder_id;
        let access: BTreeMap<&String, &String> = self
            .access
            .iter()
            .filter(|(id, _)| *id == root || self.tree.folders.contains_key(*id))
            .collect();
        // A map of strings always serialises.
        scope.insert(
            SCOPE_FOLDER_ACCESS.to_owned(),
            serde_json::to_string(&access).unwrap_or_default(),
        );
        if let Some(name) = &self.root_name {
            scope.insert(SCOPE_FOLDER_NAME.to_owned(), name.clone());
        }
        let st = &self.stats;
        let mut note = self.reason.clone();
        if self.complete {
            note.push_str(&format!(
                ": {} document(s) in {} folder(s)",
                st.documents, st.listed_folders
            ));
        } else {
            note.push_str(&format!(": {} change(s)", st.changes));
            if st.deleted > 0 {
                note.push_str(&format!(", {} document(s) deleted or moved out", st.deleted));
            }
            if st.listed_folders > 0 {
                note.push_str(&format!(
                    ", {} folder(s) entering the tree or shared differently listed ({} document(s))",
                    st.listed_folders, st.documents
                ));
            }
            if st.reshared_folders > 0 {
                note.push_str(&format!(
                    ", {} folder(s) shared differently: their files' permissions read again",
                    st.reshared_folders
                ));
            }
        }
        // Start from the run's checkpoint so fields the coordinator keeps (and ones
        // added later) carry over; ours are all overwritten.
        let mut checkpoint = self.base.clone();
        checkpoint.cursor = self.cursor.clone();
        checkpoint.watermark = None;
        checkpoint.runs_since_sweep = self.runs_since_sweep;
        checkpoint.scope = scope;
        FeedEnd {
            checkpoint,
            complete_listing: self.complete,
            note: Some(note),
        }
    }
}

impl GdriveFeed {
    /// A feed that reads the change list from `token` (the saved page token),
    /// against the tree saved with it.
    pub(super) fn changes(
        client: Arc<Client>,
        calls: ApiCalls,
        held: Held,
        base: &Checkpoint,
        token: &str,
        tree: Tree,
        scope: BTreeMap<String, String>,
    ) -> Self {
        let root_name = scope.get(SCOPE_FOLDER_NAME).cloned();
        let access = load_access(&scope);
        Self {
            client,
            calls,
            held,
            base: base.clone(),
            changes_from: Some(token.to_owned()),
            cursor: Some(token.to_owned()),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            prior: Some((tree.folders.clone(), root_name.clone())),
            root_name,
            tree,
            scope,
            complete: false,
            runs_since_sweep: base.runs_since_sweep.saturating_add(1),
            stats: Stats::default(),
            reason: format!("changes since page token {token}"),
            access,
        }
    }

    /// A complete listing of the tree from the synced folder down; `token` is
    /// the start page token asked for *before* listing, `root_name` the synced
    /// folder's name, `prior` the tree saved by the last run (if it is of the
    /// same folder), `reason` says why.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn listing(
        client: Arc<Client>,
        calls: ApiCalls,
        held: Held,
        base: &Checkpoint,
        token: String,
        root_name: String,
        prior: Option<Tree>,
        scope: BTreeMap<String, String>,
        reason: &str,
        root_access: Option<String>,
    ) -> Self {
        let prior = prior.map(|t| (t.folders, scope.get(SCOPE_FOLDER_NAME).cloned()));
        let root = client.settings.folder_id.clone();
        let root_key = root.clone();
        let mut queue = VecDeque::new();
        queue.push_back((root.clone(), None));
        Self {
            client,
            calls,
            held,
            base: base.clone(),
            changes_from: None,
            cursor: Some(token),
            queue,
            queued: HashSet::from([root]),
            tree: Tree::default(),
            root_name: Some(root_name),
            prior,
            scope,
            complete: true,
            runs_since_sweep: 0,
            stats: Stats::default(),
            reason: format!("complete listing ({reason})"),
            // Everything is listed: what each folder is shared with is read afresh.
            access: root_access.map(|a| BTreeMap::from([(root_key, a)])).unwrap_or_default(),
        }
    }

    /// Reads the whole change list from `token` and turns it into observations
    /// against the tree as it stands after every change; queues folders that
    /// entered the tree for listing.
    async fn read_changes(&mut self, token: String) -> Result<FeedPage, Error> {
        let c = Arc::clone(&self.client);
        let root = c.settings.folder_id.clone();
        let mut changes = Vec::new();
        let mut next = token;
        let mut seen_tokens = HashSet::new();
        let new_start = loop {
            if !seen_tokens.insert(next.clone()) {
                return Err(c.http.permanent(format_args!(
                    "GET /drive/v3/changes: page token {next:?} repeated; pagination did not advance"
                )));
            }
            let page = c.list_changes(&next, &self.calls).await?;
            changes.extend(page.changes);
            match (page.next_page_token, page.new_start_page_token) {
                (Some(n), _) => next = n,
                (None, Some(start)) => break start,
                (None, None) => {
                    return Err(c
                        .http
                        .permanent("GET /drive/v3/changes: response has neither nextPageToken nor newStartPageToken"));
                }
            }
        };
        self.cursor = Some(new_start);
        // Shared-drive changes (changeType "drive") are about the drive, not its files.
        changes.retain(|ch| ch.change_type.as_deref().is_none_or(|t| t == "file"));
        let mut files: Vec<&mut _> = changes
            .iter_mut()
            .filter(|ch| !ch.removed)
            .filter_map(|ch| ch.file.as_mut())
            .collect();
        c.fill_permissions(&mut files, &self.calls).await?;
        self.stats.changes = changes.len();

        let old = self.tree.folders.clone();
        let mut folders = old.clone();
        let mut root_gone = false;
        // Folders (the synced one included) whose permissions changed, or
        // were not known: every file under them inherits the change, and
        // Drive reports none of those files.
        let mut reshared: Vec<String> = Vec::new();
        // Pass 1: the folder tree after every change.
        for ch in &changes {
            let Some(id) = ch.file_id.as_deref().or(ch.file.as_ref().map(|f| f.id.as_str())) else {
                continue;
            };
            let gone = ch.removed || ch.file.as_ref().is_none_or(|f| f.trashed);
            if let Some(f) = ch.file.as_ref().filter(|f| !gone && (id == root || f.is_folder()))
                && let Some(now) = access_of(f)
                && self
                    .access
                    .insert(id.to_owned(), now.clone())
                    .is_none_or(|before| before != now)
            {
                reshared.push(id.to_owned());
            }
            if id == root {
                root_gone |= gone;
                if let Some(f) = ch.file.as_ref().filter(|_| !gone) {
                    self.root_name = Some(f.name.clone());
                }
                continue;
            }
            match &ch.file {
                Some(f) if f.is_folder() && !gone => {
                    if let Some(p) = f.parent() {
                        folders.insert(id.to_owned(), (p.to_owned(), f.name.clone()));
                    }
                }
                _ if gone => {
                    folders.remove(id);
                }
                _ => {}
            }
        }
        let keep = reachable(&root, &folders);
        folders.retain(|id, _| keep.contains(id));

        let mut observations = Vec::new();
        let mut deleted: HashSet<String> = HashSet::new();
        if root_gone {
            // The synced folder itself was trashed or deleted: nothing is in scope,
            // and this empty listing is complete, so the coordinator's sweep
            // deletes everything we hold (under the deletion guard) without the
            // feed naming each. The next run lists from scratch (a restored
            // folder is picked up then).
            self.complete = true;
            self.tree.folders.clear();
            self.cursor = None;
            self.reason.push_str(" (the synced folder was trashed or deleted)");
            return Ok(FeedPage { observations });
        }

        // Pass 2: each changed file against the final tree.
        let mut present: HashSet<String> = HashSet::new();
        let mut gone: Vec<DocumentId> = Vec::new();
        let in_tree = |parent: Option<&str>| parent.is_some_and(|p| p == root || folders.contains_key(p));
        for ch in &changes {
            let Some(id) = ch.file_id.clone().or(ch.file.as_ref().map(|f| f.id.clone())) else {
                continue;
            };
            if id == root || old.contains_key(&id) || folders.contains_key(&id) {
                continue;
            }
            let meta = match &ch.file {
                Some(f) if !ch.removed && !f.trashed && !f.is_folder() && in_tree(f.parent()) => f.meta(),
                _ => None,
            };
            match meta {
                Some(meta) => {
                    present.insert(id);
                    observations.push(Observation::Present(meta));
                }
                None => gone.push(DocumentId(id)),
            }
        }
        // Pass 3: documents under folders that left the tree, as the state's
        // children index has them (a document moved out of them by a change
        // above is reported where it is now).
        let departed: Vec<DocumentId> = old
            .keys()
            .filter(|id| !folders.contains_key(*id))
            .map(|id| DocumentId(id.clone()))
            .collect();
        if !departed.is_empty() {
            let orphans = self.held.children_of(&departed).await?;
            gone.extend(orphans.into_iter().filter(|d| !present.contains(&d.0)));
        }
        // Removed, out of scope or orphaned: deleted if we hold them (one lookup
        // for the page, not a map of the whole source).
        let versions = self.held.versions_of(&gone).await?;
        for (id, version) in gone.into_iter().zip(versions) {
            if version.is_some() && deleted.insert(id.0.clone()) {
                observations.push(Observation::Deleted(id));
            }
        }
        self.stats.deleted = deleted.len();

        // Folders that entered the tree: list each new subtree from its top.
        for (id, (parent, _)) in &folders {
            if !old.contains_key(id) && (parent == &root || old.contains_key(parent)) && self.queued.insert(id.clone())
            {
                self.queue.push_back((id.clone(), None));
            }
        }
        // Folders shared differently, still in the tree: list their subtrees
        // again, so each file below is reported with what it now inherits
        // (its permissions alone changed: the run rewrites, never fetches).
        for id in reshared {
            if (id == root || folders.contains_key(&id)) && self.queued.insert(id.clone()) {
                self.stats.reshared_folders += 1;
                self.queue.push_back((id, None));
            }
        }
        self.tree.folders = folders;
        Ok(FeedPage { observations })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::Utc;

    use super::super::tests::{apply, connector, deleted_ids, first_listing, present_ids, run, start};
    use super::super::{SCOPE_DOCS, SCOPE_FOLDER_ID, SCOPE_FOLDERS, SCOPE_SWEPT_AT, scope_folders};
    use crate::simulators::gdrive::{FORM_MIME, SimConfig};
    use crate::sources::{ApiCalls, Checkpoint, Error, HeldMap, Observation};
    use crate::types::SyncMode;

    /// A full listing asks for the start token first, walks every folder, reports
    /// every document (a form included, as metadata), and saves the folder map and doc parents.
    #[tokio::test]
    async fn full_listing_walks_the_tree() {
        let (sim, base) = start(SimConfig {
            files: 40,
            subfolders: 3,
            ..SimConfig::default()
        })
        .await;
        sim.create_file("Survey", "root-folder", FORM_MIME, "");
        let src = connector(base, |s| s.page_size = 7);
        let meter = ApiCalls::default();
        let (obs, end) = first_listing(&src, &meter).await.expect("feed");
        let reqs = sim.requests();
        assert_eq!(reqs[0].label, "GET /drive/v3/changes/startPageToken");
        assert!(end.complete_listing);
        // The form is a document too (metadata only): nothing in the tree is skipped.
        let expected: HashSet<String> = sim.files_in_tree().into_iter().map(|f| f.id).collect();
        assert_eq!(expected.len(), 41);
        assert_eq!(present_ids(&obs), expected);
        assert_eq!(meter.get(), sim.total_calls());
        assert_eq!(end.checkpoint.cursor, Some((sim.next_change_id()).to_string()));
        assert_eq!(scope_folders(&end.checkpoint.scope).map(|f| f.len()), Some(3));
        assert!(!end.checkpoint.scope.contains_key(SCOPE_DOCS), "no map of documents");
        assert!(
            end.note.as_deref().is_some_and(|n| !n.contains("skipped")),
            "{:?}",
            end.note
        );
        let docs = obs
            .iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert!(docs.iter().any(|m| m.version.starts_with("gdoc:")));
        assert!(docs.iter().any(|m| m.version.starts_with("file:")));
    }

    /// A no-op incremental run is one changes.list call; a change is one call
    /// plus nothing else, and the new token is the list's newStartPageToken.
    #[tokio::test]
    async fn incremental_is_one_call() {
        let (sim, base) = start(SimConfig {
            files: 20,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let meter = ApiCalls::default();
        let mut held = HeldMap::default();
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &held, &meter)
            .await
            .expect("full");
        apply(&mut held, &obs);
        sim.reset_calls();
        let meter = ApiCalls::default();
        let (obs, noop) = run(&src, &end.checkpoint, SyncMode::Incremental, &held, &meter)
            .await
            .expect("noop");
        assert!(obs.is_empty());
        assert_eq!((meter.get(), sim.total_calls()), (1, 1));
        assert!(!noop.complete_listing);
        assert_eq!(noop.checkpoint.cursor, end.checkpoint.cursor);
        assert_eq!(noop.checkpoint.runs_since_sweep, 1);

        let id = sim.files_in_tree()[3].id.clone();
        assert!(sim.update_file(&id, Some("Renamed"), None));
        let meter = ApiCalls::default();
        let (obs, next) = run(&src, &noop.checkpoint, SyncMode::Incremental, &held, &meter)
            .await
            .expect("inc");
        assert_eq!(meter.get(), 1);
        assert_eq!(present_ids(&obs), HashSet::from([id]));
        assert_eq!(next.checkpoint.cursor, Some(sim.next_change_id().to_string()));
    }

    /// Moves in and out of the tree, trash and permanent deletion, and folders
    /// leaving or entering with their subtrees, whatever order the changes come in.
    #[tokio::test]
    async fn moves_trash_and_subtrees() {
        let (sim, base) = start(SimConfig {
            files: 30,
            subfolders: 3,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |s| s.page_size = 3);
        let meter = ApiCalls::default();
        let mut held = HeldMap::default();
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &held, &meter)
            .await
            .expect("full");
        apply(&mut held, &obs);
        let outside = sim.create_folder("Outside", &sim.drive_root_id()).expect("outside");
        let out_file = sim.create_file("out.txt", &outside, "text/plain", "out").expect("file");
        let files = sim.files();
        let folder1 = files.iter().find(|f| f.name == "Folder 1").expect("f1").id.clone();
        let under_f1: HashSet<String> = {
            let f2 = files.iter().find(|f| f.name == "Folder 2").expect("f2").id.clone();
            files
                .iter()
                .filter(|f| f.parent.as_deref() == Some(&folder1) || f.parent.as_deref() == Some(&f2))
                .filter(|f| !f.is_folder())
                .map(|f| f.id.clone())
                .collect()
        };
        let in_root: Vec<String> = files
            .iter()
            .filter(|f| f.parent.as_deref() == Some("root-folder") && !f.is_folder())
            .map(|f| f.id.clone())
            .collect();
        // A file inside Folder 1 changes *before* Folder 1 leaves: it must still be deleted.
        let touched = under_f1.iter().next().expect("some").clone();
        assert!(sim.update_file(&touched, None, Some("edited")));
        assert!(sim.move_file(&folder1, &outside));
        assert!(sim.move_file(&in_root[0], &outside));
        assert!(sim.trash_file(&in_root[1]));
        assert!(sim.delete_file(&in_root[2]));
        assert!(sim.move_file(&out_file, "root-folder"));
        let (obs, end) = run(&src, &end.checkpoint, SyncMode::Incremental, &held, &meter)
            .await
            .expect("inc");
        let mut gone: HashSet<String> = under_f1.clone();
        gone.extend(in_root[..3].iter().cloned());
        assert_eq!(deleted_ids(&obs), gone);
        assert_eq!(present_ids(&obs), HashSet::from([out_file.clone()]));
        apply(&mut held, &obs);

        // The folder comes back with its subtree: listed (two folders), all present again.
        sim.reset_calls();
        let meter = ApiCalls::default();
        assert!(sim.move_file(&folder1, "root-folder"));
        let (obs, end) = run(&src, &end.checkpoint, SyncMode::Incremental, &held, &meter)
            .await
            .expect("inc");
        assert_eq!(present_ids(&obs), under_f1);
        assert!(deleted_ids(&obs).is_empty());
        assert!(sim.calls().get("GET /drive/v3/files").is_some_and(|n| *n >= 2));
        assert_eq!(meter.get(), sim.total_calls());
        apply(&mut held, &obs);
        let expected: HashSet<String> = sim.files_in_tree().into_iter().map(|f| f.id).collect();
        assert_eq!(held.ids().map(|k| k.0.clone()).collect::<HashSet<_>>(), expected);
        assert!(
            end.note.as_deref().is_some_and(|n| n.contains("entering the tree")),
            "{:?}",
            end.note
        );
    }

    /// A due sweep (`sweep_every_hours`), a scope saved for another folder, or a
    /// missing folder map turn an incremental run into a complete listing; a
    /// recent sweep does not.
    #[tokio::test]
    async fn sweeps_and_scope_changes_list_everything() {
        let (_sim, base) = start(SimConfig {
            files: 8,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |s| s.sweep_every_hours = Some(1));
        let meter = ApiCalls::default();
        let (_, end) = first_listing(&src, &meter).await.expect("full");
        let (_, recent) = run(
            &src,
            &end.checkpoint,
            SyncMode::Incremental,
            &HeldMap::default(),
            &meter,
        )
        .await
        .expect("inc");
        assert!(!recent.complete_listing, "swept just now");

        let mut old = recent.checkpoint.clone();
        let two_hours_ago = (Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
        old.scope.insert(SCOPE_SWEPT_AT.to_owned(), two_hours_ago);
        let mut other_folder = recent.checkpoint.clone();
        other_folder
            .scope
            .insert(SCOPE_FOLDER_ID.to_owned(), "another".to_owned());
        let mut no_map = recent.checkpoint.clone();
        no_map.scope.remove(SCOPE_FOLDERS);
        for (cp, why) in [
            (old, "periodic reconciliation due"),
            (other_folder, "synced folder or drive changed"),
            (no_map, "saved folder map missing"),
        ] {
            let (obs, end) = run(&src, &cp, SyncMode::Incremental, &HeldMap::default(), &meter)
                .await
                .expect("sweep");
            assert!(end.complete_listing, "{why}");
            assert_eq!(obs.len(), 8, "{why}");
            assert_eq!(end.checkpoint.runs_since_sweep, 0);
            assert!(end.note.as_deref().is_some_and(|n| n.contains(why)), "{:?}", end.note);
        }
    }

    /// Trashing the synced folder itself is a complete listing of nothing (so
    /// every held document is swept) and drops the token, so the next run lists from scratch.
    #[tokio::test]
    async fn trashed_root_deletes_everything() {
        let (sim, base) = start(SimConfig {
            files: 6,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let meter = ApiCalls::default();
        let mut held = HeldMap::default();
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &held, &meter)
            .await
            .expect("full");
        apply(&mut held, &obs);
        assert!(sim.trash_file("root-folder"));
        let (obs, end) = run(&src, &end.checkpoint, SyncMode::Incremental, &held, &meter)
            .await
            .expect("inc");
        // An empty, complete listing: the coordinator's sweep deletes all six.
        assert!(end.complete_listing);
        assert!(present_ids(&obs).is_empty() && deleted_ids(&obs).is_empty(), "{obs:?}");
        assert_eq!(end.checkpoint.cursor, None);
        assert!(sim.files_in_tree().is_empty());
    }

    /// A refused page token is CursorExpired, naming the token; the fallback full
    /// listing gets a fresh token.
    #[tokio::test]
    async fn expired_token_is_cursor_expired() {
        let (sim, base) = start(SimConfig {
            files: 5,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let meter = ApiCalls::default();
        let (_, end) = first_listing(&src, &meter).await.expect("full");
        sim.expire_all_tokens();
        match run(
            &src,
            &end.checkpoint,
            SyncMode::Incremental,
            &HeldMap::default(),
            &meter,
        )
        .await
        {
            Err(Error::CursorExpired { context }) => {
                assert!(
                    context.starts_with("source gdrive-eng: GET /drive/v3/changes: page token \""),
                    "{context}"
                );
                assert!(
                    context.contains("refused (HTTP 400: invalid: Invalid Value)"),
                    "{context}"
                );
            }
            other => panic!("expected CursorExpired, got {:?}", other.map(|(o, _)| o.len())),
        }
    }
}
