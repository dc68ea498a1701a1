//! Data sources: the `Source` trait every connector implements, and what it yields.
//!
//! A connector answers two questions and nothing else:
//! - *what is there now?* — [`Source::open_feed`] walks the change feed from a
//!   [`Checkpoint`] page by page and reports [`Observation`]s (a document is
//!   present with some version, or was deleted);
//! - *what does it say?* — [`Source::fetch`] reads the content of a page of documents.
//!
//! Connectors do not decide what is unchanged: the coordinator compares each
//! observation with the state it holds (de-duplication by version), which is
//! what makes overlap windows and repeated listings free. Connectors do not
//! write anywhere either; they only read the source and count their API calls.
//!
//! Shared by the HTTP-based connectors: [`client`] (one retrying, counting
//! HTTP client; each connector keeps its own reading of statuses),
//! [`settings`] ([`settings::ClientSettings`]: retries, timeout and user agent,
//! their defaults, validation and the client they build), [`secret`]
//! ([`secret::SecretRef`]: the one reader of credentials named by `*_env` /
//! `*_file` keys, also used for webhook secrets) and [`clock`] (HTTP-dates,
//! zoneless timestamps, watermarks: the source's clock, never ours).
//!
//! Invariant: a feed that reports `complete_listing` has observed *every*
//! document the source holds in scope, so ids we hold but it did not report are
//! deletions. A feed must never claim completeness after a partial listing.

pub mod client;
pub mod clock;
pub mod confluence;
pub mod filesystem;
pub mod gdrive;
mod held;
pub mod http;
pub mod secret;
pub mod settings;

pub use held::{Held, HeldMap, HeldVersions, nothing_held};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gate::Gates;
use crate::permissions::Permissions;
use crate::telemetry::SourceApi;
use crate::types::{DocumentId, SourceId, SyncMode};

/// Errors a connector reports, by what the caller should do about them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Try again later (HTTP 429, 5xx, a network failure); `after` is the source's own hint.
    #[error("{context}: temporarily unavailable{}", after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    Retryable {
        /// Which source, which call, what happened.
        context: String,
        /// The source's Retry-After, when it gave one.
        after: Option<Duration>,
    },
    /// Retrying cannot help (bad credentials, a malformed response, a 4xx).
    #[error("{context}")]
    Permanent {
        /// Which source, which call, what happened.
        context: String,
    },
    /// The saved cursor or change token was refused; a full listing is needed.
    #[error("{context}: saved cursor rejected, a full listing is needed")]
    CursorExpired {
        /// Which source, which call, what happened.
        context: String,
    },
}

impl Error {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable { .. })
    }
}

/// A document's metadata as the source reports it in a listing or change feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocMeta {
    /// The id inside the source.
    pub id: DocumentId,
    /// Opaque version: a version number, an ETag, a content hash. Equal means unchanged.
    pub version: String,
    /// Human title (used for breadcrumbs and links).
    pub title: String,
    /// The parent document, when the source has a hierarchy.
    pub parent: Option<DocumentId>,
    /// Last modification time by the *source's* clock, when it reports one.
    pub modified_at: Option<DateTime<Utc>>,
    /// The link a person opens to read it (a page's web UI, Drive's `webViewLink`, `file://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Its media type at the source (`application/pdf`, a Google Docs type, `text/html`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Its size in bytes, when the source reports one (or once fetched, the bytes read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Who may read it, when the feed or the fetch reports it (`None`: this
    /// observation does not say; what the sink holds stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
}

/// One fact from a change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Observation {
    /// The document exists with this metadata.
    Present(DocMeta),
    /// The source says the document was deleted (an explicit deletion from a change log).
    Deleted(DocumentId),
    /// The document at `from` is now at `to.id` with the same content (a rename
    /// or move the connector recognised, e.g. by content hash).
    Moved {
        /// The old id.
        from: DocumentId,
        /// The document under its new id.
        to: DocMeta,
    },
    /// Who may read the document, and nothing else: no version, no title, no
    /// place (a source whose permissions change without any of those moving,
    /// like a Confluence restriction). Rewrites a held document whose
    /// permissions differ, from the sink's copy; says nothing of a document
    /// not held, and is not a listing (nothing is deleted for missing one).
    Access {
        /// The document.
        id: DocumentId,
        /// Who may read it now.
        permissions: Permissions,
    },
}

