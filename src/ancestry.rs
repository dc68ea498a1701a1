//! Breadcrumbs: a document's ancestor titles, root first.
//!
//! One walk serves the coordinator (breadcrumbs of planned changes and of
//! dependents) and the worker (a document whose fetch found a new parent):
//! a [`Tree`] of known titles and parents is completed from the state, one
//! HMGET per level ([`fill`]), then read ([`breadcrumb`]). It sits below both
//! and above the state store only.
//!
//! Invariants: every walk is cycle-safe (a visited set) and bounded
//! ([`MAX_DEPTH`] levels), so a corrupt or cyclic parent chain from a source
//! costs a short breadcrumb, never a hang.

use std::collections::{HashMap, HashSet};

use crate::state::{self, StateStore};
use crate::types::{DocumentId, SourceId};

/// Title and parent of documents (and folders), by id.
pub type Tree = HashMap<DocumentId, (String, Option<DocumentId>)>;

/// Most ancestor levels read from the state for one walk.
pub const MAX_DEPTH: usize = 64;

/// Ancestor titles of `id`, root first, from `tree`; stops at cycles and unknown parents.
pub fn breadcrumb(id: &DocumentId, tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::from([id.clone()]);
    let mut cursor = tree.get(id).and_then(|(_, p)| p.clone());
    while let Some(p) = cursor {
        if !seen.insert(p.clone()) {
            break;
        }
        match tree.get(&p) {
            Some((title, parent)) => {
                out.push(title.clone());
                cursor = parent.clone();
            }
            None => break,
        }
    }
    out.reverse();
    out
}

/// Adds to `tree` the title and parent of every id in `start` and of all
/// their ancestors that it lacks, from the state, one HMGET per level;
/// stops at `gone` documents, cycles and [`MAX_DEPTH`] levels.
pub async fn fill(
    state: &StateStore,
    source: &SourceId,
    start: Vec<DocumentId>,
    tree: &mut Tree,
    gone: &HashSet<DocumentId>,
) -> Result<(), state::Error> {
    let mut pending = start;
    let mut visited = HashSet::new();
    for _ in 0..MAX_DEPTH {
        let mut lookup = Vec::new();
        let mut next = Vec::new();
        for id in pending {
            if gone.contains(&id) || !visited.insert(id.clone()) {
                continue;
            }
            match tree.get(&id) {
                Some((_, parent)) => next.extend(parent.clone()),
                None => lookup.push(id),
            }
        }
        let refs: Vec<&DocumentId> = lookup.iter().collect();
        for (id, meta) in lookup.iter().zip(state.held_meta_of(source, &refs).await?) {
            if let Some(m) = meta {
                next.extend(m.parent.clone());
                tree.insert(id.clone(), (m.title, m.parent));
            }
        }
        if next.is_empty() {
            break;
        }
        pending = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(edges: &[(&str, &str, Option<&str>)]) -> Tree {
        edges
            .iter()
            .map(|(id, title, parent)| (DocumentId::from(*id), (title.to_string(), parent.map(DocumentId::from))))
            .collect()
    }

    /// Breadcrumbs list ancestors root first and stop at cycles and unknown parents.
    #[test]
    fn breadcrumbs() {
        let t = tree(&[
            ("1", "Root", None),
            ("2", "Guide", Some("1")),
            ("3", "Install", Some("2")),
        ]);
        assert_eq!(breadcrumb(&"3".into(), &t), vec!["Root", "Guide"]);
        assert!(breadcrumb(&"1".into(), &t).is_empty());
        let cyc = tree(&[("a", "A", Some("b")), ("b", "B", Some("a"))]);
        assert_eq!(breadcrumb(&"a".into(), &cyc), vec!["B"]);
        let dangling = tree(&[("x", "X", Some("gone"))]);
        assert!(breadcrumb(&"x".into(), &dangling).is_empty());
    }
}
