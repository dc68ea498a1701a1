//! What we hold per document ([`DocState`], hash `tm:{S}:docs`) and the
//! reverse indexes beside it (`kids:{D}`, `linkedfrom:{D}`).
//!
//! Invariant: documents and reverse indexes change together, in one fenced
//! script per page ([`StateStore::apply_docs`]), so the indexes never disagree
//! with the documents and a stale run changes neither.
//!
//! **The state is the authority for what the sink holds**, with one exception
//! it records itself: a worker marks the documents it is about to write as
//! *unsettled* (`tm:{S}:unsettled`, [`StateStore::mark_unsettled`]) before it
//! touches the sink, and [`StateStore::apply_docs`] settles them in the same
//! script that records the writes. A mark that outlives its page (the worker
//! died between sink and state, or its run was superseded before a redo) means
//! "the sink may differ from the state here": the next run plans those
//! documents again and the worker writes them even when the versions match.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{Error, StateStore, decode, encode, scan_batch};
use crate::lock::fencing;
use crate::types::{DocumentId, FencingToken, SourceId};

/// What we hold for one document: what a run compares a feed and a fetch
/// against, and what the reverse indexes are kept from; nothing else, as it
/// is paid for once per document in Redis. Stored compactly (one-letter
/// field names, the hash's first bytes: [`super::compact`]); the long names
/// are read too, as earlier versions wrote them, and so are the fields they
/// kept and no run read (breadcrumb, token, time written), then ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocState {
    /// Source version last written to the sink.
    #[serde(rename = "v", alias = "version")]
    pub version: String,
    /// SHA-256 of what was written (title, breadcrumb, content, links, ...),
    /// in hex; stored, its first 16 bytes: compare with [`DocState::wrote`].
    #[serde(rename = "h", alias = "content_hash", with = "super::compact::hash_prefix")]
    pub content_hash: String,
    /// Title.
    #[serde(rename = "t", alias = "title")]
    pub title: String,
    /// Parent document.
    #[serde(rename = "p", alias = "parent", default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<DocumentId>,
    /// Documents of the same source this one links to.
    #[serde(rename = "l", alias = "links", default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<DocumentId>,
    /// [`crate::permissions::Permissions::fingerprint`] of who may read it as
    /// written: a feed reporting other permissions makes it a refresh. `None`
    /// for a state written before permissions were kept.
    #[serde(
        rename = "a",
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::compact::opt_hash_prefix"
    )]
    pub access: Option<String>,
}

impl DocState {
    /// Whether `hash` (a whole content hash, in hex) is what was last
    /// written: the stored hash is it, or its first bytes.
    pub fn wrote(&self, hash: &str) -> bool {
        !self.content_hash.is_empty() && hash.starts_with(self.content_hash.as_str())
    }
}

/// The part of a [`DocState`] a run compares a change feed against. Decoding
/// it from a stored `DocState` skips the other fields without allocating them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMeta {
    /// Source version last written.
    #[serde(rename = "v", alias = "version")]
    pub version: String,
    /// Title.
    #[serde(rename = "t", alias = "title")]
    pub title: String,
    /// Parent document.
    #[serde(rename = "p", alias = "parent", default)]
    pub parent: Option<DocumentId>,
    /// Fingerprint of who may read it as written ([`DocState::access`]).
    #[serde(
        rename = "a",
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::compact::opt_hash_prefix"
    )]
    pub access: Option<String>,
}

/// One document change for [`StateStore::apply_docs`], with what we held before
/// (so the reverse indexes can be updated).
#[derive(Debug, Clone)]
pub enum DocWrite {
    /// Written to the sink.
    Put {
        /// The document.
        id: DocumentId,
        /// What we hold now.
        new: DocState,
        /// What we held before, if anything.
        old: Option<DocState>,
    },
    /// Removed from the sink.
    Delete {
        /// The document.
        id: DocumentId,
        /// What we held before, if anything.
        old: Option<DocState>,
    },
}

