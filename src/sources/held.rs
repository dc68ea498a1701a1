//! What we hold for a source, as a connector may consult it: looked up a batch
//! at a time, never loaded whole.
//!
//! Connectors that compare against what we hold (HTTP's conditional probes,
//! the filesystem's size+mtime check and move detection, Drive's "was this
//! removed file ours?") ask [`HeldVersions::versions_of`] for the ids of the
//! page they are about to report, at the end of a complete listing
//! [`HeldVersions::unlisted`] for the held documents no page has named yet,
//! and [`HeldVersions::children_of`] for what sits under a folder that left
//! the scope (the state's children index: Drive keeps no map of its own),
//! [`HeldVersions::children_each`] for each page's attachments (Confluence).
//! Memory stays proportional to a page, not to the source: a million held
//! documents cost the coordinator nothing until a page names them.
//!
//! Invariant: `unlisted` reflects the pages the feed has *returned* (the
//! caller marks each page's ids before asking for the next), so a feed asks
//! for it only when producing a page after its last listed one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use super::Error;
use crate::types::DocumentId;

/// Held documents per `unlisted` batch of an in-memory map (Redis' batches are HSCAN's).
const MAP_BATCH: usize = 1000;

/// Batched lookups of what we hold for one source.
#[async_trait]
pub trait HeldVersions: Send + Sync {
    /// The version we hold for each of `ids` (`None` where we hold nothing), in order.
    async fn versions_of(&self, ids: &[DocumentId]) -> Result<Vec<Option<String>>, Error>;
    /// One batch of held documents (with their versions) that no page this run
    /// returned so far has listed. Start with `cursor` 0; the batch's cursor
    /// is 0 again when the scan is over. A document may come twice; a batch may be empty.
    async fn unlisted(&self, cursor: u64) -> Result<(u64, Vec<(DocumentId, String)>), Error>;
    /// The held documents whose parent is one of `parents` (direct children only).
    async fn children_of(&self, parents: &[DocumentId]) -> Result<Vec<DocumentId>, Error>;
    /// The held children of each of `parents`, in the same order.
    async fn children_each(&self, parents: &[DocumentId]) -> Result<Vec<Vec<DocumentId>>, Error>;
}

/// A shared handle on what we hold for the source of one feed.
pub type Held = Arc<dyn HeldVersions>;

/// Nothing held: a first sync, or a connector that does not consult what we hold.
pub fn nothing_held() -> Held {
    Arc::new(HeldMap::default())
}

/// What we hold, in memory: version and parent by id. It answers as a source
/// that holds exactly this and whose feed has listed nothing yet: connector
/// unit tests, and one-off listings that load the whole state anyway (`verify`).
#[derive(Debug, Clone, Default)]
pub struct HeldMap {
    docs: HashMap<DocumentId, (String, Option<DocumentId>)>,
    /// The ids sorted, for `unlisted`'s stable batches: sorted once, not per
    /// batch (a million held ids are a thousand batches); reset by a change.
    sorted: OnceLock<Vec<DocumentId>>,
}

impl HeldMap {
    /// Records `id` as held at `version` under `parent`.
    pub fn insert(&mut self, id: DocumentId, version: String, parent: Option<DocumentId>) {
        self.docs.insert(id, (version, parent));
        self.sorted = OnceLock::new();
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &DocumentId) {
        self.docs.remove(id);
        self.sorted = OnceLock::new();
    }

    /// The held ids.
    pub fn ids(&self) -> impl Iterator<Item = &DocumentId> {
        self.docs.keys()
    }

    /// The version held for `id`.
    pub fn version(&self, id: &DocumentId) -> Option<&str> {
        self.docs.get(id).map(|(v, _)| v.as_str())
    }
}

/// Versions without parents (a connector with no hierarchy).
impl From<HashMap<DocumentId, String>> for HeldMap {
    fn from(versions: HashMap<DocumentId, String>) -> Self {
        Self {
            docs: versions.into_iter().map(|(id, v)| (id, (v, None))).collect(),
            sorted: OnceLock::new(),
        }
    }
}

#[async_trait]
impl HeldVersions for HeldMap {
    async fn versions_of(&self, ids: &[DocumentId]) -> Result<Vec<Option<String>>, Error> {
        Ok(ids.iter().map(|id| self.version(id).map(str::to_owned)).collect())
    }

    async fn unlisted(&self, cursor: u64) -> Result<(u64, Vec<(DocumentId, String)>), Error> {
        let ids = self.sorted.get_or_init(|| {
            let mut ids: Vec<DocumentId> = self.docs.keys().cloned().collect();
            ids.sort();
            ids
        });
        let start = usize::try_from(cursor).unwrap_or(usize::MAX).min(ids.len());
        let end = (start + MAP_BATCH).min(ids.len());
        let batch = ids[start..end]
            .iter()
            .map(|id| (id.clone(), self.docs[id].0.clone()))
            .collect();
        Ok((if end == ids.len() { 0 } else { end as u64 }, batch))
    }

    async fn children_of(&self, parents: &[DocumentId]) -> Result<Vec<DocumentId>, Error> {
        let mut kids: Vec<DocumentId> = self
            .docs
            .iter()
            .filter(|(_, (_, p))| p.as_ref().is_some_and(|p| parents.contains(p)))
            .map(|(id, _)| id.clone())
            .collect();
        kids.sort();
        Ok(kids)
    }

    async fn children_each(&self, parents: &[DocumentId]) -> Result<Vec<Vec<DocumentId>>, Error> {
        let mut each = Vec::with_capacity(parents.len());
        for p in parents {
            each.push(self.children_of(std::slice::from_ref(p)).await?);
        }
        Ok(each)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unlisted` pages a map in stable, sorted batches that cover every id
    /// once; a change to the map is seen by the next scan.
    #[tokio::test]
    async fn unlisted_batches_cover_the_map_once_in_order() {
        let mut held = HeldMap::default();
        for i in 0..2500 {
            held.insert(DocumentId(format!("{i:05}")), format!("v{i}"), None);
        }
        let scan = |held: HeldMap| async move {
            let mut ids = Vec::new();
            let mut cursor = 0;
            let mut batches = 0;
            loop {
                let (next, batch) = held.unlisted(cursor).await.expect("map");
                batches += 1;
                ids.extend(batch.into_iter().map(|(id, v)| {
                    assert_eq!(v, format!("v{}", id.0.parse::<u32>().expect("number")));
                    id.0
                }));
                if next == 0 {
                    return (ids, batches);
                }
                cursor = next;
            }
        };
        let (ids, batches) = scan(held.clone()).await;
        assert_eq!(batches, 3);
        let expected: Vec<String> = (0..2500).map(|i| format!("{i:05}")).collect();
        assert_eq!(ids, expected);
        held.insert(DocumentId("99999".into()), "v99999".into(), None);
        held.remove(&DocumentId("00000".into()));
        let (ids, _) = scan(held).await;
        assert_eq!(ids.len(), 2500);
        assert_eq!((ids[0].as_str(), ids[2499].as_str()), ("00001", "99999"));
    }
}
