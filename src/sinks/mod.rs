//! Sinks: where synced documents go (a knowledge base, a search index).
//!
//! A sink is fenced storage in its own right: it remembers the highest fencing
//! token it has seen per source and refuses writes carrying a lower one, so a
//! run that lost its lock cannot overwrite the work of the run that replaced it.
//! A run registers its token with the sink when it starts ([`Sink::register_token`]),
//! so the fence moves even for a run that never writes.
//! Writes are idempotent: writing the same document version twice leaves one
//! copy, and reports the second write as `Unchanged`.

pub mod chunks;
pub mod directory;
pub mod postgres;
pub mod routes;
pub mod search;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lock::fencing::StaleFence;
use crate::permissions::Permissions;
use crate::types::{DocumentId, FencingToken, SourceId};

/// Sink failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A newer run holds the source; the write was refused.
    #[error(transparent)]
    StaleFence(#[from] StaleFence),
    /// The sink will never accept this document as it is (its path is taken by
    /// a directory, an index refuses its size): the document fails alone.
    #[error("sink refused document {id}: {reason}")]
    Rejected {
        /// The document.
        id: DocumentId,
        /// Why, in the sink's words.
        reason: String,
    },
    /// The sink cannot be reached or did not answer (a database restarting):
    /// the page is retried, nothing of it is recorded as failed.
    #[error("sink unavailable: {context}")]
    Unavailable {
        /// What was being done, and why it failed.
        context: String,
    },
    /// The sink refused the page as a whole and will again (a receiver's 4xx):
    /// the page is dead-lettered with the sink's answer.
    #[error("sink refused the page: {context}")]
    Refused {
        /// The sink's answer.
        context: String,
    },
    /// The file system failed (may clear up: disk full, permissions).
    #[error("sink {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl crate::retry::Transient for Error {
    /// A sink that could not be reached, or a file system error, may clear up;
    /// a refused token or a refused document will not.
    fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Io { .. })
    }
}

/// The version of the document contract a [`SinkDocument`] follows
/// (1: before `url`, `mime_type`, `modified_at`, `size_bytes`, `source_sha256`
/// and `content_note`; 2: before `permissions`).
pub const SCHEMA_VERSION: u32 = 3;

fn schema_v1() -> u32 {
    1
}

/// A document as written to a sink: the contract every sink stores and a
/// retriever reads, the same for every connector (README, "The document contract").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkDocument {
    /// [`SCHEMA_VERSION`] when written by this build.
    #[serde(default = "schema_v1")]
    pub schema_version: u32,
    /// Source it came from.
    pub source: SourceId,
    /// Id within the source.
    pub id: DocumentId,
    /// Title.
    pub title: String,
    /// Ancestor titles, root first.
    pub breadcrumb: Vec<String>,
    /// Parent document.
    pub parent: Option<DocumentId>,
    /// Source version.
    pub version: String,
    /// Readable text, extracted from what the source holds (empty for kinds without text).
    pub content: String,
    /// Where it lives at the source and what it is.
    #[serde(flatten)]
    pub about: About,
    /// Who may read it (README, "Permissions"); none for a document written
    /// before schema 3, until it is written again.
    #[serde(default)]
    pub permissions: Permissions,
    /// SHA-256 over everything a reader sees: title, parent, breadcrumb, content, links, [`About`] and permissions.
    pub content_hash: String,
    /// Token of the run that wrote it.
    pub fencing_token: FencingToken,
    /// Documents of the same source this one links to, with their current titles
    /// (`None`: the target does not exist, the link is broken).
    #[serde(default)]
    pub links: Vec<Link>,
}

/// A document's place and kind at its source: what a retriever cites and filters on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    /// The link a person opens (a Confluence page's web UI, Drive's `webViewLink`, the web page, `file://`).
    #[serde(default)]
    pub url: Option<String>,
    /// The media type at the source (`application/pdf`, `application/vnd.google-apps.document`, ...).
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Last modification by the source's clock, UTC.
    #[serde(default)]
    pub modified_at: Option<DateTime<Utc>>,
    /// Size in bytes at the source (or of what was fetched).
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// SHA-256 (hex) of the exact bytes fetched or exported.
    #[serde(default)]
    pub source_sha256: Option<String>,
    /// Why `content` is empty or partial (no extractor for the kind, over the size cap).
    #[serde(default)]
    pub content_note: Option<String>,
    /// The page's HTML as served (decoded to UTF-8), only where the source is
    /// configured to keep it (web: `keep_raw_html`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_html: Option<String>,
}

