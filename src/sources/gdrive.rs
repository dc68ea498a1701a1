//! Google Drive connector: one folder tree (in My Drive or a shared drive),
//! listed through Drive API v3 `files.list` and followed through `changes.list`
//! page tokens.
//!
//! What it owns:
//! - [`GdriveSettings`]: the `settings` table of a `kind = "gdrive"` source;
//! - [`Gdrive`]: the [`Source`] that walks the change feed and downloads file content.
//!
//! | Capability            | Support                                                                                  |
//! |-----------------------|------------------------------------------------------------------------------------------|
//! | Change detection      | yes: `changes.list` from the saved page token; a no-op run is one call                    |
//! | Deletions             | yes: `removed: true` (permanent delete, lost access) and `trashed: true`                  |
//! | Moves                 | yes: a file or folder moved out of the tree is deleted, moved in is listed and created   |
//! | Folder subtrees       | yes: a folder leaving the tree deletes every document under it; one arriving is listed   |
//! | Shared drives         | yes: `drive_id` sends `driveId`, `corpora=drive`, `supportsAllDrives`, `includeItems...` |
//! | Expired/invalid token | yes: `Error::CursorExpired`; the coordinator falls back to a full listing               |
//! | Periodic sweep        | optional: `sweep_every_hours` forces a full listing (deletions by id comparison)         |
//! | Content               | Google Docs and Slides exported as `text/plain`, Sheets as `text/csv` (first sheet),     |
//! |                       | `text/*`, JSON, XML and YAML files downloaded with `alt=media`                           |
//! | Not synced            | folders, forms, drawings, shortcuts, sites, binary files (PDF, images, Office): skipped   |
//! | Cannot detect         | changes to a shortcut's target; items the token's user cannot see; a file kept in two    |
//! |                       | folders (Drive stopped allowing it in 2020; only `parents[0]` is used)                    |
//!
//! Invariants:
//! - A full listing asks for `changes.getStartPageToken` *before* listing, so
//!   anything changed during the listing is in the next incremental run.
//! - The folder tree in scope (folder id -> parent id, name) and the parent
//!   folder of every document in scope are connector state, saved in
//!   `Checkpoint.scope` (`folders`, `docs`; compact JSON). An incremental run
//!   therefore decides scope with no extra call, and knows which held documents
//!   sit under a folder that left the tree. Held versions alone (id -> version)
//!   could not tell that.
//! - Changes are applied against the tree as it is at the *end* of the change
//!   list (each change carries the file's *current* resource), so the order in
//!   which a folder move and a change inside that folder are reported does not
//!   matter, nor does a file appearing more than once.
//! - `fetch` returns the feed's metadata with the content as downloaded: a file
//!   edited in between is stored with newer content under the older version, and
//!   the next run (whose change list holds that edit) rewrites it.
//! - A feed claims `complete_listing` only for a full walk of the tree.
//! - Every HTTP attempt, retries included, is counted in `api_calls` (by
//!   [`client::RetryingClient`]; the 403 rate-limit rule is decided here).
//! - `DocMeta.version` is `<kind>:<version>` (e.g. `gdoc:12`, `text:3`): Drive's
//!   `version` plus how to read the file. `fetch` only gets `DocMeta`, and a
//!   file's type never changes, so the tag costs nothing in de-duplication and
//!   saves a metadata call per download.
//!
//! Not done here: refreshing OAuth tokens. The bearer token is re-read from
//! `access_token_env` / `access_token_file` for every request, so a sidecar
//! (or `gcloud auth print-access-token` in a cron) that rewrites the file keeps
//! it fresh; minting service-account tokens is out of scope.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use url::Url;

use super::client::{self, Body, RetryingClient, Verdict};
use super::clock;
use super::{
    ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, FeedEnd, FeedPage, Fetched, FetchedDoc, Held, Observation, Source,
};
use crate::types::{DocumentId, SourceId, SyncMode};

/// Largest `pageSize` of `changes.list` and `files.list`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// `mimeType` of a folder.
const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
/// Downloads in flight per `fetch` (Drive has no batch download: one call per file).
const FETCH_CONCURRENCY: usize = 4;
/// Fields asked of `changes.list`.
const CHANGE_FIELDS: &str = "nextPageToken,newStartPageToken,changes(changeType,removed,fileId,time,file(id,name,mimeType,parents,trashed,modifiedTime,version,md5Checksum,driveId))";
/// Fields asked of `files.list`.
const LIST_FIELDS: &str = "nextPageToken,files(id,name,mimeType,parents,trashed,modifiedTime,version,md5Checksum)";
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

fn default_base_url() -> Url {
    // A constant that parses; not outside input.
    Url::parse("https://www.googleapis.com").expect("constant URL parses")
}
fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}

/// Settings of one Google Drive folder source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GdriveSettings {
    /// API root (default `https://www.googleapis.com`; tests point it at the simulator).
    #[serde(default = "default_base_url")]
    pub base_url: Url,
    /// Id of the folder whose tree is synced (required).
    pub folder_id: String,
    /// Id of the shared drive holding the folder (default: none, My Drive). When
    /// set, `driveId`, `corpora=drive` and `includeItemsFromAllDrives` are sent.
    #[serde(default)]
    pub drive_id: Option<String>,
    /// Environment variable holding an OAuth access token (default: none).
    #[serde(default)]
    pub access_token_env: Option<String>,
    /// File holding an OAuth access token, re-read for every request (default: none).
    #[serde(default)]
    pub access_token_file: Option<PathBuf>,
    /// Items per `changes.list` / `files.list` page, 1..=1000 (default 1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Retries of one request after a rate limit, 5xx or network failure (default 5).
    #[serde(default = "client::default_max_retries")]
    pub max_retries: u32,
    /// Per-request timeout in seconds (default 30).
    #[serde(default = "client::default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Hours between full listings on incremental runs (default: none, never;
    /// the change feed reports deletions itself). A sweep also repairs the saved
    /// folder map should it ever drift from Drive.
    #[serde(default)]
    pub sweep_every_hours: Option<u64>,
}

