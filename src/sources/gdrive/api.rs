//! The Drive API v3 as this connector speaks it: the [`Client`] (auth, URLs,
//! `changes.getStartPageToken`, `files.list`, `changes.list`, downloads and
//! exports), the wire types it decodes, [`GoogleError`], and [`classify`]: which
//! answers are retried.
//!
//! Invariants:
//! - Every HTTP attempt, retries included, is counted in `api_calls` (by
//!   [`client::RetryingClient`]); the 403 rate-limit rule is decided here.
//! - The bearer token is re-read from `access_token_env` / `access_token_file`
//!   for every attempt, so an external refresher works; tokens are never refreshed here.
//! - A refused page token (400 `invalid` at `pageToken`, 404, or 410 Gone) is
//!   `Error::CursorExpired`; every other refusal is `Error::Permanent`.
//! - [`Kind`] tags `DocMeta.version` with how the file is read (`gdoc:12`), so
//!   a download needs no metadata call.

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::Deserialize;
use url::Url;

use super::settings::{GdriveSettings, is_drive_id};
use super::sharing::{self, DrivePermission};
use crate::extract::{self, Format};
use crate::sources::client::{self, Body, RetryingClient, Verdict};
use crate::sources::clock;
use crate::sources::settings::api_root;
use crate::sources::{self, ApiCalls, DocMeta, Error, FetchedDoc};
use crate::types::DocumentId;

/// Largest `pageSize` of `changes.list` and `files.list`.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// `mimeType` of a folder.
pub(super) const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
/// `mimeType` of a shortcut (a pointer to another file; a document with no text).
pub(super) const SHORTCUT_MIME: &str = "application/vnd.google-apps.shortcut";
/// Fields asked of a file wherever one is read: `sha256Checksum` and
/// `modifiedTime` make its content version (see [`content_version`]),
/// `permissions` who may read it (absent in shared drives: see [`super::sharing`]).
macro_rules! file_fields {
    () => {
        concat!(
            "id,name,mimeType,parents,trashed,modifiedTime,version,size,sha256Checksum,webViewLink,driveId,permissions(",
            permission_fields!(),
            ")"
        )
    };
}
/// The Permission fields asked for wherever a file's permissions are read.
macro_rules! permission_fields {
    () => {
        "id,type,role,emailAddress,domain,allowFileDiscovery,deleted,view,expirationTime"
    };
}
/// [`permission_fields`], for `permissions.list`.
pub(super) const PERMISSION_FIELDS: &str = permission_fields!();
/// Fields asked of `changes.list`.
const CHANGE_FIELDS: &str = concat!(
    "nextPageToken,newStartPageToken,changes(changeType,removed,fileId,time,file(",
    file_fields!(),
    "))"
);
/// Fields asked of `files.get` for one file's metadata.
const FILE_FIELDS: &str = file_fields!();
/// Fields asked of `files.list`.
const LIST_FIELDS: &str = concat!("nextPageToken,files(", file_fields!(), ")");

/// Everything a request needs; shared by the source and its feeds.
pub(super) struct Client {
    pub(super) settings: GdriveSettings,
    /// Sends, counts and retries every request; knows the source id.
    pub(super) http: RetryingClient,
}

/// A non-retryable HTTP error answer, with Google's error details.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) detail: GoogleError,
    /// `source …: GET /path: HTTP 400 invalid: Invalid Value`.
    pub(super) context: String,
}