/// Whether [`StateStore::apply_docs`] keeps the children index (`kids:{D}`)
/// for the documents it writes: as the source says
/// (`Source::needs_children_index`). Not kept, a document written still
/// leaves the set of its old parent (one a version before this wrote), and
/// enters none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildrenIndex {
    /// Every document is in its parent's children set.
    Kept,
    /// No document enters one.
    NotKept,
}

impl ChildrenIndex {
    /// Kept if `needed` (what the source's `needs_children_index` says).
    pub fn if_needed(needed: bool) -> Self {
        if needed { Self::Kept } else { Self::NotKept }
    }
}

static FENCED_APPLY_DOCS: LazyLock<Script> =
    LazyLock::new(|| fencing::fenced_script(include_str!("lua/apply_docs.lua")));
static FENCED_MARK_UNSETTLED: LazyLock<Script> =
    LazyLock::new(|| fencing::fenced_script(include_str!("lua/mark_unsettled.lua")));

impl StateStore {
    /// Version, title and parent of every document we hold (not breadcrumbs,
    /// links or hashes), decoded batch by batch while scanning, so memory stays
    /// near the size of the result. For `verify`, which compares whole sets;
    /// a run never loads this (it looks up a page at a time).
    pub async fn held_meta(&self, source: &SourceId) -> Result<HashMap<DocumentId, HeldMeta>, Error> {
        let key = self.keys.docs(source);
        let mut conn = self.pool.get().await?;
        let mut out = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, items) = scan_batch(&mut conn, &key, cursor).await?;
            for (id, bytes) in items {
                let meta: HeldMeta = decode(&key, &id, &bytes)?;
                out.insert(DocumentId(id), meta);
            }
            cursor = next;
            if cursor == 0 {
                return Ok(out);
            }
        }
    }

    /// Version, title and parent of `ids` (None where we hold nothing): one HMGET.
    pub async fn held_meta_of(&self, source: &SourceId, ids: &[&DocumentId]) -> Result<Vec<Option<HeldMeta>>, Error> {
        self.hmget(source, ids).await
    }

    /// `ids` of the source's documents hash, decoded as `T` (a `DocState` or a part of it).
    async fn hmget<T: serde::de::DeserializeOwned>(
        &self,
        source: &SourceId,
        ids: &[&DocumentId],
    ) -> Result<Vec<Option<T>>, Error> {
        self.hmget_decoded(&self.keys.docs(source), ids).await
    }

    /// The held state of `ids` (None where we hold nothing).
    pub async fn docs(&self, source: &SourceId, ids: &[&DocumentId]) -> Result<Vec<Option<DocState>>, Error> {
        self.hmget(source, ids).await
    }

    /// Records a document as written, under `token` (no previous state: tests and tools).
    pub async fn put_doc(
        &self,
        source: &SourceId,
        token: FencingToken,
        id: &DocumentId,
        state: &DocState,
    ) -> Result<(), Error> {
        let put = DocWrite::Put {
            id: id.clone(),
            new: state.clone(),
            old: None,
        };
        self.apply_docs(source, token, &[put], ChildrenIndex::Kept, &[]).await
    }

    /// Records written documents and forgets deleted ones, and keeps the reverse
    /// indexes (children, as `children` says, and linked-from) in step, in one
    /// fenced script: one round trip per page, and the indexes never disagree
    /// with the documents.
    ///
    /// `linked_titles`: the link targets this page's writes name with a title
    /// taken from the run's plan (another page of the run writes them), and
    /// that title. A target the state holds by then under another title (its
    /// page fetched a newer one and was written first) is owed a link-title
    /// refresh, recorded with these writes: the linkers were written with
    /// the plan's title after the target's write looked for linkers to owe.
    pub async fn apply_docs(
        &self,
        source: &SourceId,
        token: FencingToken,
        writes: &[DocWrite],
        children: ChildrenIndex,
        linked_titles: &[(DocumentId, String)],
    ) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut keys = vec![
            self.keys.fence(source),
            self.keys.docs(source),
            self.keys.unsettled(source),
            self.keys.failed(source),
            self.keys.owed_crumbs(source),
            self.keys.owed_links(source),
        ];
        // KEYS[5] and KEYS[6], as the script's triples name them.
        let (crumbs, links) = ("5".to_owned(), "6".to_owned());
        let mut key_index: HashMap<String, usize> = HashMap::new();
        let mut key_of = |k: String, keys: &mut Vec<String>| -> String {
            let i = *key_index.entry(k.clone()).or_insert_with(|| {
                keys.push(k);
                keys.len()
            });
            i.to_string()
        };
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut ops: Vec<[String; 3]> = Vec::new();
        let mut puts = 0usize;
        let mut put_args = Vec::new();
        let mut del_args = Vec::new();
        for w in writes {
            let (id, old, new) = match w {
                DocWrite::Put { id, new, old } => {
                    puts += 1;
                    put_args.push(id.0.as_bytes().to_vec());
                    put_args.push(encode(new));
                    (id, old.as_ref(), Some(new))
                }
                DocWrite::Delete { id, old } => {
                    del_args.push(id.0.as_bytes().to_vec());
                    (id, old.as_ref(), None)
                }
            };
            // What this write makes others owe (see `state::owed`), recorded
            // with it: a run that dies before its dependents leaves it behind.
            let renamed = matches!((old, new), (Some(o), Some(n)) if o.title != n.title);
            let moved = matches!((old, new), (Some(o), Some(n)) if o.parent != n.parent);
            let deleted = old.is_some() && new.is_none();
            let created = old.is_none() && new.is_some();
            // Owed only where there is someone to owe: a document with no
            // children owes no breadcrumbs, one nobody links to no link titles
            // (a child or linker written later reads the new state or the
            // run's plan). So a first sync of a million documents owes
            // nothing, instead of a million link refreshes. A document
            // created with children already held (a parent restored, or
            // re-created after a deletion) owes them breadcrumbs through it:
            // they were written without it.
            if renamed || moved || deleted || created {
                let kids = key_of(self.keys.children(source, id), &mut keys);
                ops.push([format!("OWEIF{kids}"), crumbs.clone(), id.0.clone()]);
            }
            if renamed || deleted || created {
                let linkers = key_of(self.keys.linked_from(source, id), &mut keys);
                ops.push([format!("OWEIF{linkers}"), links.clone(), id.0.clone()]);
            }
            let old_parent = old.and_then(|o| o.parent.as_ref());
            let new_parent = new.and_then(|n| n.parent.as_ref());
            if old_parent != new_parent {
                if let Some(p) = old_parent {
                    ops.push([
                        "SREM".into(),
                        key_of(self.keys.children(source, p), &mut keys),
                        id.0.clone(),
                    ]);
                }
                if let Some(p) = new_parent.filter(|_| children == ChildrenIndex::Kept) {
                    ops.push([
                        "SADD".into(),
                        key_of(self.keys.children(source, p), &mut keys),
                        id.0.clone(),
                    ]);
                }
            }
            let old_links: HashSet<&DocumentId> = old.map(|o| o.links.iter().collect()).unwrap_or_default();
            let new_links: HashSet<&DocumentId> = new.map(|n| n.links.iter().collect()).unwrap_or_default();
            for t in old_links.difference(&new_links) {
                ops.push([
                    "SREM".into(),
                    key_of(self.keys.linked_from(source, t), &mut keys),
                    id.0.clone(),
                ]);
            }
            for t in new_links.difference(&old_links) {
                ops.push([
                    "SADD".into(),
                    key_of(self.keys.linked_from(source, t), &mut keys),
                    id.0.clone(),
                ]);
            }
        }
        // After the writes' own ops: the linked-from sets name these linkers now.
        for (target, title) in linked_titles {
            ops.push([format!("OWEIFTITLE{title}"), links.clone(), target.0.clone()]);
        }
        args.push(puts.to_string().into_bytes());
        args.extend(put_args);
        args.push(del_args.len().to_string().into_bytes());
        args.extend(del_args);
        for [op, key, member] in ops {
            args.push(op.into_bytes());
            args.push(key.into_bytes());
            args.push(member.into_bytes());
        }
        self.fenced(&FENCED_APPLY_DOCS, &keys, token, &args).await?;
        Ok(())
    }

    /// Marks `ids` unsettled by `owner` ("run/page") under `token`, before their
    /// sink writes: until [`StateStore::apply_docs`] records them, the sink may
    /// differ from the state for these documents.
    pub async fn mark_unsettled(
        &self,
        source: &SourceId,
        token: FencingToken,
        owner: &str,
        ids: &[&DocumentId],
    ) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys = [self.keys.fence(source), self.keys.unsettled(source)];
        let mut args = vec![owner.as_bytes().to_vec()];
        args.extend(ids.iter().map(|d| d.0.as_bytes().to_vec()));
        let mut conn = self.pool.get().await?;
        super::fenced_on(&mut conn, &FENCED_MARK_UNSETTLED, &keys, token, &args).await?;
        // A mark lost in a failover would leave a sink write the state never
        // heard of: a document deleted at the source later would stay in the
        // sink for good (a deletion of a document not held deletes nothing).
        self.wait_for_replicas(&mut conn, source).await
    }

    /// Which of `ids` are unsettled (one HMGET).
    pub async fn unsettled_of(&self, source: &SourceId, ids: &[&DocumentId]) -> Result<HashSet<DocumentId>, Error> {
        self.present_in(&self.keys.unsettled(source), ids).await
    }

    /// Every unsettled document with its owner ("run/page"). Small: at most the
    /// documents of the pages in flight when workers died or runs were superseded.
    pub async fn unsettled(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error> {
        let mut conn = self.pool.get().await?;
        let all: HashMap<String, String> = conn.hgetall(self.keys.unsettled(source)).await?;
        Ok(all.into_iter().map(|(k, v)| (DocumentId(k), v)).collect())
    }

    /// Members of the reverse-index sets `keys` (children or linked-from), de-duplicated.
    pub async fn union_of(&self, keys: &[String]) -> Result<Vec<DocumentId>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let members: Vec<String> = redis::cmd("SUNION").arg(keys).query_async(&mut conn).await?;
        Ok(members.into_iter().map(DocumentId).collect())
    }

    /// The members of each set in `keys`, in order (one round trip).
    pub async fn members_each(&self, keys: &[String]) -> Result<Vec<Vec<DocumentId>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("SMEMBERS").arg(k);
        }
        let each: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(each
            .into_iter()
            .map(|members| members.into_iter().map(DocumentId).collect())
            .collect())
    }

    /// Number of documents held for `source`.
    pub async fn doc_count(&self, source: &SourceId) -> Result<u64, Error> {
        let mut conn = self.pool.get().await?;
        Ok(conn.hlen(self.keys.docs(source)).await?)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    /// The form earlier versions stored: long names, the hash in hex, the time as text.
    #[derive(Serialize)]
    struct EarlierDocState {
        version: String,
        content_hash: String,
        title: String,
        parent: Option<DocumentId>,
        breadcrumb: Vec<String>,
        links: Vec<DocumentId>,
        token: FencingToken,
        synced_at: DateTime<Utc>,
    }

    fn sample() -> DocState {
        DocState {
            version: "17".into(),
            content_hash: crate::sources::sha256_hex(b"body"),
            title: "Installation guide".into(),
            parent: Some(DocumentId("100012".into())),
            links: vec![DocumentId("100020".into())],
            access: Some("0123456789abcdef".into()),
        }
    }

    /// The permissions fingerprint is kept as 8 bytes and read back whole,
    /// in the state and in a plan entry's `before`.
    #[test]
    fn the_permissions_fingerprint_round_trips() {
        let doc = sample();
        let back: DocState = rmp_serde::from_slice(&encode(&doc)).expect("decode");
        assert_eq!(back.access, doc.access);
        let meta: HeldMeta = rmp_serde::from_slice(&encode(&doc)).expect("decode meta");
        assert_eq!(meta.access, doc.access);
        // Absent (a state from before permissions), or nil (a plan entry's
        // `before` written by the first build that kept it): none.
        let none = DocState { access: None, ..doc };
        let meta: HeldMeta = rmp_serde::from_slice(&encode(&none)).expect("decode meta");
        assert_eq!(meta.access, None);
        let nil =
            rmp_serde::to_vec_named(&serde_json::json!({"v": "1", "t": "T", "p": null, "a": null})).expect("encode");
        let meta: HeldMeta = rmp_serde::from_slice(&nil).expect("decode nil");
        assert_eq!(meta.access, None);
    }

    /// A document stored by an earlier version (long names, a whole hex
    /// hash, a breadcrumb, token and time) decodes as it was, whole and as
    /// [`HeldMeta`], the fields no longer kept ignored; the compact form
    /// keeps the hash's first 16 bytes, which still tell the written hash
    /// from any other, and is less than half the size.
    #[test]
    fn earlier_and_compact_forms_decode_alike() {
        let doc = sample();
        let earlier = rmp_serde::to_vec_named(&EarlierDocState {
            version: doc.version.clone(),
            content_hash: doc.content_hash.clone(),
            title: doc.title.clone(),
            parent: doc.parent.clone(),
            breadcrumb: vec!["Product Documentation".into(), "Guides".into()],
            links: doc.links.clone(),
            token: FencingToken(7),
            synced_at: DateTime::from_timestamp_millis(1_764_500_000_123).expect("time"),
        })
        .expect("encode");
        let compact = encode(&doc);
        let other = crate::sources::sha256_hex(b"another body");
        for bytes in [&earlier, &compact] {
            let back: DocState = rmp_serde::from_slice(bytes).expect("decode");
            assert_eq!(
                (&back.version, &back.title, &back.parent, &back.links),
                (&doc.version, &doc.title, &doc.parent, &doc.links)
            );
            assert!(back.wrote(&doc.content_hash), "{back:?}");
            assert!(!back.wrote(&other), "{back:?}");
            let meta: HeldMeta = rmp_serde::from_slice(bytes).expect("decode meta");
            assert_eq!(
                (meta.version, meta.title, meta.parent),
                (doc.version.clone(), doc.title.clone(), doc.parent.clone())
            );
        }
        let stored: DocState = rmp_serde::from_slice(&compact).expect("decode");
        assert_eq!(stored.content_hash.len(), 32, "16 bytes of hash kept");
        assert!(
            compact.len() * 2 < earlier.len(),
            "compact {} bytes vs earlier {}",
            compact.len(),
            earlier.len()
        );
    }

    /// A hash that is not lowercase hex, no parent and no links round-trip too.
    #[test]
    fn unusual_values_round_trip() {
        let doc = DocState {
            content_hash: "not-hex".into(),
            parent: None,
            links: Vec::new(),
            ..sample()
        };
        let back: DocState = rmp_serde::from_slice(&encode(&doc)).expect("decode");
        assert_eq!(back, doc);
        let upper = DocState {
            content_hash: "ABCDEF".into(),
            ..sample()
        };
        let back: DocState = rmp_serde::from_slice(&encode(&upper)).expect("decode");
        assert_eq!(back.content_hash, "ABCDEF");
        assert!(back.wrote("ABCDEF") && !back.wrote("ABCDE0"));
        let empty = DocState {
            content_hash: String::new(),
            ..sample()
        };
        assert!(!empty.wrote(""), "no hash held: nothing is known to be written");
    }
}