/// Drive ids are URL-safe base64-ish; anything else is refused so ids can sit
/// inside `q` quotes and URL paths without escaping surprises.
fn is_drive_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl GdriveSettings {
    /// Settings for `folder_id` at `base_url` with every optional field at its default.
    pub fn new(base_url: Url, folder_id: impl Into<String>) -> Self {
        Self {
            base_url,
            folder_id: folder_id.into(),
            drive_id: None,
            access_token_env: None,
            access_token_file: None,
            page_size: default_page_size(),
            max_retries: client::default_max_retries(),
            request_timeout_secs: client::default_request_timeout_secs(),
            sweep_every_hours: None,
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        let url = &self.base_url;
        let shown = url.as_str().strip_suffix('/').unwrap_or(url.as_str());
        if !matches!(url.scheme(), "http" | "https") {
            problems.push(format!("{key}.base_url: {shown:?} is not an http(s) URL"));
        } else if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            problems.push(format!(
                "{key}.base_url: {shown:?} must be the API root (e.g. https://www.googleapis.com), without a path or a query"
            ));
        }
        if !is_drive_id(&self.folder_id) {
            problems.push(format!(
                "{key}.folder_id: {:?} is not a Drive id (letters, digits, '-' and '_')",
                self.folder_id
            ));
        }
        if let Some(d) = &self.drive_id
            && !is_drive_id(d)
        {
            problems.push(format!(
                "{key}.drive_id: {d:?} is not a shared drive id (letters, digits, '-' and '_')"
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            problems.push(format!(
                "{key}.page_size: {} is outside 1..={MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        if self.request_timeout_secs == 0 {
            problems.push(format!("{key}.request_timeout_secs: must be at least 1"));
        }
        if self.sweep_every_hours == Some(0) {
            problems.push(format!(
                "{key}.sweep_every_hours: must be at least 1 (leave it out to never sweep)"
            ));
        }
        if self.access_token_env.is_some() && self.access_token_file.is_some() {
            problems.push(format!(
                "{key}.access_token_env: set only one of access_token_env and access_token_file"
            ));
        }
        if let Some(var) = &self.access_token_env
            && std::env::var_os(var).is_none()
        {
            problems.push(format!(
                "{key}.access_token_env: environment variable {var:?} is not set"
            ));
        }
        if let Some(path) = &self.access_token_file
            && let Err(e) = std::fs::metadata(path)
        {
            problems.push(format!("{key}.access_token_file: cannot read {}: {e}", path.display()));
        }
    }
}

/// A Google Drive folder tree as a [`Source`].
pub struct Gdrive {
    client: Arc<Client>,
}

impl Gdrive {
    /// Builds the connector; fails if the token source is unreadable now.
    pub fn new(id: SourceId, settings: GdriveSettings, http: reqwest::Client) -> Result<Self, Error> {
        // Drive rarely sends Retry-After; jittered backoffs keep parallel workers
        // from retrying in lockstep against the same per-user quota.
        let http = RetryingClient::new(
            http,
            id,
            Duration::from_secs(settings.request_timeout_secs),
            settings.max_retries,
        )
        .with_jitter();
        let client = Client { settings, http };
        client.token_blocking().map_err(|e| client.http.permanent(e))?;
        Ok(Self {
            client: Arc::new(client),
        })
    }
}

/// Everything a request needs; shared by the source and its feeds.
struct Client {
    settings: GdriveSettings,
    /// Sends, counts and retries every request; knows the source id.
    http: RetryingClient,
}

/// A non-retryable HTTP error answer, with Google's error details.
#[derive(Debug)]
struct Refusal {
    status: u16,
    detail: GoogleError,
    /// `source …: GET /path: HTTP 400 invalid: Invalid Value`.
    context: String,
}

impl Refusal {
    fn into_error(self) -> Error {
        Error::Permanent { context: self.context }
    }
}

/// A decoded Google error body, reduced to what decisions need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GoogleError {
    /// `error.message`.
    pub message: String,
    /// `error.errors[].reason`.
    pub reasons: Vec<String>,
    /// `error.errors[].location`.
    pub locations: Vec<String>,
}

impl GoogleError {
    /// Parses `{"error":{"code","message","errors":[{reason,location,…}],"status"}}`;
    /// anything else becomes a message of its first 200 characters.
    pub fn parse(body: &str) -> Self {
        #[derive(Deserialize)]
        struct Wrap {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(default)]
            message: String,
            #[serde(default)]
            errors: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            reason: Option<String>,
            location: Option<String>,
        }
        match serde_json::from_str::<Wrap>(body) {
            Ok(w) => Self {
                message: w.error.message,
                reasons: w.error.errors.iter().filter_map(|e| e.reason.clone()).collect(),
                locations: w.error.errors.iter().filter_map(|e| e.location.clone()).collect(),
            },
            Err(_) => {
                let trimmed = body.trim();
                Self {
                    message: if trimmed.is_empty() {
                        "(empty body)".to_owned()
                    } else {
                        trimmed.chars().take(200).collect()
                    },
                    ..Self::default()
                }
            }
        }
    }

    fn has_reason(&self, reason: &str) -> bool {
        self.reasons.iter().any(|r| r == reason)
    }

    /// Drive's rate limits: 403 `userRateLimitExceeded`/`rateLimitExceeded`, 429 `rateLimitExceeded`.
    pub fn is_rate_limit(&self) -> bool {
        self.has_reason("userRateLimitExceeded") || self.has_reason("rateLimitExceeded")
    }

    fn summary(&self) -> String {
        match self.reasons.first() {
            Some(r) => format!("{r}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// Whether a `changes.list` refusal means the saved page token is unusable.
/// Drive answers a bad or unknown token with 400 `invalid` at location
/// `pageToken` ("Invalid Value"); 404 is treated the same, defensively.
pub fn is_token_refusal(status: u16, e: &GoogleError) -> bool {
    (status == 400 && (e.locations.iter().any(|l| l == "pageToken") || e.has_reason("invalid"))) || status == 404
}

impl Client {
    /// `path` (without leading '/') under `base_url`.
    fn url(&self, path: &str) -> Result<Url, Error> {
        self.settings
            .base_url
            .join(path)
            .map_err(|e| self.http.permanent(format_args!("cannot build URL for {path}: {e}")))
    }

    /// The token, read synchronously (only at construction, to fail early).
    fn token_blocking(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.settings.access_token_env {
            let t = std::env::var(var).map_err(|e| format!("access_token_env {var:?}: {e}"))?;
            return Ok(Some(t.trim().to_owned()));
        }
        if let Some(path) = &self.settings.access_token_file {
            let t = std::fs::read_to_string(path).map_err(|e| format!("access_token_file {}: {e}", path.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        Ok(None)
    }

    /// The token as of now: re-read every request so an external refresher works.
    async fn token(&self) -> Result<Option<String>, Error> {
        if let Some(path) = &self.settings.access_token_file {
            let t = tokio::fs::read_to_string(path).await.map_err(|e| {
                self.http
                    .permanent(format_args!("access_token_file {}: {e}", path.display()))
            })?;
            return Ok(Some(t.trim().to_owned()));
        }
        self.token_blocking().map_err(|e| self.http.permanent(e))
    }

    /// Adds the shared-drive parameters every call of that kind needs.
    fn drive_params(&self, url: &mut Url, listing: bool) {
        let mut q = url.query_pairs_mut();
        q.append_pair("supportsAllDrives", "true");
        q.append_pair("includeItemsFromAllDrives", "true");
        if let Some(d) = &self.settings.drive_id {
            if listing {
                q.append_pair("corpora", "drive");
            }
            q.append_pair("driveId", d);
        }
    }

    /// GETs `url` with auth, retrying rate limits (403/429 with a rate-limit reason),
    /// 5xx and network failures with exponential backoff (or `Retry-After` when sent).
    /// Every attempt is counted in `calls`. Other error statuses come back as a [`Refusal`].
    async fn get(&self, url: &Url, calls: &ApiCalls) -> Result<Result<Vec<u8>, Refusal>, Error> {
        let label = format!("GET {}", url.path());
        let build = move || async move {
            // Re-read for every attempt, so a refreshed token is picked up mid-retry.
            let token = self.token().await?;
            let req = self.http.http().get(url.clone()).header(ACCEPT, "application/json");
            Ok(match &token {
                Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
                None => req,
            })
        };
        let reply = self.http.send(&label, build, Body::Always, classify, calls).await?;
        if reply.status.is_success() {
            return Ok(Ok(reply.body));
        }
        let status = reply.status.as_u16();
        let detail = GoogleError::parse(&reply.text());
        let hint = if status == 401 {
            " (access token invalid or expired; tidemark does not refresh tokens)"
        } else {
            ""
        };
        Ok(Err(Refusal {
            status,
            context: format!(
                "{}: HTTP {status}: {}{hint}",
                self.http.context(&label),
                detail.summary()
            ),
            detail,
        }))
    }

    /// GETs and decodes JSON; refusals become `Permanent`.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &Url, calls: &ApiCalls) -> Result<T, Error> {
        let body = self.get(url, calls).await?.map_err(Refusal::into_error)?;
        self.decode(url, &body)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, url: &Url, body: &[u8]) -> Result<T, Error> {
        self.http.decode_json(format_args!("GET {}", url.path()), body)
    }

    /// `changes.getStartPageToken`: the token of the next change.
    async fn start_page_token(&self, calls: &ApiCalls) -> Result<String, Error> {
        let mut url = self.url("drive/v3/changes/startPageToken")?;
        url.query_pairs_mut().append_pair("supportsAllDrives", "true");
        if let Some(d) = &self.settings.drive_id {
            url.query_pairs_mut().append_pair("driveId", d);
        }
        let body: StartPageToken = self.get_json(&url, calls).await?;
        if body.start_page_token.is_empty() {
            return Err(self
                .http
                .permanent(format_args!("GET {}: empty startPageToken", url.path())));
        }
        Ok(body.start_page_token)
    }

    /// `files.list` of one folder's children (one page).
    async fn list_children(&self, folder: &str, page: Option<&str>, calls: &ApiCalls) -> Result<FileList, Error> {
        let mut url = self.url("drive/v3/files")?;
        url.query_pairs_mut()
            // Ids are checked to be [A-Za-z0-9_-], so no quote can end the literal early.
            .append_pair("q", &format!("'{folder}' in parents and trashed=false"))
            .append_pair("pageSize", &self.settings.page_size.clamp(1, MAX_PAGE_SIZE).to_string())
            .append_pair("fields", LIST_FIELDS);
        if let Some(p) = page {
            url.query_pairs_mut().append_pair("pageToken", p);
        }
        self.drive_params(&mut url, true);
        self.get_json(&url, calls).await
    }

    /// `changes.list` (one page); a refused token is `CursorExpired`.
    async fn list_changes(&self, token: &str, calls: &ApiCalls) -> Result<ChangeList, Error> {
        let mut url = self.url("drive/v3/changes")?;
        url.query_pairs_mut()
            .append_pair("pageToken", token)
            .append_pair("pageSize", &self.settings.page_size.clamp(1, MAX_PAGE_SIZE).to_string())
            .append_pair("includeRemoved", "true")
            .append_pair("fields", CHANGE_FIELDS);
        self.drive_params(&mut url, false);
        match self.get(&url, calls).await? {
            Ok(body) => self.decode(&url, &body),
            Err(r) if is_token_refusal(r.status, &r.detail) => Err(Error::CursorExpired {
                context: format!(
                    "source {}: GET {}: page token {token:?} refused (HTTP {}: {})",
                    self.http.source(),
                    url.path(),
                    r.status,
                    r.detail.summary()
                ),
            }),
            Err(r) => Err(r.into_error()),
        }
    }

    /// Downloads one document; `None` if Drive no longer has it.
    async fn download(&self, meta: &DocMeta, calls: &ApiCalls) -> Result<Option<FetchedDoc>, Error> {
        let id = &meta.id.0;
        if !is_drive_id(id) {
            // Cannot be a Drive id, so Drive cannot have it.
            return Ok(None);
        }
        let kind = meta.version.split_once(':').and_then(|(tag, _)| Kind::from_tag(tag));
        let mut url = self.url("drive/v3/files")?;
        let Ok(mut segments) = url.path_segments_mut() else {
            return Err(self.http.permanent("base_url cannot have a path"));
        };
        segments.push(id);
        match kind.and_then(Kind::export_mime) {
            Some(mime) => {
                segments.push("export");
                drop(segments);
                url.query_pairs_mut().append_pair("mimeType", mime);
            }
            None => {
                drop(segments);
                url.query_pairs_mut()
                    .append_pair("alt", "media")
                    .append_pair("supportsAllDrives", "true");
            }
        }
        let body = match self.get(&url, calls).await? {
            Ok(b) => b,
            Err(r) if r.status == 404 => return Ok(None),
            // A version without a tag (not written by this connector): a Google
            // Doc refuses alt=media, so export it instead (one more call).
            Err(r) if kind.is_none() && r.detail.has_reason("fileNotDownloadable") => {
                let mut url = self.url("drive/v3/files")?;
                if let Ok(mut s) = url.path_segments_mut() {
                    s.push(id).push("export");
                }
                url.query_pairs_mut().append_pair("mimeType", "text/plain");
                match self.get(&url, calls).await? {
                    Ok(b) => b,
                    Err(r) if r.status == 404 => return Ok(None),
                    Err(r) => return Err(self.file_error(meta, r)),
                }
            }
            Err(r) => return Err(self.file_error(meta, r)),
        };
        let content = match String::from_utf8(body) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(source = %self.http.source(), file = %id, "content is not UTF-8; invalid bytes replaced");
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        // Exports may begin with a byte-order mark; it is not content.
        let content = content.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(content);
        Ok(Some(FetchedDoc {
            meta: meta.clone(),
            content,
            links: Vec::new(),
        }))
    }

    fn file_error(&self, meta: &DocMeta, r: Refusal) -> Error {
        // e.g. 403 exportSizeLimitExceeded (exports are capped at 10 MB): retrying cannot help,
        // and the job goes to the dead-letter stream naming the file.
        Error::Permanent {
            context: format!("{} (file {} {:?})", r.context, meta.id, meta.title),
        }
    }
}

/// How a file's content is read; the tag is the prefix of `DocMeta.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text file: `alt=media`.
    Text,
    /// A Google Doc: export `text/plain`.
    Doc,
    /// A Google Sheet: export `text/csv` (Drive exports the first sheet only).
    Sheet,
    /// A Google Slides deck: export `text/plain`.
    Slides,
}

impl Kind {
    /// The kind of a `mimeType`, or `None` if it is not synced (folders, forms, binaries…).
    pub fn of_mime(mime: &str) -> Option<Kind> {
        match mime {
            "application/vnd.google-apps.document" => Some(Kind::Doc),
            "application/vnd.google-apps.spreadsheet" => Some(Kind::Sheet),
            "application/vnd.google-apps.presentation" => Some(Kind::Slides),
            m if m.starts_with("text/") => Some(Kind::Text),
            "application/json" | "application/xml" | "application/x-yaml" | "application/yaml" => Some(Kind::Text),
            _ => None,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Doc => "gdoc",
            Kind::Sheet => "gsheet",
            Kind::Slides => "gslides",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        [Kind::Text, Kind::Doc, Kind::Sheet, Kind::Slides]
            .into_iter()
            .find(|k| k.tag() == tag)
    }

    fn export_mime(self) -> Option<&'static str> {
        match self {
            Kind::Text => None,
            Kind::Doc | Kind::Slides => Some("text/plain"),
            Kind::Sheet => Some("text/csv"),
        }
    }
}

/// `DocMeta.version` for a Drive `version` of a file of kind `kind`.
pub fn version_string(kind: Kind, version: &str) -> String {
    format!("{}:{version}", kind.tag())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartPageToken {
    #[serde(default)]
    start_page_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileList {
    next_page_token: Option<String>,
    #[serde(default)]
    files: Vec<DriveFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeList {
    next_page_token: Option<String>,
    new_start_page_token: Option<String>,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    change_type: Option<String>,
    #[serde(default)]
    removed: bool,
    file_id: Option<String>,
    file: Option<DriveFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveFile {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    mime_type: String,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default)]
    trashed: bool,
    /// RFC 3339 in UTC as Drive sends it (a zoneless one would be read as UTC).
    #[serde(default, deserialize_with = "clock::deserialize_opt_utc")]
    modified_time: Option<DateTime<Utc>>,
    /// Drive serves `version` (int64) as a JSON string.
    version: Option<String>,
}

impl DriveFile {
    fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }

    fn parent(&self) -> Option<&str> {
        self.parents.first().map(String::as_str)
    }

    /// The document's metadata, if it is a kind we sync.
    fn meta(&self) -> Option<DocMeta> {
        let kind = Kind::of_mime(&self.mime_type)?;
        Some(DocMeta {
            id: DocumentId(self.id.clone()),
            version: version_string(kind, self.version.as_deref().unwrap_or("0")),
            title: self.name.clone(),
            parent: self.parent().map(|p| DocumentId(p.to_owned())),
            modified_at: self.modified_time,
        })
    }
}

/// The saved tree: folders under the synced folder, and each document's folder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tree {
    /// Folder id -> (parent id, name); the synced folder itself is implicit.
    folders: BTreeMap<String, (String, String)>,
    /// Document id -> parent folder id.
    docs: BTreeMap<String, String>,
}

impl Tree {
    /// Reads the tree from a checkpoint's scope; `None` if absent or unreadable.
    fn load(scope: &BTreeMap<String, String>) -> Option<Tree> {
        Some(Tree {
            folders: serde_json::from_str(scope.get(SCOPE_FOLDERS)?).ok()?,
            docs: serde_json::from_str(scope.get(SCOPE_DOCS)?).ok()?,
        })
    }

    fn save(&self, scope: &mut BTreeMap<String, String>) {
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
fn reachable(root: &str, folders: &BTreeMap<String, (String, String)>) -> HashSet<String> {
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

#[async_trait]
impl Source for Gdrive {
    fn id(&self) -> &SourceId {
        self.client.http.source()
    }

    async fn open_feed(
        &self,
        checkpoint: &Checkpoint,
        mode: SyncMode,
        held: Held,
        calls: ApiCalls,
    ) -> Result<Box<dyn ChangeFeed>, Error> {
        let c = &self.client;
        let s = &c.settings;
        let drive = s.drive_id.clone().unwrap_or_default();
        let same_scope = checkpoint.scope.get(SCOPE_FOLDER_ID) == Some(&s.folder_id)
            && checkpoint.scope.get(SCOPE_DRIVE_ID).map_or("", String::as_str) == drive;
        let tree = Tree::load(&checkpoint.scope);
        let sweep_due = s.sweep_every_hours.is_some_and(|h| {
            let swept = checkpoint
                .scope
                .get(SCOPE_SWEPT_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            let hours = i64::try_from(h).unwrap_or(i64::MAX);
            swept.is_none_or(|t| Utc::now() - t.with_timezone(&Utc) >= chrono::Duration::hours(hours.min(1_000_000)))
        });
        let reason = match (&checkpoint.cursor, &tree) {
            _ if mode == SyncMode::Full => Some("full run"),
            (None, _) => Some("no change token yet"),
            _ if !same_scope => Some("synced folder or drive changed"),
            (_, None) => Some("saved folder map missing or unreadable"),
            _ if sweep_due => Some("periodic reconciliation due"),
            _ => None,
        };
        let mut scope = checkpoint.scope.clone();
        scope.insert(SCOPE_FOLDER_ID.to_owned(), s.folder_id.clone());
        scope.insert(SCOPE_DRIVE_ID.to_owned(), drive);
        let feed = match (reason, &checkpoint.cursor, tree) {
            (None, Some(token), Some(tree)) => GdriveFeed {
                client: Arc::clone(&self.client),
                calls,
                held,
                base: checkpoint.clone(),
                changes_from: Some(token.clone()),
                cursor: Some(token.clone()),
                queue: VecDeque::new(),
                queued: HashSet::new(),
                tree,
                scope,
                complete: false,
                runs_since_sweep: checkpoint.runs_since_sweep.saturating_add(1),
                stats: Stats::default(),
                reason: format!("changes since page token {token}"),
            },
            (reason, _, _) => {
                // Before listing: whatever changes while we list is in the next run.
                let token = c.start_page_token(&calls).await?;
                scope.insert(SCOPE_SWEPT_AT.to_owned(), Utc::now().to_rfc3339());
                let mut queue = VecDeque::new();
                queue.push_back((s.folder_id.clone(), None));
                GdriveFeed {
                    client: Arc::clone(&self.client),
                    calls,
                    held,
                    base: checkpoint.clone(),
                    changes_from: None,
                    cursor: Some(token),
                    queue,
                    queued: HashSet::from([s.folder_id.clone()]),
                    tree: Tree::default(),
                    scope,
                    complete: true,
                    runs_since_sweep: 0,
                    stats: Stats::default(),
                    reason: format!("complete listing ({})", reason.unwrap_or("no change token yet")),
                }
            }
        };
        Ok(Box::new(feed))
    }

    async fn fetch(&self, docs: &[DocMeta], calls: &ApiCalls) -> Result<Fetched, Error> {
        let mut seen = HashSet::new();
        // Owned items and handles: the stream's futures must not borrow from the
        // closure (a higher-ranked lifetime the async-trait future cannot name).
        let unique: Vec<DocMeta> = docs.iter().filter(|d| seen.insert(d.id.clone())).cloned().collect();
        // Drive has no batch download: one call per file, a few in flight.
        let results: Vec<(DocumentId, Result<Option<FetchedDoc>, Error>)> = futures::stream::iter(unique)
            .map(|meta| {
                let client = Arc::clone(&self.client);
                let calls = calls.clone();
                async move {
                    let r = client.download(&meta, &calls).await;
                    (meta.id, r)
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let mut out = Fetched::default();
        for (id, r) in results {
            match r? {
                Some(doc) => out.docs.push(doc),
                None => out.missing.push(id),
            }
        }
        Ok(out)
    }
}

/// Counts for the run note.
#[derive(Debug, Default, Clone)]
struct Stats {
    changes: usize,
    listed_folders: usize,
    documents: usize,
    skipped: usize,
    deleted: usize,
}

/// One run's change feed: first the change list (incremental runs), then
/// folder listings, one `files.list` page per `next_page`.
struct GdriveFeed {
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
    scope: BTreeMap<String, String>,
    complete: bool,
    runs_since_sweep: u32,
    stats: Stats,
    reason: String,
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
        let list = c.list_children(&folder, page.as_deref(), &self.calls).await?;
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
                if f.id != c.settings.folder_id {
                    self.tree.folders.insert(f.id.clone(), (folder.clone(), f.name.clone()));
                    if self.queued.insert(f.id.clone()) {
                        self.queue.push_back((f.id.clone(), None));
                    }
                }
                continue;
            }
            match f.meta() {
                Some(meta) => {
                    self.stats.documents += 1;
                    self.tree.docs.insert(f.id.clone(), folder.clone());
                    observations.push(Observation::Present(meta));
                }
                None => self.stats.skipped += 1,
            }
        }
        Ok(Some(FeedPage { observations }))
    }

    fn end(&self) -> FeedEnd {
        let mut scope = self.scope.clone();
        self.tree.save(&mut scope);
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
                    ", {} folder(s) entering the tree listed ({} document(s))",
                    st.listed_folders, st.documents
                ));
            }
        }
        if st.skipped > 0 {
            note.push_str(&format!(
                "; {} file(s) skipped (not text or exportable to text)",
                st.skipped
            ));
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
        self.stats.changes = changes.len();

        let old = self.tree.folders.clone();
        let mut folders = old.clone();
        let mut root_gone = false;
        // Pass 1: the folder tree after every change.
        for ch in &changes {
            let Some(id) = ch.file_id.as_deref().or(ch.file.as_ref().map(|f| f.id.as_str())) else {
                continue;
            };
            let gone = ch.removed || ch.file.as_ref().is_none_or(|f| f.trashed);
            if id == root {
                root_gone |= gone;
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
            // The synced folder itself was trashed or deleted: nothing is in scope, and
            // the next run lists from scratch (a restored folder is picked up then).
            for doc in std::mem::take(&mut self.tree.docs).into_keys() {
                deleted.insert(doc.clone());
                observations.push(Observation::Deleted(DocumentId(doc)));
            }
            self.stats.deleted = deleted.len();
            self.tree.folders.clear();
            self.cursor = None;
            self.reason.push_str(" (the synced folder was trashed or deleted)");
            return Ok(FeedPage { observations });
        }

        // Pass 2: each changed file against the final tree.
        let in_tree = |parent: Option<&str>| parent.is_some_and(|p| p == root || folders.contains_key(p));
        for ch in &changes {
            let Some(id) = ch.file_id.clone().or(ch.file.as_ref().map(|f| f.id.clone())) else {
                continue;
            };
            if id == root || old.contains_key(&id) || folders.contains_key(&id) {
                continue;
            }
            let present = match &ch.file {
                Some(f) if !ch.removed && !f.trashed && !f.is_folder() && in_tree(f.parent()) => f.meta(),
                _ => None,
            };
            match present {
                Some(meta) => {
                    self.tree.docs.insert(
                        id.clone(),
                        meta.parent.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                    );
                    observations.push(Observation::Present(meta));
                }
                None => {
                    let known = self.tree.docs.remove(&id).is_some() || self.held.contains_key(&DocumentId(id.clone()));
                    if ch
                        .file
                        .as_ref()
                        .is_some_and(|f| !f.is_folder() && Kind::of_mime(&f.mime_type).is_none())
                    {
                        self.stats.skipped += 1;
                    }
                    if known && deleted.insert(id.clone()) {
                        observations.push(Observation::Deleted(DocumentId(id)));
                    }
                }
            }
        }

        // Pass 3: documents under folders that left the tree.
        let departed: HashSet<&String> = old.keys().filter(|id| !folders.contains_key(*id)).collect();
        let orphans: Vec<String> = self
            .tree
            .docs
            .iter()
            .filter(|(_, parent)| departed.contains(parent))
            .map(|(doc, _)| doc.clone())
            .collect();
        for doc in orphans {
            self.tree.docs.remove(&doc);
            if deleted.insert(doc.clone()) {
                observations.push(Observation::Deleted(DocumentId(doc)));
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
        self.tree.folders = folders;
        Ok(FeedPage { observations })
    }
}

/// Drive's answers: 429, 5xx and a 403 whose reason is a rate limit are
/// transient; every other status goes back to the caller, which decides what a
/// 404 or a refused page token means.
fn classify(reply: &client::Reply) -> Verdict {
    if reply.status.is_success() {
        return Verdict::Accept;
    }
    let detail = GoogleError::parse(&reply.text());
    let rate_limited = reply.status.as_u16() == 403 && detail.is_rate_limit();
    if rate_limited || client::is_transient(reply.status) {
        Verdict::Retry {
            detail: format!("HTTP {}: {}", reply.status.as_u16(), detail.summary()),
            after: client::retry_after(&reply.headers),
        }
    } else {
        Verdict::Accept
    }
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
    use crate::simulators::gdrive::{DOC_MIME, FORM_MIME, GdriveSim, SHEET_MIME, SimConfig};
    use crate::sources::SourceSettings;

    async fn start(cfg: SimConfig) -> (GdriveSim, Url) {
        let sim = GdriveSim::new(cfg);
        let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
        (sim, Url::parse(&format!("http://{addr}")).expect("url"))
    }

    fn connector(base: Url, tweak: impl FnOnce(&mut GdriveSettings)) -> Gdrive {
        let mut s = GdriveSettings::new(base, "root-folder");
        tweak(&mut s);
        Gdrive::new(SourceId::new("gdrive-eng").expect("id"), s, reqwest::Client::new()).expect("connector")
    }

    async fn drain(feed: &mut Box<dyn ChangeFeed>) -> Result<(Vec<Observation>, FeedEnd), Error> {
        let mut all = Vec::new();
        while let Some(p) = feed.next_page().await? {
            all.extend(p.observations);
        }
        Ok((all, feed.end()))
    }

    async fn run(
        src: &Gdrive,
        cp: &Checkpoint,
        mode: SyncMode,
        held: &HashMap<DocumentId, String>,
        meter: &ApiCalls,
    ) -> Result<(Vec<Observation>, FeedEnd), Error> {
        let mut feed = src.open_feed(cp, mode, Arc::new(held.clone()), meter.clone()).await?;
        drain(&mut feed).await
    }

    /// What a sync that applied `obs` would hold.
    fn apply(held: &mut HashMap<DocumentId, String>, obs: &[Observation]) {
        for o in obs {
            match o {
                Observation::Present(m) => {
                    held.insert(m.id.clone(), m.version.clone());
                }
                Observation::Deleted(id) => {
                    held.remove(id);
                }
                Observation::Moved { from, to } => {
                    held.remove(from);
                    held.insert(to.id.clone(), to.version.clone());
                }
            }
        }
    }

    fn present_ids(obs: &[Observation]) -> HashSet<String> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m.id.0.clone()),
                _ => None,
            })
            .collect()
    }

    fn deleted_ids(obs: &[Observation]) -> HashSet<String> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Deleted(id) => Some(id.0.clone()),
                _ => None,
            })
            .collect()
    }

    /// A full listing asks for the start token first, walks every folder, reports
    /// every document (skipping forms), and saves the folder map and doc parents.
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
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &HashMap::new(), &meter)
            .await
            .expect("feed");
        let reqs = sim.requests();
        assert_eq!(reqs[0].label, "GET /drive/v3/changes/startPageToken");
        assert!(end.complete_listing);
        let expected: HashSet<String> = sim
            .files_in_tree()
            .into_iter()
            .filter(|f| f.mime_type != FORM_MIME)
            .map(|f| f.id)
            .collect();
        assert_eq!(present_ids(&obs), expected);
        assert_eq!(meter.get(), sim.total_calls());
        assert_eq!(end.checkpoint.cursor, Some((sim.next_change_id()).to_string()));
        assert_eq!(scope_folders(&end.checkpoint.scope).map(|f| f.len()), Some(3));
        assert_eq!(scope_document_count(&end.checkpoint.scope), Some(40));
        assert!(
            end.note.as_deref().is_some_and(|n| n.contains("1 file(s) skipped")),
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
        assert!(docs.iter().any(|m| m.version.starts_with("text:")));
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
        let mut held = HashMap::new();
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
        let mut held = HashMap::new();
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
        assert_eq!(held.keys().map(|k| k.0.clone()).collect::<HashSet<_>>(), expected);
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
        let (_, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &HashMap::new(), &meter)
            .await
            .expect("full");
        let (_, recent) = run(&src, &end.checkpoint, SyncMode::Incremental, &HashMap::new(), &meter)
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
        no_map.scope.remove(SCOPE_DOCS);
        for (cp, why) in [
            (old, "periodic reconciliation due"),
            (other_folder, "synced folder or drive changed"),
            (no_map, "saved folder map missing"),
        ] {
            let (obs, end) = run(&src, &cp, SyncMode::Incremental, &HashMap::new(), &meter)
                .await
                .expect("sweep");
            assert!(end.complete_listing, "{why}");
            assert_eq!(obs.len(), 8, "{why}");
            assert_eq!(end.checkpoint.runs_since_sweep, 0);
            assert!(end.note.as_deref().is_some_and(|n| n.contains(why)), "{:?}", end.note);
        }
    }

    /// Trashing the synced folder itself deletes every document and drops the
    /// token, so the next run lists from scratch.
    #[tokio::test]
    async fn trashed_root_deletes_everything() {
        let (sim, base) = start(SimConfig {
            files: 6,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let meter = ApiCalls::default();
        let mut held = HashMap::new();
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &held, &meter)
            .await
            .expect("full");
        apply(&mut held, &obs);
        assert!(sim.trash_file("root-folder"));
        let (obs, end) = run(&src, &end.checkpoint, SyncMode::Incremental, &held, &meter)
            .await
            .expect("inc");
        assert_eq!(deleted_ids(&obs).len(), 6);
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
        let (_, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &HashMap::new(), &meter)
            .await
            .expect("full");
        sim.expire_all_tokens();
        match run(&src, &end.checkpoint, SyncMode::Incremental, &HashMap::new(), &meter).await {
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

    /// 403 userRateLimitExceeded and 429 are retried with backoff, every attempt
    /// counted; a 403 for another reason is permanent; exhausted retries are retryable.
    #[tokio::test]
    async fn rate_limits_are_retried() {
        let (sim, base) = start(SimConfig {
            files: 3,
            subfolders: 0,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base.clone(), |_| {});
        let meter = ApiCalls::default();
        sim.fail_next(2, 403);
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &HashMap::new(), &meter)
            .await
            .expect("full");
        assert_eq!(obs.len(), 3);
        assert_eq!(meter.get(), 4, "two 403s, the start token, one folder listing");
        let meter = ApiCalls::default();
        sim.fail_next(1, 429);
        run(&src, &end.checkpoint, SyncMode::Incremental, &HashMap::new(), &meter)
            .await
            .expect("inc");
        assert_eq!(meter.get(), 2, "429 then changes.list");

        let src = connector(base, |s| s.max_retries = 1);
        sim.fail_next(5, 500);
        let err = run(&src, &end.checkpoint, SyncMode::Incremental, &HashMap::new(), &meter)
            .await
            .expect_err("retries run out");
        assert!(err.is_retryable(), "{err}");
        sim.fail_next(0, 500);
        sim.fail_next(1, 401);
        match run(&src, &end.checkpoint, SyncMode::Incremental, &HashMap::new(), &meter).await {
            Err(Error::Permanent { context }) => {
                assert!(
                    context.starts_with("source gdrive-eng: GET /drive/v3/changes: HTTP 401: authError"),
                    "{context}"
                );
                assert!(context.contains("does not refresh tokens"), "{context}");
            }
            other => panic!("expected Permanent, got {:?}", other.map(|(o, _)| o.len())),
        }
    }

    /// Fetch exports Google Docs and Sheets, downloads text, reports 404 as missing.
    #[tokio::test]
    async fn fetch_by_kind_and_missing() {
        let (sim, base) = start(SimConfig::default()).await;
        let src = connector(base, |_| {});
        let doc = sim.create_file("D", "root-folder", DOC_MIME, "doc text").expect("doc");
        let sheet = sim
            .create_file("S", "root-folder", SHEET_MIME, "a,b\n1,2\n")
            .expect("sheet");
        let txt = sim
            .create_file("t.md", "root-folder", "text/markdown", "# t")
            .expect("txt");
        let gone = sim
            .create_file("g.txt", "root-folder", "text/plain", "g")
            .expect("gone");
        let meter = ApiCalls::default();
        let (obs, _) = run(&src, &Checkpoint::default(), SyncMode::Full, &HashMap::new(), &meter)
            .await
            .expect("full");
        let metas: Vec<DocMeta> = obs
            .into_iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(sim.delete_file(&gone));
        sim.reset_calls();
        let meter = ApiCalls::default();
        let got = src.fetch(&metas, &meter).await.expect("fetch");
        assert_eq!(meter.get(), 4, "one call per file");
        assert_eq!(got.missing, vec![DocumentId(gone)]);
        let content: HashMap<String, String> = got
            .docs
            .iter()
            .map(|d| (d.meta.id.0.clone(), d.content.clone()))
            .collect();
        assert_eq!(content.get(&doc).map(String::as_str), Some("doc text"));
        assert_eq!(content.get(&sheet).map(String::as_str), Some("a,b\n1,2\n"));
        assert_eq!(content.get(&txt).map(String::as_str), Some("# t"));
        let calls = sim.calls();
        assert_eq!(calls.get("GET /drive/v3/files/{id}/export"), Some(&2));
        assert_eq!(calls.get("GET /drive/v3/files/{id}"), Some(&2));
    }

    /// With drive_id, every call carries the shared-drive parameters.
    #[tokio::test]
    async fn shared_drive_parameters() {
        let (sim, base) = start(SimConfig {
            files: 6,
            drive_id: Some("0AShared".into()),
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |s| s.drive_id = Some("0AShared".into()));
        let meter = ApiCalls::default();
        let (obs, end) = run(&src, &Checkpoint::default(), SyncMode::Full, &HashMap::new(), &meter)
            .await
            .expect("full");
        assert_eq!(obs.len(), 6);
        let id = sim.files_in_tree()[0].id.clone();
        sim.update_file(&id, None, Some("x"));
        let (obs, _) = run(&src, &end.checkpoint, SyncMode::Incremental, &HashMap::new(), &meter)
            .await
            .expect("inc");
        assert_eq!(present_ids(&obs), HashSet::from([id]));
        for r in sim.requests() {
            let p = &r.params;
            assert_eq!(p.get("supportsAllDrives").map(String::as_str), Some("true"), "{r:?}");
            assert_eq!(p.get("driveId").map(String::as_str), Some("0AShared"), "{r:?}");
            if r.label == "GET /drive/v3/files" {
                assert_eq!(p.get("corpora").map(String::as_str), Some("drive"));
                assert_eq!(p.get("includeItemsFromAllDrives").map(String::as_str), Some("true"));
            }
        }
    }

    /// Settings parse with documented defaults, and every bad value is reported by field.
    #[test]
    fn settings_defaults_and_validation() {
        let mut problems = Vec::new();
        let ok: toml::Value = toml::from_str("folder_id = \"1AbC_d-E\"").expect("toml");
        let Some(SourceSettings::Gdrive(s)) = SourceSettings::parse("gdrive", ok, "sources[0]", &mut problems) else {
            panic!("parse failed: {problems:?}");
        };
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.base_url.as_str(), "https://www.googleapis.com/");
        assert_eq!(
            (s.page_size, s.max_retries, s.request_timeout_secs, s.sweep_every_hours),
            (1000, 5, 30, None)
        );
        assert!(s.drive_id.is_none());

        let bad: toml::Value = toml::from_str(
            "base_url = \"ftp://x\"\nfolder_id = \"a' or '1\"\ndrive_id = \"\"\npage_size = 5000\nsweep_every_hours = 0\naccess_token_env = \"TIDEMARK_TEST_SURELY_UNSET_VAR\"\naccess_token_file = \"/nonexistent/token\"",
        )
        .expect("toml");
        let mut problems = Vec::new();
        SourceSettings::parse("gdrive", bad, "sources[0]", &mut problems);
        let all = problems.join("\n");
        for needle in [
            "sources[0].settings.base_url: \"ftp://x\" is not an http(s) URL",
            "sources[0].settings.folder_id: \"a' or '1\" is not a Drive id",
            "sources[0].settings.drive_id: \"\"",
            "sources[0].settings.page_size: 5000 is outside 1..=1000",
            "sources[0].settings.sweep_every_hours: must be at least 1",
            "sources[0].settings.access_token_env: set only one",
            "sources[0].settings.access_token_env: environment variable \"TIDEMARK_TEST_SURELY_UNSET_VAR\" is not set",
            "sources[0].settings.access_token_file: cannot read /nonexistent/token",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let unknown: toml::Value = toml::from_str("folder_id = \"x\"\ncolour = 1").expect("toml");
        let mut problems = Vec::new();
        assert!(SourceSettings::parse("gdrive", unknown, "sources[1]", &mut problems).is_none());
        assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
    }

    /// Google error bodies parse into reasons and locations; a bad page token is
    /// recognised, a rate limit is told from a permission error.
    #[test]
    fn error_bodies_and_token_refusals() {
        let bad_token = r#"{"error":{"code":400,"message":"Invalid Value","errors":[{"domain":"global","reason":"invalid","message":"Invalid Value","locationType":"parameter","location":"pageToken"}]}}"#;
        let e = GoogleError::parse(bad_token);
        assert_eq!(e.reasons, vec!["invalid"]);
        assert!(is_token_refusal(400, &e));
        assert!(!is_token_refusal(403, &e));
        let limit = r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded","status":"PERMISSION_DENIED"}}"#;
        assert!(GoogleError::parse(limit).is_rate_limit());
        let denied = r#"{"error":{"errors":[{"domain":"global","reason":"insufficientFilePermissions","message":"no"}],"code":403,"message":"no"}}"#;
        assert!(!GoogleError::parse(denied).is_rate_limit());
        assert_eq!(GoogleError::parse("<html>oops</html>").message, "<html>oops</html>");
        assert_eq!(GoogleError::parse("").message, "(empty body)");
    }

    /// Versions carry the read method; mime types map to kinds or are skipped.
    #[test]
    fn kinds_and_versions() {
        assert_eq!(Kind::of_mime(DOC_MIME), Some(Kind::Doc));
        assert_eq!(Kind::of_mime("text/markdown"), Some(Kind::Text));
        assert_eq!(Kind::of_mime(FORM_MIME), None);
        assert_eq!(Kind::of_mime(FOLDER_MIME), None);
        assert_eq!(Kind::of_mime("application/pdf"), None);
        assert_eq!(version_string(Kind::Sheet, "17"), "gsheet:17");
        assert_eq!(Kind::from_tag("gslides"), Some(Kind::Slides));
        assert_eq!(Kind::from_tag("nope"), None);
    }

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