impl Refusal {
    pub(super) fn into_error(self) -> Error {
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

/// Whether a `changes.list` refusal means the saved page token is unusable, so
/// the run must start over with a full listing and id comparison. Drive
/// answers a bad or unknown token with 400 `invalid` at location `pageToken`
/// ("Invalid Value"); 404 (the token not found) and 410 Gone (Google's "a full
/// sync is required", `fullSyncRequired`) mean the same and are read the same.
pub fn is_token_refusal(status: u16, e: &GoogleError) -> bool {
    match status {
        400 => e.locations.iter().any(|l| l == "pageToken") || e.has_reason("invalid"),
        404 | 410 => true,
        _ => false,
    }
}

impl Client {
    /// `path` (without leading '/', e.g. `drive/v3/files`) under `base_url`;
    /// a `base_url` that already ends in `/drive/v3` is the Drive root itself.
    pub(super) fn url(&self, path: &str) -> Result<Url, Error> {
        let root = api_root(&self.settings.base_url);
        let path = if root.path().ends_with("/drive/v3/") {
            path.strip_prefix("drive/v3/").unwrap_or(path)
        } else {
            path
        };
        root.join(path)
            .map_err(|e| self.http.permanent(format_args!("cannot build URL for {path}: {e}")))
    }

    /// The token, read synchronously (only at construction, to fail early).
    pub(super) fn token_blocking(&self) -> Result<Option<String>, Error> {
        match self.settings.access_token() {
            Some(secret) => secret
                .read("access_token")
                .map(Some)
                .map_err(|e| self.http.permanent(e)),
            None => Ok(None),
        }
    }

    /// The token as of now: re-read every request so an external refresher works.
    async fn token(&self) -> Result<Option<String>, Error> {
        match self.settings.access_token() {
            Some(secret) => secret
                .read_async("access_token")
                .await
                .map(Some)
                .map_err(|e| self.http.permanent(e)),
            None => Ok(None),
        }
    }

    /// Adds the shared-drive parameters every call of that kind needs.
    pub(super) fn drive_params(&self, url: &mut Url, listing: bool) {
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
    pub(super) async fn get(&self, url: &Url, calls: &ApiCalls) -> Result<Result<Vec<u8>, Refusal>, Error> {
        self.send(reqwest::Method::GET, url, None, calls).await
    }

    /// Sends `method` to `url` with auth and, if given, a JSON `body`; retried
    /// and counted as [`Client::get`] is. Other error statuses come back as a [`Refusal`].
    pub(super) async fn send(
        &self,
        method: reqwest::Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        calls: &ApiCalls,
    ) -> Result<Result<Vec<u8>, Refusal>, Error> {
        let label = format!("{method} {}", url.path());
        let build = move || {
            let method = method.clone();
            async move {
                // Re-read for every attempt, so a refreshed token is picked up mid-retry.
                let token = self.token().await?;
                let mut req = self
                    .http
                    .http()
                    .request(method, url.clone())
                    .header(ACCEPT, "application/json");
                if let Some(body) = body {
                    req = req.json(body);
                }
                Ok(match &token {
                    Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
                    None => req,
                })
            }
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

    pub(super) fn decode<T: serde::de::DeserializeOwned>(&self, url: &Url, body: &[u8]) -> Result<T, Error> {
        self.http.decode_json(format_args!("GET {}", url.path()), body)
    }

    /// `changes.getStartPageToken`: the token of the next change.
    pub(super) async fn start_page_token(&self, calls: &ApiCalls) -> Result<String, Error> {
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
    pub(super) async fn list_children(
        &self,
        folder: &str,
        page: Option<&str>,
        calls: &ApiCalls,
    ) -> Result<FileList, Error> {
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
    pub(super) async fn list_changes(&self, token: &str, calls: &ApiCalls) -> Result<ChangeList, Error> {
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

    /// The synced folder `id` as Drive has it: its name (the head of every
    /// breadcrumb) and who may read it (everything under it inherits that).
    /// A folder Drive does not have is an error naming it: listing it would
    /// find nothing, and nothing should be deleted for that.
    pub(super) async fn synced_folder(&self, id: &str, calls: &ApiCalls) -> Result<DriveFile, Error> {
        let mut url = self.url("drive/v3/files")?;
        if let Ok(mut s) = url.path_segments_mut() {
            s.push(id);
        }
        url.query_pairs_mut()
            .append_pair("supportsAllDrives", "true")
            .append_pair(
                "fields",
                concat!("id,name,driveId,permissions(", permission_fields!(), ")"),
            );
        match self.get(&url, calls).await? {
            Ok(body) => {
                let mut folder: DriveFile = self.decode(&url, &body)?;
                self.fill_permissions(&mut [&mut folder], calls).await?;
                Ok(folder)
            }
            Err(r) if r.status == 404 => Err(Error::Permanent {
                context: format!("{}: the synced folder {id} was not found (folder_id)", r.context),
            }),
            Err(r) => Err(r.into_error()),
        }
    }

    /// The current metadata of one file (`files.get`); `None` if Drive no longer
    /// has it, it is in the trash, or it is not a document (a folder).
    async fn file_meta(&self, id: &str, calls: &ApiCalls) -> Result<Option<DocMeta>, Error> {
        let mut url = self.url("drive/v3/files")?;
        if let Ok(mut s) = url.path_segments_mut() {
            s.push(id);
        }
        url.query_pairs_mut()
            .append_pair("supportsAllDrives", "true")
            .append_pair("fields", FILE_FIELDS);
        match self.get(&url, calls).await? {
            Ok(body) => {
                let mut f: DriveFile = self.decode(&url, &body)?;
                self.fill_permissions(&mut [&mut f], calls).await?;
                Ok(if f.trashed { None } else { f.meta() })
            }
            Err(r) if r.status == 404 => Ok(None),
            Err(r) => Err(r.into_error()),
        }
    }

    /// Downloads one document; `None` if Drive no longer has it. A document
    /// named without a listing (a repair, an unsettled or failed document)
    /// carries no media type: its metadata is read first (one more call), so
    /// it is written with its URL and type like any other.
    pub(super) async fn download(&self, meta: &DocMeta, calls: &ApiCalls) -> Result<Option<FetchedDoc>, Error> {
        let id = &meta.id.0;
        if !is_drive_id(id) {
            // Cannot be a Drive id, so Drive cannot have it.
            return Ok(None);
        }
        let fresh;
        let meta = if meta.mime_type.is_none() {
            match self.file_meta(id, calls).await? {
                Some(m) => {
                    fresh = m;
                    &fresh
                }
                None => return Ok(None),
            }
        } else {
            meta
        };
        let kind = meta.version.split_once(':').and_then(|(tag, _)| Kind::from_tag(tag));
        if kind == Some(Kind::MetadataOnly) {
            let note = match meta.mime_type.as_deref() {
                Some(SHORTCUT_MIME) => {
                    "no text: a shortcut; the file it points to is a document where it lives, when that is in the synced folder"
                        .to_owned()
                }
                mime => format!("no text: {} has no text extractor", mime.unwrap_or("this file type")),
            };
            return Ok(Some(FetchedDoc::metadata_only(meta.clone(), note)));
        }
        let cap = self.settings.max_file_bytes;
        if let Some(size) = meta
            .size
            .filter(|s| *s > cap && kind.is_none_or(|k| k.export_mime().is_none()))
        {
            return Ok(Some(FetchedDoc::metadata_only(
                meta.clone(),
                format!("not downloaded: {size} bytes is over max_file_bytes ({cap})"),
            )));
        }
        let mut url = self.url("drive/v3/files")?;
        let Ok(mut segments) = url.path_segments_mut() else {
            return Err(self.http.permanent("base_url cannot have a path"));
        };
        segments.push(id);
        let export = kind.and_then(Kind::export_mime);
        match export {
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
        let (body, exported) = match self.get(&url, calls).await? {
            Ok(b) => (b, export.is_some()),
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
                    Ok(b) => (b, true),
                    Err(r) if r.status == 404 => return Ok(None),
                    Err(r) => return Err(self.file_error(meta, r)),
                }
            }
            Err(r) => return Err(self.file_error(meta, r)),
        };
        // Exports are text (text/plain, text/csv); stored files are read by their type,
        // or by their bytes when the type says nothing (application/octet-stream).
        let format = if exported {
            Format::Text
        } else {
            match meta.mime_type.as_deref().map(Format::of_mime) {
                Some(f) if f != Format::Unsupported => f,
                _ => Format::sniff(&body),
            }
        };
        let source_sha256 = Some(sources::sha256_hex(&body));
        let size = body.len() as u64;
        let extracted = tokio::task::spawn_blocking(move || extract::extract(&body, format, None))
            .await
            .map_err(|e| self.http.permanent(format_args!("file {id}: extraction stopped: {e}")))?;
        let content = extracted.map_err(|e| Error::Permanent {
            context: format!("source {}: file {} {:?}: {e}", self.http.source(), meta.id, meta.title),
        })?;
        let content_note = (format == Format::Unsupported).then(|| {
            let mime = meta.mime_type.as_deref().unwrap_or("this file type");
            format!("no text: {mime} has no text extractor")
        });
        let mut meta = meta.clone();
        meta.size = Some(meta.size.unwrap_or(size));
        Ok(Some(FetchedDoc {
            meta,
            content,
            links: Vec::new(),
            source_sha256,
            content_note,
            raw_html: None,
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

/// Drive's answers: 429, 503 and a 403 whose reason is a rate limit
/// (`userRateLimitExceeded`, `rateLimitExceeded`) are throttles for the whole
/// fleet, other 5xx transient; every other status goes back to the caller, which decides what a
/// 404 or a refused page token means.
fn classify(reply: &client::Reply) -> Verdict {
    if reply.status.is_success() {
        return Verdict::Accept;
    }
    let detail = GoogleError::parse(&reply.text());
    let rate_limited = reply.status.as_u16() == 403 && detail.is_rate_limit();
    let text = format!("HTTP {}: {}", reply.status.as_u16(), detail.summary());
    if rate_limited {
        Verdict::Throttle {
            detail: text,
            after: client::retry_after(&reply.headers),
        }
    } else if client::is_transient(reply.status) {
        client::transient_verdict(reply, text)
    } else {
        Verdict::Accept
    }
}

/// How a file's content is read; the tag is the prefix of `DocMeta.version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bytes stored in Drive (PDF, Office files, text, Markdown, HTML, CSV...):
    /// downloaded with `alt=media`, then turned into text by type ([`crate::extract`]).
    File,
    /// A Google Doc: export `text/plain`.
    Doc,
    /// A Google Sheet: export `text/csv` (Drive exports the first sheet only).
    Sheet,
    /// A Google Slides deck: export `text/plain`.
    Slides,
    /// Nothing to read as text (images, video, archives, Forms, Drawings...):
    /// a document with its metadata and an empty `content`, fetched with no call.
    MetadataOnly,
}

impl Kind {
    /// The kind of a `mimeType`; `None` for what is not a document (a folder:
    /// it gives breadcrumbs their names). A shortcut is a document of its own,
    /// metadata only: it has no text, and the file it points to is synced
    /// where that file lives.
    pub fn of_mime(mime: &str) -> Option<Kind> {
        match mime {
            FOLDER_MIME => None,
            SHORTCUT_MIME => Some(Kind::MetadataOnly),
            "application/vnd.google-apps.document" => Some(Kind::Doc),
            "application/vnd.google-apps.spreadsheet" => Some(Kind::Sheet),
            "application/vnd.google-apps.presentation" => Some(Kind::Slides),
            m if m.starts_with("application/vnd.google-apps.") => Some(Kind::MetadataOnly),
            "application/octet-stream" => Some(Kind::File),
            m if Format::of_mime(m) == Format::Unsupported => Some(Kind::MetadataOnly),
            _ => Some(Kind::File),
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Doc => "gdoc",
            Kind::Sheet => "gsheet",
            Kind::Slides => "gslides",
            Kind::MetadataOnly => "meta",
        }
    }

    pub(super) fn from_tag(tag: &str) -> Option<Kind> {
        if tag == "text" {
            // Written by builds that downloaded only text files.
            return Some(Kind::File);
        }
        [Kind::File, Kind::Doc, Kind::Sheet, Kind::Slides, Kind::MetadataOnly]
            .into_iter()
            .find(|k| k.tag() == tag)
    }

    fn export_mime(self) -> Option<&'static str> {
        match self {
            Kind::File | Kind::MetadataOnly => None,
            Kind::Doc | Kind::Slides => Some("text/plain"),
            Kind::Sheet => Some("text/csv"),
        }
    }
}

/// `DocMeta.version` for a content stamp of a file of kind `kind`.
pub fn version_string(kind: Kind, stamp: &str) -> String {
    format!("{}:{stamp}", kind.tag())
}

/// Hex characters of `sha256Checksum` kept in a version: 64 bits tell edits apart.
const CHECKSUM_HEX: usize = 16;

/// The version of a file's *content*, which a change of its sharing does
/// not move (Drive's own `version` "reflects every change made to the file
/// on the server, even those not visible to the user", sharing included):
/// the file's `sha256Checksum` where Drive stores its bytes ("only populated
/// for files with content stored in Drive"), else its `modifiedTime` ("the
/// last time the file was modified by anyone"), else Drive's `version`.
pub fn content_version(
    kind: Kind,
    sha256: Option<&str>,
    modified: Option<DateTime<Utc>>,
    version: Option<&str>,
) -> String {
    let stamp = match (sha256, modified) {
        // By characters: a checksum is Drive's to send, hex or not.
        (Some(sum), _) if !sum.is_empty() => format!("s{}", sum.chars().take(CHECKSUM_HEX).collect::<String>()),
        (_, Some(t)) => format!("m{}", t.timestamp_millis()),
        _ => format!("v{}", version.unwrap_or("0")),
    };
    version_string(kind, &stamp)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartPageToken {
    #[serde(default)]
    start_page_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FileList {
    pub(super) next_page_token: Option<String>,
    #[serde(default)]
    pub(super) files: Vec<DriveFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ChangeList {
    pub(super) next_page_token: Option<String>,
    pub(super) new_start_page_token: Option<String>,
    #[serde(default)]
    pub(super) changes: Vec<Change>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Change {
    pub(super) change_type: Option<String>,
    #[serde(default)]
    pub(super) removed: bool,
    pub(super) file_id: Option<String>,
    pub(super) file: Option<DriveFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DriveFile {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) mime_type: String,
    #[serde(default)]
    pub(super) parents: Vec<String>,
    #[serde(default)]
    pub(super) trashed: bool,
    /// RFC 3339 in UTC as Drive sends it (a zoneless one would be read as UTC).
    #[serde(default, deserialize_with = "clock::deserialize_opt_utc")]
    modified_time: Option<DateTime<Utc>>,
    /// Drive serves `version` (int64) as a JSON string.
    version: Option<String>,
    /// SHA-256 of the bytes of a file stored in Drive (none for Docs Editors files).
    sha256_checksum: Option<String>,
    /// Who may read it (every permission, inherited ones included); absent
    /// for items in shared drives, and unless the caller may share the file.
    pub(super) permissions: Option<Vec<DrivePermission>>,
    /// The shared drive it is in.
    pub(super) drive_id: Option<String>,
    /// Bytes of a file stored in Drive (int64 as a string); absent for Docs Editors files.
    size: Option<String>,
    /// The link that opens the file in a browser.
    web_view_link: Option<String>,
}

impl DriveFile {
    pub(super) fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }

    pub(super) fn parent(&self) -> Option<&str> {
        self.parents.first().map(String::as_str)
    }

    /// The document's metadata, if it is a kind we sync.
    pub(super) fn meta(&self) -> Option<DocMeta> {
        let kind = Kind::of_mime(&self.mime_type)?;
        Some(DocMeta {
            id: DocumentId(self.id.clone()),
            version: content_version(
                kind,
                self.sha256_checksum.as_deref(),
                self.modified_time,
                self.version.as_deref(),
            ),
            title: self.name.clone(),
            parent: self.parent().map(|p| DocumentId(p.to_owned())),
            modified_at: self.modified_time,
            url: self.web_view_link.clone(),
            mime_type: Some(self.mime_type.clone()),
            size: self.size.as_deref().and_then(|s| s.parse().ok()),
            permissions: self.permissions.as_ref().map(|p| sharing::permissions(p, Utc::now())),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::tests::{connector, first_listing, present_ids, run, start};
    use super::*;
    use crate::simulators::gdrive::{DOC_MIME, FORM_MIME, SimConfig};
    use crate::sources::Error;
    use crate::types::SyncMode;

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
        let (obs, end) = first_listing(&src, &meter).await.expect("full");
        assert_eq!(obs.len(), 3);
        assert_eq!(
            meter.get(),
            5,
            "two 403s, the start token, the synced folder's name, one folder listing"
        );
        let meter = ApiCalls::default();
        sim.fail_next(1, 429);
        run(
            &src,
            &end.checkpoint,
            SyncMode::Incremental,
            &crate::sources::HeldMap::default(),
            &meter,
        )
        .await
        .expect("inc");
        assert_eq!(meter.get(), 2, "429 then changes.list");

        let src = connector(base, |s| s.max_retries = 1);
        sim.fail_next(5, 500);
        let err = run(
            &src,
            &end.checkpoint,
            SyncMode::Incremental,
            &crate::sources::HeldMap::default(),
            &meter,
        )
        .await
        .expect_err("retries run out");
        assert!(err.is_retryable(), "{err}");
        sim.fail_next(0, 500);
        sim.fail_next(1, 401);
        match run(
            &src,
            &end.checkpoint,
            SyncMode::Incremental,
            &crate::sources::HeldMap::default(),
            &meter,
        )
        .await
        {
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
        let (obs, end) = first_listing(&src, &meter).await.expect("full");
        assert_eq!(obs.len(), 6);
        let id = sim.files_in_tree()[0].id.clone();
        sim.update_file(&id, None, Some("x"));
        let (obs, _) = run(
            &src,
            &end.checkpoint,
            SyncMode::Incremental,
            &crate::sources::HeldMap::default(),
            &meter,
        )
        .await
        .expect("inc");
        assert_eq!(present_ids(&obs), HashSet::from([id]));
        for r in sim.requests() {
            let p = &r.params;
            assert_eq!(p.get("supportsAllDrives").map(String::as_str), Some("true"), "{r:?}");
            if r.label == "GET /drive/v3/files/{id}" || r.label == "GET /drive/v3/files/{id}/permissions" {
                // files.get and permissions.list take no driveId: a file id is unique across drives.
                continue;
            }
            assert_eq!(p.get("driveId").map(String::as_str), Some("0AShared"), "{r:?}");
            if r.label == "GET /drive/v3/files" {
                assert_eq!(p.get("corpora").map(String::as_str), Some("drive"));
                assert_eq!(p.get("includeItemsFromAllDrives").map(String::as_str), Some("true"));
            }
        }
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
        let gone = GoogleError::parse(
            r#"{"error":{"code":410,"message":"Sync token is no longer valid, a full sync is required.","errors":[{"domain":"global","reason":"fullSyncRequired","message":"Sync token is no longer valid, a full sync is required."}]}}"#,
        );
        assert!(is_token_refusal(410, &gone));
        assert!(is_token_refusal(404, &GoogleError::parse("")));
        let bad_fields = GoogleError::parse(
            r#"{"error":{"code":400,"message":"Invalid field selection x","errors":[{"domain":"global","reason":"badRequest","message":"Invalid field selection x","locationType":"parameter","location":"fields"}]}}"#,
        );
        assert!(
            !is_token_refusal(400, &bad_fields),
            "a 400 about another parameter is not about the token"
        );
        let limit = r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded","status":"PERMISSION_DENIED"}}"#;
        assert!(GoogleError::parse(limit).is_rate_limit());
        let denied = r#"{"error":{"errors":[{"domain":"global","reason":"insufficientFilePermissions","message":"no"}],"code":403,"message":"no"}}"#;
        assert!(!GoogleError::parse(denied).is_rate_limit());
        assert_eq!(GoogleError::parse("<html>oops</html>").message, "<html>oops</html>");
        assert_eq!(GoogleError::parse("").message, "(empty body)");
    }

    /// Versions carry the read method; every mime type but folders is a
    /// document (shortcuts and forms too), read by export, by download, or not at all.
    #[test]
    fn kinds_and_versions() {
        assert_eq!(Kind::of_mime(DOC_MIME), Some(Kind::Doc));
        assert_eq!(Kind::of_mime("text/markdown"), Some(Kind::File));
        assert_eq!(Kind::of_mime("application/pdf"), Some(Kind::File));
        assert_eq!(Kind::of_mime(crate::extract::PPTX_MIME), Some(Kind::File));
        assert_eq!(Kind::of_mime("application/octet-stream"), Some(Kind::File));
        assert_eq!(Kind::of_mime(FORM_MIME), Some(Kind::MetadataOnly));
        assert_eq!(Kind::of_mime("image/png"), Some(Kind::MetadataOnly));
        assert_eq!(Kind::of_mime("video/mp4"), Some(Kind::MetadataOnly));
        assert_eq!(Kind::of_mime(FOLDER_MIME), None);
        assert_eq!(Kind::of_mime(SHORTCUT_MIME), Some(Kind::MetadataOnly));
        assert_eq!(version_string(Kind::Sheet, "17"), "gsheet:17");
        // The content's version: the checksum's first 16 characters (whatever
        // Drive sent), else the modification time, else Drive's version.
        let t = DateTime::from_timestamp_millis(1_764_547_200_123);
        assert_eq!(
            content_version(Kind::File, Some(&"ab".repeat(32)), t, Some("9")),
            format!("file:s{}", "ab".repeat(8))
        );
        let odd = format!("a{}", "é".repeat(8)); // 17 bytes: byte 16 is inside a character
        assert_eq!(
            content_version(Kind::File, Some(&odd), None, None),
            format!("file:s{odd}")
        );
        assert_eq!(content_version(Kind::Doc, None, t, Some("9")), "gdoc:m1764547200123");
        assert_eq!(content_version(Kind::Doc, None, None, Some("9")), "gdoc:v9");
        assert_eq!(Kind::from_tag("gslides"), Some(Kind::Slides));
        assert_eq!(Kind::from_tag("text"), Some(Kind::File), "versions of older builds");
        assert_eq!(Kind::from_tag("nope"), None);
    }
}
