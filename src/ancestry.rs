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

/// What a lookup found for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Its title and parent.
    At(String, Option<DocumentId>),
    /// Gone (deleted by the run): a breadcrumb ends there.
    Gone,
    /// Not known.
    Unknown,
}

/// Adds to `tree` the title and parent of every id in `start` and of all
/// their ancestors that it lacks, asking `lookup` for the missing ones of a
/// level at once (one answer per id, in order); stops at `gone` documents,
/// at ones the lookup finds gone, at cycles and at [`MAX_DEPTH`] levels.
pub async fn walk<E, F, Fut>(
    start: Vec<DocumentId>,
    tree: &mut Tree,
    gone: &HashSet<DocumentId>,
    mut lookup: F,
) -> Result<(), E>
where
    F: FnMut(Vec<DocumentId>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Found>, E>>,
{
    let mut pending = start;
    let mut visited = HashSet::new();
    for _ in 0..MAX_DEPTH {
        let mut missing = Vec::new();
        let mut next = Vec::new();
        for id in pending {
            if gone.contains(&id) || !visited.insert(id.clone()) {
                continue;
            }
            match tree.get(&id) {
                Some((_, parent)) => next.extend(parent.clone()),
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            let found = lookup(missing.clone()).await?;
            for (id, found) in missing.into_iter().zip(found) {
                if let Found::At(title, parent) = found {
                    next.extend(parent.clone());
                    tree.insert(id, (title, parent));
                }
            }
        }
        if next.is_empty() {
            break;
        }
        pending = next;
    }
    Ok(())
}

/// [`walk`] over the state: adds to `tree` the ancestors of `start` it lacks,
/// from what we hold, one HMGET per level.
pub async fn fill(
    state: &StateStore,
    source: &SourceId,
    start: Vec<DocumentId>,
    tree: &mut Tree,
    gone: &HashSet<DocumentId>,
) -> Result<(), state::Error> {
    walk(start, tree, gone, |ids| async move {
        let refs: Vec<&DocumentId> = ids.iter().collect();
        Ok(state
            .held_meta_of(source, &refs)
            .await?
            .into_iter()
            .map(|m| m.map_or(Found::Unknown, |m| Found::At(m.title, m.parent)))
            .collect())
    })
    .await
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
