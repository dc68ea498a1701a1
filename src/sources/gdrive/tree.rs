//! The folder tree in scope and how it is saved in `Checkpoint.scope`.
//!
//! Invariants:
//! - The folder tree in scope (folder id -> parent id, name) and the parent
//!   folder of every document in scope are connector state, saved in
//!   `Checkpoint.scope` ([`SCOPE_FOLDERS`], [`SCOPE_DOCS`]; compact JSON). An
//!   incremental run therefore decides scope with no extra call, and knows which
//!   held documents sit under a folder that left the tree.
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
/// `Checkpoint.scope` key: JSON `{document id: parent folder id}` of the documents in scope.
pub const SCOPE_DOCS: &str = "docs";
/// `Checkpoint.scope` key: when the last full listing started (RFC 3339, our clock; only schedules sweeps).
pub const SCOPE_SWEPT_AT: &str = "swept_at";

/// The saved tree: folders under the synced folder, and each document's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tree {
    /// Folder id -> (parent id, name); the synced folder itself is implicit.
    pub(super) folders: BTreeMap<String, (String, String)>,
    /// Document id -> parent folder id.
    pub(super) docs: BTreeMap<String, String>,
}

impl Tree {
    /// Reads the tree from a checkpoint's scope; `None` if absent or unreadable.
    pub(super) fn load(scope: &BTreeMap<String, String>) -> Option<Tree> {
        Some(Tree {
            folders: serde_json::from_str(scope.get(SCOPE_FOLDERS)?).ok()?,
            docs: serde_json::from_str(scope.get(SCOPE_DOCS)?).ok()?,
        })
    }

    pub(super) fn save(&self, scope: &mut BTreeMap<String, String>) {
        // Maps of strings always serialise; an empty map is the fallback only in name.
        scope.insert(
            SCOPE_FOLDERS.to_owned(),
            serde_json::to_string(&self.folders).unwrap_or_else(|_| "{}".to_owned()),
        );
        scope.insert(
            SCOPE_DOCS.to_owned(),
            serde_json::to_string(&self.docs).unwrap_or_else(|_| "{}".to_owned()),
        );
    }
}

/// Folders in `folders` whose parent chain reaches `root` (bounded against cycles).
pub(super) fn reachable(root: &str, folders: &BTreeMap<String, (String, String)>) -> HashSet<String> {
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

/// How many documents a saved scope holds, for status output and tests.
pub fn scope_document_count(scope: &BTreeMap<String, String>) -> Option<usize> {
    Tree::load(scope).map(|t| t.docs.len())
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
}