/// A resolved link to another document of the same source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The target's id.
    pub target: DocumentId,
    /// The target's title now, or `None` if it no longer exists.
    pub title: Option<String>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The sink changed.
    Changed,
    /// The sink already held exactly this (or, for a delete, nothing).
    Unchanged,
}

/// One change of a page, as the worker hands it to [`Sink::apply`].
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Write (create or replace) this document; it carries the page's token.
    Put(&'a SinkDocument),
    /// Remove this document.
    Delete(&'a DocumentId),
}

impl Change<'_> {
    /// The document changed.
    pub fn id(&self) -> &DocumentId {
        match self {
            Change::Put(doc) => &doc.id,
            Change::Delete(id) => id,
        }
    }
}

/// What [`Sink::apply`] did to each change of a page, in the page's order: a
/// change the sink refused ([`Error::Rejected`], [`Error::Io`]) fails alone.
pub type Applied = Vec<Result<Written, Error>>;

/// [`Sink::apply`] one change at a time, in order: what a sink without a
/// batched write does. Stops at the first refused token, unreachable sink or
/// refused page (the page is then dropped, retried or dead-lettered as a whole).
pub async fn apply_each<S: Sink + ?Sized>(
    sink: &S,
    source: &SourceId,
    token: FencingToken,
    changes: &[Change<'_>],
) -> Result<Applied, Error> {
    let mut applied = Vec::with_capacity(changes.len());
    for change in changes {
        let result = match change {
            Change::Put(doc) => sink.upsert(doc).await,
            Change::Delete(id) => sink.delete(source, id, token).await,
        };
        match result {
            Err(e @ (Error::StaleFence(_) | Error::Unavailable { .. } | Error::Refused { .. })) => return Err(e),
            result => applied.push(result),
        }
    }
    Ok(applied)
}

/// A destination for documents.
///
/// The fencing contract: [`Sink::register_token`] is called when a run takes
/// its token, before any of its page jobs exists; from then on every write or
/// delete carrying a lower token is refused with [`Error::StaleFence`], whether
/// or not the new run ever writes (issue 8: a run that found nothing to do
/// must still shut out its predecessor's queued jobs).
#[async_trait]
pub trait Sink: Send + Sync {
    /// Raises the source's fence to `token`; refused if a higher one was seen.
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error>;
    /// Writes (creates or replaces) a document under `doc.fencing_token`.
    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error>;
    /// Removes a document under `token`.
    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error>;
    /// Applies a page's changes under `token` (every `Put` carries it), as
    /// one write where the sink can batch them (PostgreSQL: one statement, one
    /// round trip). The outer error is the page's ([`Error::StaleFence`]: none
    /// of it was applied; [`Error::Unavailable`]: retry it all); the inner
    /// results are each change's, in order.
    async fn apply(&self, source: &SourceId, token: FencingToken, changes: &[Change<'_>]) -> Result<Applied, Error> {
        apply_each(self, source, token, changes).await
    }
    /// Reads a document back, so dependents (breadcrumbs, link titles) can be
    /// rewritten without fetching their content from the source again.
    async fn get(&self, source: &SourceId, id: &DocumentId) -> Result<Option<SinkDocument>, Error>;
    /// Whether [`Sink::get`] reads back what was written. A sink that delivers
    /// elsewhere and keeps no copy (a webhook) says no: documents whose
    /// breadcrumb or link titles change are then fetched from the source again.
    fn reads_back(&self) -> bool {
        true
    }
    /// Every document the sink holds for `source`, as id -> version (what
    /// `tidemark verify` compares with the state and the source).
    async fn versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error>;
    /// The documents a reader may read that match the query's words, best
    /// first (`tidemark query`). `None`: this sink cannot be searched (it
    /// keeps no copy, or no index).
    async fn search(&self, query: &search::Query) -> Result<Option<Vec<search::Hit>>, Error> {
        let _ = query;
        Ok(None)
    }
}