/// One page of a change feed.
#[derive(Debug, Clone, Default)]
pub struct FeedPage {
    /// What this page of the feed reported.
    pub observations: Vec<Observation>,
}

impl FeedPage {
    /// Says `permissions` for every document present that does not say its own
    /// (a source whose readers are configured, not reported: the web).
    pub fn grant(&mut self, permissions: &Permissions) {
        for o in &mut self.observations {
            match o {
                Observation::Present(meta) | Observation::Moved { to: meta, .. } => {
                    meta.permissions.get_or_insert_with(|| permissions.clone());
                }
                Observation::Deleted(_) | Observation::Access { .. } => {}
            }
        }
    }
}

/// Counts requests made to a source on behalf of one run or page: every
/// attempt, including retries and the ones that failed (a rate limit counts
/// them all). Clones share the count. An observed count also reports each
/// answer's status class and each throttle to the process's metrics.
#[derive(Debug, Clone, Default)]
pub struct ApiCalls {
    count: Arc<AtomicU64>,
    observer: Option<SourceApi>,
}

impl ApiCalls {
    /// A count that also reports answers to `observer`.
    pub fn observed(observer: SourceApi) -> Self {
        Self {
            count: Arc::default(),
            observer: Some(observer),
        }
    }

    /// Adds `n` requests.
    pub fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Requests counted so far.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A request got an answer with `status`, or none (`None`: network error, timeout).
    pub fn answered(&self, status: Option<u16>) {
        if let Some(o) = &self.observer {
            o.answered(status);
        }
    }

    /// The source throttled a request.
    pub fn throttled(&self) {
        if let Some(o) = &self.observer {
            o.throttled();
        }
    }
}

/// What a finished feed covered.
#[derive(Debug, Clone, Default)]
pub struct FeedEnd {
    /// The checkpoint to commit once every page of the run is done.
    pub checkpoint: Checkpoint,
    /// The feed observed every document in scope, so missing ids are deletions.
    pub complete_listing: bool,
    /// Why the feed did what it did, for the run record (e.g. "cursor expired: full listing").
    pub note: Option<String>,
}

/// Where the next incremental run starts. Stored per source, written under the fencing token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// A change token or cursor, for sources that have one.
    pub cursor: Option<String>,
    /// Everything modified at or before this instant (source clock) has been seen.
    pub watermark: Option<DateTime<Utc>>,
    /// Incremental runs since the last complete listing (deletion sweep).
    pub runs_since_sweep: u32,
    /// Connector-specific facts worth remembering between runs (e.g. a space's numeric id).
    pub scope: BTreeMap<String, String>,
    /// Incremental runs since the last full run (kept by the coordinator, for reconciliation).
    #[serde(default)]
    pub runs_since_full: u32,
    /// When the last full run completed (our clock: it only schedules reconciliation).
    #[serde(default)]
    pub last_full_at: Option<DateTime<Utc>>,
    /// When this checkpoint was committed: the last successful sync (our
    /// clock), exported as `tidemark_last_success_timestamp_seconds`.
    #[serde(default)]
    pub committed_at: Option<DateTime<Utc>>,
}

/// A document with its content, as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDoc {
    /// Metadata as of the fetch (may be newer than the feed reported).
    pub meta: DocMeta,
    /// The document's readable text, extracted from whatever the source holds
    /// (see [`crate::extract`]); empty for a kind that has no text.
    pub content: String,
    /// Documents of the same source this one links to, as the connector resolved them.
    pub links: Vec<DocumentId>,
    /// SHA-256 (hex) of the exact bytes fetched or exported, when any were.
    pub source_sha256: Option<String>,
    /// Why `content` is empty or partial (no extractor for the kind, over the size cap), for people.
    pub content_note: Option<String>,
    /// The HTML as served, when the connector is configured to keep it (web: `keep_raw_html`).
    pub raw_html: Option<String>,
}

