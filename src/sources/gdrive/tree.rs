//! The folder tree in scope and how it is saved in `Checkpoint.scope`.
//!
//! Invariants:
//! - The folder tree in scope (folder id -> parent id, name) is connector
//!   state, saved in `Checkpoint.scope` ([`SCOPE_FOLDERS`]; compact JSON). An
//!   incremental run therefore decides scope with no extra call. Which held
//!   documents sit under a folder that left the tree is the state's to say
//!   (its children index, through [`crate::sources::HeldVersions::children_of`]):
//!   the checkpoint grows with folders, not documents.
//! - The scope belongs to one folder of one drive ([`SCOPE_FOLDER_ID`],
//!   [`SCOPE_DRIVE_ID`]); a scope saved for another is not used.
//! - [`reachable`] terminates on cycles: a folder is in scope only if its parent
//!   chain reaches the synced folder.

use std::collections::{BTreeMap, HashMap, HashSet};

/// `Checkpoint.scope` key: the synced folder the rest of the scope belongs to.
pub const SCOPE_FOLDER_ID: &str = "folder_id";
/// `Checkpoint.scope` key: the shared drive the scope belongs to (`""` for My Drive).
pub const SCOPE_DRIVE_ID: &str = "drive_id";
/// `Checkpoint.scope` key: JSON `{folder id: [parent id, name]}` of the folders under the synced folder.
pub const SCOPE_FOLDERS: &str = "folders";
/// `Checkpoint.scope` key of the document map earlier versions saved (document
/// id -> folder; it grew with the source). Dropped when a scope is saved.
pub const SCOPE_DOCS: &str = "docs";
/// `Checkpoint.scope` key: the synced folder's own name (the first breadcrumb of every document).
pub const SCOPE_FOLDER_NAME: &str = "folder_name";
/// `Checkpoint.scope` key: JSON `{folder id: fingerprint}` of who may read
/// each folder (the synced folder included), as Drive reported them: a
/// folder whose fingerprint changes (shared, unshared, moved under other
/// sharing) has its subtree listed again, since Drive reports no change for
/// the files that inherit it.
pub const SCOPE_FOLDER_ACCESS: &str = "folder_access";
/// `Checkpoint.scope` key: when the last full listing started (RFC 3339, our clock; only schedules sweeps).
pub const SCOPE_SWEPT_AT: &str = "swept_at";

/// Folder id -> (parent id, name): the folders under the synced folder.
pub(super) type Folders = BTreeMap<String, (String, String)>;

/// The saved tree: the folders under the synced folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tree {
    /// Folder id -> (parent id, name); the synced folder itself is implicit.
    pub(super) folders: Folders,
}

impl Tree {
    /// Reads the tree from a checkpoint's scope; `None` if absent or unreadable.
    pub(super) fn load(scope: &BTreeMap<String, String>) -> Option<Tree> {
        Some(Tree {
            folders: serde_json::from_str(scope.get(SCOPE_FOLDERS)?).ok()?,
        })
    }

    pub(super) fn save(&self, scope: &mut BTreeMap<String, String>) {
        // Maps of strings always serialise; an empty map is the fallback only in name.
        scope.insert(
            SCOPE_FOLDERS.to_owned(),
            serde_json::to_string(&self.folders).unwrap_or_else(|_| "{}".to_owned()),
        );
        scope.remove(SCOPE_DOCS);
    }
}

/// Folders in `folders` whose parent chain reaches `root` (bounded against cycles).
pub(super) fn reachable(root: &str, folders: &Folders) -> HashSet<String> {
    let mut ok: HashSet<String> = HashSet::new();
    for id in folders.keys() {
        let mut chain = Vec::new();
        let mut cur = id.as_str();
        let reached = loop {
            if cur == root || ok.contains(cur) {
                break true;
            }
            if chain.len() > folders.len() || chain.contains(&cur) {
                break false;
            }
            chain.push(cur);
            match folders.get(cur) {
                Some((parent, _)) => cur = parent,
                None => break false,
            }
        };
        if reached {
            ok.extend(chain.into_iter().map(str::to_owned));
        }
    }
    ok
}

/// Folders of `now` whose own entry (parent, name) differs from `before`, with
/// every folder under one of them; `root_renamed` counts every folder (the synced
/// folder's name heads every breadcrumb). Folders new to the tree are not
/// included: what is in them is listed, and written with fresh breadcrumbs, anyway.
pub(super) fn changed_under(before: &Folders, now: &Folders, root_renamed: bool) -> Vec<String> {
    if root_renamed {
        return now.keys().cloned().collect();
    }
    let changed: HashSet<&String> = now
        .iter()
        .filter(|(id, entry)| before.get(*id).is_some_and(|old| old != *entry))
        .map(|(id, _)| id)
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    now.keys()
        .filter(|id| {
            // Bounded walk up: the tree is reachable from the root, but stay safe on cycles.
            let mut cur = id.as_str();
            for _ in 0..=now.len() {
                if changed.contains(&cur.to_owned()) {
                    return true;
                }
                match now.get(cur) {
                    Some((parent, _)) => cur = parent,
                    None => return false,
                }
            }
            false
        })
        .cloned()
        .collect()
}

/// The saved folder map (folder id -> parent id), for tests and diagnostics.
pub fn scope_folders(scope: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    Tree::load(scope).map(|t| t.folders.into_iter().map(|(k, (p, _))| (k, p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only folders chained to the root are in scope; cycles terminate.
    #[test]
    fn reachability() {
        let f = |pairs: &[(&str, &str)]| -> BTreeMap<String, (String, String)> {
            pairs
                .iter()
                .map(|(id, p)| (id.to_string(), (p.to_string(), String::new())))
                .collect()
        };
        let r = reachable(
            "root",
            &f(&[("a", "root"), ("b", "a"), ("c", "x"), ("d", "e"), ("e", "d")]),
        );
        assert_eq!(r, HashSet::from(["a".to_owned(), "b".to_owned()]));
    }

    /// A renamed or moved folder counts with everything under it; new folders and
    /// untouched branches do not; a renamed root counts every folder.
    #[test]
    fn changed_folders() {
        let t = |entries: &[(&str, &str, &str)]| -> BTreeMap<String, (String, String)> {
            entries
                .iter()
                .map(|(id, p, n)| (id.to_string(), (p.to_string(), n.to_string())))
                .collect()
        };
        let before = t(&[("a", "root", "A"), ("b", "a", "B"), ("c", "root", "C"), ("d", "c", "D")]);
        let now = t(&[
            ("a", "root", "A renamed"),
            ("b", "a", "B"),
            ("c", "root", "C"),
            ("d", "c", "D"),
            ("e", "root", "E new"),
        ]);
        let mut got = changed_under(&before, &now, false);
        got.sort();
        assert_eq!(got, vec!["a", "b"]);
        let moved = t(&[("a", "root", "A"), ("b", "c", "B"), ("c", "root", "C"), ("d", "c", "D")]);
        assert_eq!(changed_under(&before, &moved, false), vec!["b"]);
        assert!(changed_under(&before, &before, false).is_empty());
        assert_eq!(changed_under(&before, &before, true).len(), 4);
    }
}