impl FetchedDoc {
    /// A document that is its metadata only (nothing was read: no extractor for
    /// its kind, or over a size cap); `note` says why `content` is empty.
    pub fn metadata_only(meta: DocMeta, note: String) -> Self {
        Self {
            meta,
            content: String::new(),
            links: Vec::new(),
            source_sha256: None,
            content_note: Some(note),
            raw_html: None,
        }
    }
}

/// Hex SHA-256 of `bytes` (the `source_sha256` of a fetched document).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The result of fetching a page of documents.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Documents that exist, with content.
    pub docs: Vec<FetchedDoc>,
    /// Requested documents the source no longer has (deleted since the feed was read).
    pub missing: Vec<DocumentId>,
    /// Requested documents that failed on their own (a corrupt body, one file's
    /// download failing) while the others could be fetched; the error says
    /// whether retrying may help. An error that concerns the whole request (a
    /// 429, an unreadable response) is returned as the fetch's error instead.
    pub failed: Vec<(DocumentId, Error)>,
}

/// Walks one run's change feed.
#[async_trait]
pub trait ChangeFeed: Send {
    /// The next page of observations, or `None` when the feed is exhausted.
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error>;
    /// What the feed covered; meaningful once `next_page` has returned `None`.
    fn end(&self) -> FeedEnd;
    /// Ancestors that are not documents themselves (a file system's directories)
    /// but that documents name as `parent`, so breadcrumbs can go through them.
    /// Meaningful once `next_page` has returned `None`; most sources have none.
    fn folders(&self) -> Vec<Folder> {
        Vec::new()
    }
    /// Folders (from [`Self::folders`]) renamed or moved since the checkpoint
    /// the feed started from, with every folder under them: the documents
    /// below them need new breadcrumbs, though none of them changed.
    /// Meaningful once `next_page` has returned `None`.
    fn changed_folders(&self) -> Vec<DocumentId> {
        Vec::new()
    }
}

/// A push channel opened by [`Source::watch`] (Drive: `changes.watch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Our id for it (a UUID), sent back in every notification (`X-Goog-Channel-ID`).
    pub id: String,
    /// The source's id for what is watched, needed to stop the channel.
    pub resource_id: String,
    /// When the source stops sending to it.
    pub expires_at: DateTime<Utc>,
}

/// A non-document ancestor reported by [`ChangeFeed::folders`]: used for breadcrumbs only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// The id documents use as their `parent`.
    pub id: DocumentId,
    /// Shown in breadcrumbs.
    pub title: String,
    /// Its own parent, if any.
    pub parent: Option<DocumentId>,
}

/// A connector to one configured data source.
#[async_trait]
pub trait Source: Send + Sync {
    /// The configured id.
    fn id(&self) -> &SourceId;
    /// Opens the change feed for a run starting at `checkpoint`. `held` looks up
    /// what we hold now, a batch at a time; every request the feed makes is counted in `calls`.
    async fn open_feed(
        &self,
        checkpoint: &Checkpoint,
        mode: SyncMode,
        held: Held,
        calls: ApiCalls,
    ) -> Result<Box<dyn ChangeFeed>, Error>;
    /// Fetches the content of `docs` (one job's worth), batching calls where the API allows.
    async fn fetch(&self, docs: &[DocMeta], calls: &ApiCalls) -> Result<Fetched, Error>;
    /// Opens a push channel: the source will POST a notification to `address`,
    /// carrying `token`, whenever something changes, until `expires` (or the
    /// source's own cap, which the returned channel says). `Ok(None)`: this
    /// source has no push channels (the default).
    async fn watch(
        &self,
        address: &url::Url,
        token: &str,
        expires: DateTime<Utc>,
        calls: &ApiCalls,
    ) -> Result<Option<Channel>, Error> {
        let _ = (address, token, expires, calls);
        Ok(None)
    }
    /// Stops a channel `watch` opened; one the source no longer knows is stopped already.
    async fn stop_channel(&self, channel: &Channel, calls: &ApiCalls) -> Result<(), Error> {
        let _ = (channel, calls);
        Ok(())
    }
    /// Whether document `id` is a part of its parent that goes when the parent
    /// goes (a Confluence page's attachment), rather than a document the
    /// source keeps elsewhere when its parent is deleted (a child page).
    fn dies_with_parent(&self, id: &DocumentId) -> bool {
        let _ = id;
        false
    }
    /// Whether a run ever looks its documents up by parent, so the state
    /// keeps the children index (`kids:`) for them: for the descendants of a
    /// renamed page or of a folder renamed in place, the orphans of a deleted
    /// page. A source whose parents are part of every id below them (a
    /// directory: renamed, each file under it has a new id) never does, and
    /// saves the index (about 63 bytes of Redis per document).
    fn needs_children_index(&self) -> bool {
        true
    }
}

/// Connector settings by kind, parsed from a `[[sources]]` entry's `kind` and `settings` table.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    /// A Confluence Cloud space.
    Confluence(confluence::ConfluenceSettings),
    /// Web pages probed with conditional requests (ETag / Last-Modified).
    Http(http::HttpSettings),
    /// Files under a local directory.
    Filesystem(filesystem::FilesystemSettings),
    /// A Google Drive folder tree.
    Gdrive(gdrive::GdriveSettings),
}

/// The connector kinds this build knows, as written in `kind = "..."`.
pub const KINDS: &[&str] = &["confluence", "gdrive", "http", "filesystem"];

impl SourceSettings {
    /// Parses the `settings` table of a source of kind `kind`; `key` names the
    /// entry in error messages (e.g. `sources[2]`). Every problem found is pushed.
    pub fn parse(kind: &str, settings: toml::Value, key: &str, problems: &mut Vec<String>) -> Option<Self> {
        let parsed = match kind {
            "confluence" => settings
                .try_into::<confluence::ConfluenceSettings>()
                .map(SourceSettings::Confluence),
            "gdrive" => settings
                .try_into::<gdrive::GdriveSettings>()
                .map(SourceSettings::Gdrive),
            "http" => settings.try_into::<http::HttpSettings>().map(SourceSettings::Http),
            "filesystem" => settings
                .try_into::<filesystem::FilesystemSettings>()
                .map(SourceSettings::Filesystem),
            other => {
                problems.push(format!(
                    "{key}.kind: unknown kind {other:?} (known: {})",
                    KINDS.join(", ")
                ));
                return None;
            }
        };
        match parsed {
            Ok(s) => {
                s.validate(key, problems);
                Some(s)
            }
            Err(e) => {
                problems.push(format!("{key}.settings: {}", e.message()));
                None
            }
        }
    }

    /// Checks the settings' values, pushing every problem found as `"<key>.settings.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        match self {
            SourceSettings::Confluence(s) => s.validate(&format!("{key}.settings"), problems),
            SourceSettings::Gdrive(s) => s.validate(&format!("{key}.settings"), problems),
            SourceSettings::Http(s) => s.validate(&format!("{key}.settings"), problems),
            SourceSettings::Filesystem(s) => s.validate(&format!("{key}.settings"), problems),
        }
    }
}

/// Builds the connector for a configured source.
/// HTTP connectors send through `gates` (the fleet-wide rate gate of each source).
pub fn build(
    id: SourceId,
    settings: &SourceSettings,
    http: reqwest::Client,
    gates: &Gates,
) -> Result<Arc<dyn Source>, Error> {
    match settings {
        SourceSettings::Confluence(s) => Ok(Arc::new(confluence::Confluence::new(id, s.clone(), http, gates)?)),
        SourceSettings::Gdrive(s) => Ok(Arc::new(gdrive::Gdrive::new(id, s.clone(), http, gates)?)),
        SourceSettings::Http(s) => Ok(Arc::new(http::HttpSource::new(id, s.clone(), http, gates)?)),
        SourceSettings::Filesystem(s) => Ok(Arc::new(filesystem::Filesystem::new(id, s.clone()))),
    }
}
