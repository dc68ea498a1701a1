//! In-process simulator of the Google Drive API v3 endpoints the connector uses.
//!
//! What it owns: one drive (My Drive, or a shared drive when `drive_id` is set)
//! holding a tree of folders and files, a change log, and an axum app serving,
//! on the real paths and with the real parameters, JSON fields and error bodies:
//! - `GET /drive/v3/changes/startPageToken?supportsAllDrives=&driveId=`
//! - `GET /drive/v3/changes?pageToken=&pageSize=&includeRemoved=&supportsAllDrives=&includeItemsFromAllDrives=&driveId=&fields=`
//! - `GET /drive/v3/files?q=&pageSize=&pageToken=&corpora=&driveId=&supportsAllDrives=&includeItemsFromAllDrives=&fields=`
//! - `GET /drive/v3/files/{id}` (metadata) and `GET /drive/v3/files/{id}?alt=media` (content)
//! - `GET /drive/v3/files/{id}/export?mimeType=`
//!
//! plus control endpoints under `/_sim/` (not Drive; not counted as API calls).
//!
//! Invariants and deliberate simplifications:
//! - Every mutation appends one change with the next change id; page tokens are
//!   change ids as decimal strings and `startPageToken` is the next id. Each
//!   change carries the file's *current* resource, as Drive's do; the simulator
//!   also lists each file at most once (at its latest change), a simplification
//!   the connector does not rely on.
//! - Exactly one of `nextPageToken` / `newStartPageToken` is in every change list.
//! - A token older than `expire_tokens_before` (or not a number, or beyond the
//!   log) is refused as Drive refuses a bad token: 400 `Invalid Value`, reason
//!   `invalid`, location `pageToken`.
//! - `q` understands `'<id>' in parents` and `trashed = true|false` joined by
//!   `and`; anything else is a 400 `invalid` at location `q`.
//! - `fields` is accepted and ignored: responses always carry every field the
//!   connector asks for (`md5Checksum` is never served, the connector does not use it).
//! - Shared drive (`drive_id` set): items are visible only with
//!   `supportsAllDrives=true` (files.get and files.list) and, for lists,
//!   `includeItemsFromAllDrives=true`; a `driveId` other than the configured one
//!   is a 404 `notFound`. `corpora=drive` and `driveId` must come together.
//! - Bearer tokens: any token, or none, is accepted; the simulator models data
//!   and traffic, not permissions (use `fail_next(n, 401)` for auth failures).
//! - Rate limit: a token bucket of `per_sec` tokens refilled per second; an empty
//!   bucket answers 403 `userRateLimitExceeded` without `Retry-After`, as Drive does.
//! - Trashing a folder trashes only that folder's own record (Drive implicitly
//!   trashes the subtree; a client sees the folder's change and must infer the rest).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::traffic::{Admission, Traffic};
use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `mimeType` of a folder.
pub const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
/// `mimeType` of a Google Doc (exportable as `text/plain`).
pub const DOC_MIME: &str = "application/vnd.google-apps.document";
/// `mimeType` of a Google Sheet (exportable as `text/csv`).
pub const SHEET_MIME: &str = "application/vnd.google-apps.spreadsheet";
/// `mimeType` of a Google Slides deck (exportable as `text/plain`).
pub const SLIDES_MIME: &str = "application/vnd.google-apps.presentation";
/// `mimeType` of a Google Form (not exportable to text).
pub const FORM_MIME: &str = "application/vnd.google-apps.form";
/// Largest `pageSize` of `changes.list` and `files.list`.
const MAX_PAGE_SIZE: usize = 1000;
/// Default `pageSize` of `changes.list` and `files.list`.
const DEFAULT_PAGE_SIZE: usize = 100;
/// The first change id.
const FIRST_CHANGE: u64 = 1001;
/// Requests remembered by [`GdriveSim::requests`].
const REQUEST_LOG: usize = 10_000;

/// How a simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Id of the folder the connector syncs (default `root-folder`).
    pub root_folder_id: String,
    /// Id of the drive's own root (My Drive, or the shared drive), the synced
    /// folder's parent; tests create "outside" folders here (default `drive-root`).
    pub drive_root_id: String,
    /// Files seeded at start: every third a Google Doc, the others `text/plain`.
    pub files: usize,
    /// Folders seeded under the synced folder (the second nested in the first); files
    /// are spread over them and the root.
    pub subfolders: usize,
    /// `Some(id)`: the drive is a shared drive with this id.
    pub drive_id: Option<String>,
    /// Requests per second before 403 `userRateLimitExceeded`; `None` = unlimited.
    pub rate_limit_per_sec: Option<u32>,
    /// Seed of versions and content.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            root_folder_id: "root-folder".to_owned(),
            drive_root_id: "drive-root".to_owned(),
            files: 0,
            subfolders: 4,
            drive_id: None,
            rate_limit_per_sec: None,
            seed: 0,
        }
    }
}

/// A file or folder as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimFile {
    /// File id.
    pub id: String,
    /// `name`.
    pub name: String,
    /// The one parent folder; `None` only for the drive root.
    pub parent: Option<String>,
    /// `mimeType`.
    pub mime_type: String,
    /// `version` (Drive serves it as a string).
    pub version: u64,
    /// Content: the bytes of a plain file, the text export of a Google Doc; empty for folders.
    pub content: String,
    /// In the trash.
    pub trashed: bool,
    /// `modifiedTime`.
    pub modified_time: DateTime<Utc>,
}

impl SimFile {
    /// Whether this is a folder.
    pub fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }
}

/// One API request as received: endpoint label and query parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimRequest {
    /// e.g. `GET /drive/v3/changes`.
    pub label: String,
    /// Decoded query parameters (the last value wins for repeated ones).
    pub params: BTreeMap<String, String>,
}

/// A running simulator's shared state; clones share it.
#[derive(Clone)]
pub struct GdriveSim {
    state: Arc<Mutex<SimState>>,
}

struct Entry {
    name: String,
    parent: Option<String>,
    mime: String,
    version: u64,
    content: String,
    trashed: bool,
    modified: DateTime<Utc>,
}

struct ChangeRec {
    id: u64,
    file_id: String,
    time: DateTime<Utc>,
}

struct SimState {
    root_id: String,
    drive_root_id: String,
    drive_id: Option<String>,
    files: BTreeMap<String, Entry>,
    changes: Vec<ChangeRec>,
    next_change: u64,
    expired_before: u64,
    next_file: u64,
    traffic: Traffic,
    requests: VecDeque<SimRequest>,
}

/// splitmix64: a tiny deterministic generator for reproducible seeds.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn now() -> DateTime<Utc> {
    // Drive serves RFC 3339 times with milliseconds.
    Utc::now().trunc_subsecs(3)
}

impl SimState {
    fn record(&mut self, file_id: &str) {
        let id = self.next_change;
        self.next_change += 1;
        self.changes.push(ChangeRec {
            id,
            file_id: file_id.to_owned(),
            time: now(),
        });
    }

    fn new_id(&mut self, folder: bool) -> String {
        let n = self.next_file;
        self.next_file += 1;
        // Readable ids of Drive's alphabet ([A-Za-z0-9_-]), so test failures are easy to read.
        if folder {
            format!("fold{n:06}")
        } else {
            format!("file{n:06}")
        }
    }

    fn insert(&mut self, name: &str, parent: &str, mime: &str, content: &str, version: u64) -> String {
        let id = self.new_id(mime == FOLDER_MIME);
        self.files.insert(
            id.clone(),
            Entry {
                name: name.to_owned(),
                parent: Some(parent.to_owned()),
                mime: mime.to_owned(),
                version,
                content: content.to_owned(),
                trashed: false,
                modified: now(),
            },
        );
        self.record(&id);
        id
    }

    /// Whether the item is in the shared drive (all are, when one is configured).
    fn in_shared_drive(&self) -> bool {
        self.drive_id.is_some()
    }

    fn file_json(&self, id: &str, e: &Entry) -> Value {
        let mut v = json!({
            "kind": "drive#file",
            "id": id,
            "name": e.name,
            "mimeType": e.mime,
            "parents": e.parent.iter().collect::<Vec<_>>(),
            "trashed": e.trashed,
            "modifiedTime": ts(e.modified),
            "version": e.version.to_string(),
        });
        if let Some(d) = &self.drive_id {
            v["driveId"] = json!(d);
        }
        v
    }
}

impl GdriveSim {
    /// A simulator with the drive root, the synced folder, `cfg.subfolders`
    /// folders and `cfg.files` files (every third a Google Doc).
    pub fn new(cfg: SimConfig) -> Self {
        let mut st = SimState {
            root_id: cfg.root_folder_id.clone(),
            drive_root_id: cfg.drive_root_id.clone(),
            drive_id: cfg.drive_id.clone(),
            files: BTreeMap::new(),
            changes: Vec::new(),
            next_change: FIRST_CHANGE,
            expired_before: 0,
            next_file: 1,
            traffic: Traffic::new(cfg.rate_limit_per_sec),
            requests: VecDeque::new(),
        };
        let t = now();
        st.files.insert(
            cfg.drive_root_id.clone(),
            Entry {
                name: if cfg.drive_id.is_some() {
                    "Shared drive"
                } else {
                    "My Drive"
                }
                .to_owned(),
                parent: None,
                mime: FOLDER_MIME.to_owned(),
                version: 1,
                content: String::new(),
                trashed: false,
                modified: t,
            },
        );
        st.files.insert(
            cfg.root_folder_id.clone(),
            Entry {
                name: "Knowledge base".to_owned(),
                parent: Some(cfg.drive_root_id.clone()),
                mime: FOLDER_MIME.to_owned(),
                version: 1,
                content: String::new(),
                trashed: false,
                modified: t,
            },
        );
        st.record(&cfg.root_folder_id);
        let mut folders = vec![cfg.root_folder_id.clone()];
        for k in 0..cfg.subfolders {
            // The second folder nests in the first, so subtrees have depth.
            let parent = if k == 1 {
                folders[1].clone()
            } else {
                cfg.root_folder_id.clone()
            };
            let id = st.insert(&format!("Folder {}", k + 1), &parent, FOLDER_MIME, "", 1);
            folders.push(id);
        }
        let mut rng = cfg.seed;
        for i in 0..cfg.files {
            let parent = folders[i % folders.len()].clone();
            let (name, mime) = if i % 3 == 0 {
                (format!("Doc {:04}", i + 1), DOC_MIME)
            } else {
                (format!("Note {:04}.txt", i + 1), "text/plain")
            };
            let content = format!("Seeded file {} ({mime}).\nToken {:016x}.\n", i + 1, splitmix(&mut rng));
            let version = 1 + splitmix(&mut rng) % 5;
            st.insert(&name, &parent, mime, &content, version);
        }
        Self {
            state: Arc::new(Mutex::new(st)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum app: API routes (counted, failed and rate limited on demand) and `/_sim/` controls.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/drive/v3/changes/startPageToken", get(api_start_token))
            .route("/drive/v3/changes", get(api_changes))
            .route("/drive/v3/files", get(api_files_list))
            .route("/drive/v3/files/{id}", get(api_files_get))
            .route("/drive/v3/files/{id}/export", get(api_files_export))
            .route_layer(middleware::from_fn_with_state(self.clone(), api_gate));
        let control = Router::new()
            .route("/_sim/files", post(ctl_create).get(ctl_list))
            .route("/_sim/files/{id}", axum::routing::put(ctl_update).delete(ctl_delete))
            .route("/_sim/files/{id}/trash", post(ctl_trash))
            .route("/_sim/files/{id}/move", post(ctl_move))
            .route("/_sim/tokens/expire", post(ctl_expire))
            .route("/_sim/stats", get(ctl_stats))
            .route("/_sim/stats/reset", post(ctl_reset));
        api.merge(control).fallback(not_found).with_state(self.clone())
    }

    /// Binds `addr` (port 0 picks one), serves in a spawned task, returns the bound address.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        let handle = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("gdrive simulator stopped: {e}");
            }
        });
        Ok((bound, handle))
    }

    /// The synced folder's id.
    pub fn root_folder_id(&self) -> String {
        self.lock().root_id.clone()
    }

    /// The drive root's id (the synced folder's parent, outside the synced tree).
    pub fn drive_root_id(&self) -> String {
        self.lock().drive_root_id.clone()
    }

    /// Creates a file (version 1) under `parent`; returns its id. `None` if
    /// `parent` is not a folder.
    pub fn create_file(&self, name: &str, parent: &str, mime: &str, content: &str) -> Option<String> {
        let mut st = self.lock();
        if st.files.get(parent).is_none_or(|p| p.mime != FOLDER_MIME) {
            return None;
        }
        Some(st.insert(name, parent, mime, content, 1))
    }

    /// Creates a folder under `parent`; returns its id. `None` if `parent` is not a folder.
    pub fn create_folder(&self, name: &str, parent: &str) -> Option<String> {
        self.create_file(name, parent, FOLDER_MIME, "")
    }

    /// Renames and/or rewrites a file: bumps `version` and `modifiedTime`, records
    /// a change. `false` if there is no such file.
    pub fn update_file(&self, id: &str, name: Option<&str>, content: Option<&str>) -> bool {
        let mut st = self.lock();
        let Some(e) = st.files.get_mut(id) else {
            return false;
        };
        if let Some(n) = name {
            e.name = n.to_owned();
        }
        if let Some(c) = content {
            e.content = c.to_owned();
        }
        e.version += 1;
        e.modified = now();
        st.record(id);
        true
    }

    /// Moves a file to the trash (`trashed: true`, still readable by id), recording a change.
    pub fn trash_file(&self, id: &str) -> bool {
        self.set_trashed(id, true)
    }

    /// Restores a file from the trash, recording a change.
    pub fn untrash_file(&self, id: &str) -> bool {
        self.set_trashed(id, false)
    }

    fn set_trashed(&self, id: &str, trashed: bool) -> bool {
        let mut st = self.lock();
        let Some(e) = st.files.get_mut(id) else {
            return false;
        };
        e.trashed = trashed;
        e.version += 1;
        st.record(id);
        true
    }

    /// Deletes a file permanently (its change then reads `removed: true`). A
    /// folder's descendants are deleted with it, each with its own change.
    pub fn delete_file(&self, id: &str) -> bool {
        let mut st = self.lock();
        if !st.files.contains_key(id) || id == st.drive_root_id {
            return false;
        }
        let mut doomed = vec![id.to_owned()];
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i].clone();
            doomed.extend(
                st.files
                    .iter()
                    .filter(|(_, e)| e.parent.as_deref() == Some(parent.as_str()))
                    .map(|(k, _)| k.clone()),
            );
            i += 1;
        }
        for d in doomed {
            st.files.remove(&d);
            st.record(&d);
        }
        true
    }

    /// Moves a file or folder to `new_parent` (Drive's `addParents`/`removeParents`),
    /// recording one change for the moved item only. `false` if either is unknown,
    /// the new parent is not a folder, or the move would create a cycle.
    pub fn move_file(&self, id: &str, new_parent: &str) -> bool {
        let mut st = self.lock();
        if !st.files.contains_key(id) || st.files.get(new_parent).is_none_or(|p| p.mime != FOLDER_MIME) {
            return false;
        }
        let mut cur = Some(new_parent.to_owned());
        let mut hops = 0;
        while let Some(c) = cur {
            if c == id || hops > st.files.len() {
                return false;
            }
            hops += 1;
            cur = st.files.get(&c).and_then(|e| e.parent.clone());
        }
        if let Some(e) = st.files.get_mut(id) {
            e.parent = Some(new_parent.to_owned());
            e.version += 1;
        }
        st.record(id);
        true
    }

    /// Every file and folder (the drive root included), sorted by id.
    pub fn files(&self) -> Vec<SimFile> {
        let st = self.lock();
        st.files
            .iter()
            .map(|(id, e)| SimFile {
                id: id.clone(),
                name: e.name.clone(),
                parent: e.parent.clone(),
                mime_type: e.mime.clone(),
                version: e.version,
                content: e.content.clone(),
                trashed: e.trashed,
                modified_time: e.modified,
            })
            .collect()
    }

    /// Non-folder files whose ancestor chain reaches the synced folder through
    /// untrashed folders, themselves untrashed: what a correct sync holds
    /// (before filtering out types it cannot read).
    pub fn files_in_tree(&self) -> Vec<SimFile> {
        let all = self.files();
        let root = self.root_folder_id();
        let by_id: HashMap<&str, &SimFile> = all.iter().map(|f| (f.id.as_str(), f)).collect();
        let in_tree = |f: &SimFile| {
            let mut cur = f.parent.as_deref();
            let mut hops = 0;
            while let Some(p) = cur {
                if p == root {
                    return by_id.get(p).is_some_and(|r| !r.trashed);
                }
                let Some(pf) = by_id.get(p) else { return false };
                if pf.trashed || hops > all.len() {
                    return false;
                }
                hops += 1;
                cur = pf.parent.as_deref();
            }
            false
        };
        all.iter()
            .filter(|f| !f.is_folder() && !f.trashed && in_tree(f))
            .cloned()
            .collect()
    }

    /// Refuses page tokens older than `change_id` from now on.
    pub fn expire_tokens_before(&self, change_id: u64) {
        self.lock().expired_before = change_id;
    }

    /// Refuses every page token handed out so far, the current start token
    /// included. Skips one change id so tokens handed out from now on are newer
    /// (Drive's change ids are not contiguous either).
    pub fn expire_all_tokens(&self) {
        let mut st = self.lock();
        st.next_change += 1;
        st.expired_before = st.next_change;
    }

    /// The next change id (what `startPageToken` would answer now).
    pub fn next_change_id(&self) -> u64 {
        self.lock().next_change
    }

    /// API calls by endpoint label, e.g. `"GET /drive/v3/files/{id}"`.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.lock().traffic.calls()
    }

    /// All API calls (including those answered with errors).
    pub fn total_calls(&self) -> u64 {
        self.lock().traffic.total()
    }

    /// The last API requests received (up to 10 000), oldest first.
    pub fn requests(&self) -> Vec<SimRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Zeroes the call counters and forgets the request log.
    pub fn reset_calls(&self) {
        let mut st = self.lock();
        st.traffic.reset();
        st.requests.clear();
    }

    /// Changes the rate limit (requests per second); the bucket starts full.
    pub fn set_rate_limit(&self, per_sec: Option<u32>) {
        self.lock().traffic.set_rate_limit(per_sec);
    }

    /// The next `n` API requests answer `status` with Google's error body: 403
    /// `userRateLimitExceeded`, 429 `rateLimitExceeded`, 401 `authError`, 5xx `backendError`.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.lock().traffic.fail_next(n, status);
    }

    /// The next `n` API requests answer 200 with a truncated JSON body.
    pub fn corrupt_next(&self, n: u32) {
        self.lock().traffic.corrupt_next(n);
    }

    /// Every API request waits this long before it is served.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().traffic.set_latency(latency);
    }

    /// The simulator's clock (UTC, millisecond precision).
    pub fn now(&self) -> DateTime<Utc> {
        now()
    }

    /// Counts and logs one API request and decides whether it is served.
    fn admit(&self, label: &str, params: BTreeMap<String, String>) -> Admission {
        let mut st = self.lock();
        if st.requests.len() >= REQUEST_LOG {
            st.requests.pop_front();
        }
        st.requests.push_back(SimRequest {
            label: label.to_owned(),
            params,
        });
        st.traffic.admit(label)
    }
}

/// A Google API error body: `{"error":{"code","message","errors":[{domain,reason,message,location?,locationType?}],"status"}}`.
fn google_error(status: u16, domain: &str, reason: &str, message: &str, location: Option<(&str, &str)>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut item = json!({"domain": domain, "reason": reason, "message": message});
    if let Some((loc_type, loc)) = location {
        item["locationType"] = json!(loc_type);
        item["location"] = json!(loc);
    }
    let status_name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    (
        code,
        Json(json!({"error": {"code": status, "message": message, "errors": [item], "status": status_name}})),
    )
        .into_response()
}

fn invalid_param(name: &str, message: &str) -> Response {
    google_error(400, "global", "invalid", message, Some(("parameter", name)))
}

fn file_not_found(id: &str) -> Response {
    google_error(
        404,
        "global",
        "notFound",
        &format!("File not found: {id}."),
        Some(("parameter", "fileId")),
    )
}

fn drive_not_found(id: &str) -> Response {
    google_error(
        404,
        "global",
        "notFound",
        &format!("Shared drive not found: {id}"),
        Some(("parameter", "driveId")),
    )
}

/// The canned error for an injected failure status.
fn injected(status: u16) -> Response {
    match status {
        403 => google_error(
            403,
            "usageLimits",
            "userRateLimitExceeded",
            "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota.",
            None,
        ),
        429 => google_error(429, "usageLimits", "rateLimitExceeded", "Rate Limit Exceeded", None),
        401 => google_error(
            401,
            "global",
            "authError",
            "Invalid Credentials",
            Some(("header", "Authorization")),
        ),
        s if s >= 500 => google_error(s, "global", "backendError", "Backend Error", None),
        s => google_error(s, "global", "simulated", &format!("Simulated failure (HTTP {s})"), None),
    }
}

fn query_pairs(q: Option<String>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(p: &BTreeMap<String, String>, name: &str) -> Result<bool, Box<Response>> {
    match p.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Box::new(invalid_param(
            name,
            &format!("Invalid value '{other}'. Expected true or false."),
        ))),
    }
}

fn page_size(p: &BTreeMap<String, String>) -> Result<usize, Box<Response>> {
    match p.get("pageSize") {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
            _ => Err(Box::new(invalid_param(
                "pageSize",
                &format!("Invalid value '{s}'. Values must be within the range: [1, 1000]"),
            ))),
        },
    }
}

/// Checks `driveId` against the configured shared drive. Returns whether shared-drive
/// items are visible to this request.
fn drive_scope(st: &SimState, p: &BTreeMap<String, String>) -> Result<bool, Box<Response>> {
    let supports = flag(p, "supportsAllDrives")?;
    let include = flag(p, "includeItemsFromAllDrives")?;
    if let Some(asked) = p.get("driveId")
        && st.drive_id.as_deref() != Some(asked.as_str())
    {
        return Err(Box::new(drive_not_found(asked)));
    }
    Ok(!st.in_shared_drive() || (supports && (include || p.contains_key("driveId"))))
}

/// Counts, logs, fails and rate-limits every API request.
async fn api_gate(State(sim): State<GdriveSim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let label = format!(
        "{} {}",
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map_or(path.as_str(), |m| m.as_str())
    );
    let params = query_pairs(req.uri().query().map(str::to_owned));
    let latency = sim.lock().traffic.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match sim.admit(&label, params) {
        Admission::Serve(_) => next.run(req).await,
        Admission::Fail(status) => injected(status),
        Admission::Corrupt => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"kind":"drive#changeList","changes":[{"kind":"drive#ch"#,
        )
            .into_response(),
        // Drive answers an exhausted per-user quota with 403 and no Retry-After.
        // Drive answers an exhausted quota with 403 userRateLimitExceeded, no Retry-After.
        Admission::Limited { .. } => injected(403),
    }
}

async fn not_found() -> Response {
    google_error(404, "global", "notFound", "Not Found", None)
}

async fn api_start_token(State(sim): State<GdriveSim>, RawQuery(q): RawQuery) -> Response {
    let p = query_pairs(q);
    let st = sim.lock();
    if let Err(resp) = drive_scope(&st, &p) {
        return *resp;
    }
    Json(json!({"kind": "drive#startPageToken", "startPageToken": st.next_change.to_string()})).into_response()
}

async fn api_changes(State(sim): State<GdriveSim>, RawQuery(q): RawQuery) -> Response {
    let p = query_pairs(q);
    let st = sim.lock();
    let visible = match drive_scope(&st, &p) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let Some(token) = p.get("pageToken") else {
        return google_error(
            400,
            "global",
            "required",
            "Required parameter: pageToken",
            Some(("parameter", "pageToken")),
        );
    };
    let start = match token.parse::<u64>() {
        Ok(t) if t >= st.expired_before && t >= FIRST_CHANGE && t <= st.next_change => t,
        _ => return invalid_param("pageToken", "Invalid Value"),
    };
    let size = match page_size(&p) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let include_removed = match p.get("includeRemoved").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => return invalid_param("includeRemoved", &format!("Invalid value '{other}'.")),
    };
    // Each file appears once, at its latest change, in its current state.
    let latest: HashMap<&str, u64> = st.changes.iter().map(|c| (c.file_id.as_str(), c.id)).collect();
    let mut picked = st
        .changes
        .iter()
        .filter(|c| c.id >= start && latest.get(c.file_id.as_str()) == Some(&c.id))
        .filter(|_| visible || !st.in_shared_drive())
        .filter(|c| include_removed || st.files.contains_key(&c.file_id));
    let mut changes = Vec::new();
    let mut next_token = None;
    for c in picked.by_ref() {
        if changes.len() == size {
            next_token = Some(c.id);
            break;
        }
        let mut v = json!({
            "kind": "drive#change",
            "changeType": "file",
            "fileId": c.file_id,
            "time": ts(c.time),
        });
        match st.files.get(&c.file_id) {
            Some(e) => {
                v["removed"] = json!(false);
                v["file"] = st.file_json(&c.file_id, e);
            }
            None => v["removed"] = json!(true),
        }
        if let Some(d) = &st.drive_id {
            v["driveId"] = json!(d);
        }
        changes.push(v);
    }
    let mut body = json!({"kind": "drive#changeList", "changes": changes});
    match next_token {
        Some(t) => body["nextPageToken"] = json!(t.to_string()),
        None => body["newStartPageToken"] = json!(st.next_change.to_string()),
    }
    Json(body).into_response()
}

/// A parsed `q`: the parent to list and an optional `trashed` filter.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    parent: Option<String>,
    trashed: Option<bool>,
}

/// Parses the subset of Drive's query language the connector uses.
fn parse_q(q: &str) -> Result<Query, String> {
    let mut out = Query {
        parent: None,
        trashed: None,
    };
    let mut rest = q.trim();
    loop {
        if let Some(after) = rest.strip_prefix('\'') {
            // '<id>' in parents, with \' and \\ escapes inside the quotes.
            let mut id = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => id.push(e),
                        None => return Err("unterminated escape".into()),
                    },
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => id.push(c),
                }
            }
            let end = end.ok_or("unterminated string")?;
            let tail = after[end..].trim_start();
            let tail = tail.strip_prefix("in").ok_or("expected 'in'")?.trim_start();
            rest = tail.strip_prefix("parents").ok_or("expected 'parents'")?.trim_start();
            out.parent = Some(id);
        } else if let Some(after) = rest.strip_prefix("trashed") {
            let after = after.trim_start().strip_prefix('=').ok_or("expected '='")?.trim_start();
            if let Some(r) = after.strip_prefix("false") {
                out.trashed = Some(false);
                rest = r.trim_start();
            } else if let Some(r) = after.strip_prefix("true") {
                out.trashed = Some(true);
                rest = r.trim_start();
            } else {
                return Err("expected true or false".into());
            }
        } else {
            return Err(format!("unsupported term at {rest:?}"));
        }
        if rest.is_empty() {
            return Ok(out);
        }
        let lower = rest.to_ascii_lowercase();
        if lower.starts_with("and ") {
            rest = rest[4..].trim_start();
        } else {
            return Err(format!("expected 'and' at {rest:?}"));
        }
    }
}

async fn api_files_list(State(sim): State<GdriveSim>, RawQuery(q): RawQuery) -> Response {
    let p = query_pairs(q);
    let st = sim.lock();
    match (p.get("corpora").map(String::as_str), p.get("driveId")) {
        (Some("drive"), None) | (Some("user" | "domain" | "allDrives") | None, Some(_)) => {
            return google_error(
                400,
                "global",
                "badRequest",
                "The driveId parameter must be specified if and only if corpora is set to drive.",
                Some(("parameter", "driveId")),
            );
        }
        (Some("drive" | "user" | "domain" | "allDrives") | None, _) => {}
        (Some(other), _) => return invalid_param("corpora", &format!("Invalid value '{other}'.")),
    }
    if p.contains_key("driveId") && !matches!(flag(&p, "includeItemsFromAllDrives"), Ok(true)) {
        return google_error(
            403,
            "global",
            "teamDrivesParameterNotSupported",
            "includeItemsFromAllDrives must be true when driveId is set.",
            Some(("parameter", "includeItemsFromAllDrives")),
        );
    }
    let visible = match drive_scope(&st, &p) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let query = match parse_q(p.get("q").map_or("", String::as_str)) {
        Ok(q) => q,
        Err(e) => return invalid_param("q", &format!("Invalid Value ({e})")),
    };
    let size = match page_size(&p) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let after = match p.get("pageToken") {
        None => None,
        Some(t) => match t.strip_prefix("~") {
            Some(id) if !id.is_empty() => Some(id.to_owned()),
            _ => return invalid_param("pageToken", "Invalid Value"),
        },
    };
    let mut hits = st
        .files
        .iter()
        .filter(|(id, _)| *id != &st.drive_root_id)
        .filter(|(id, _)| after.as_ref().is_none_or(|a| id.as_str() > a.as_str()))
        .filter(|(_, e)| visible && query.parent.as_ref().is_none_or(|q| e.parent.as_ref() == Some(q)))
        .filter(|(_, e)| query.trashed.is_none_or(|t| e.trashed == t));
    let mut files = Vec::new();
    let mut last = None;
    let mut more = false;
    for (id, e) in hits.by_ref() {
        if files.len() == size {
            more = true;
            break;
        }
        files.push(st.file_json(id, e));
        last = Some(id.clone());
    }
    let mut body = json!({"kind": "drive#fileList", "incompleteSearch": false, "files": files});
    if more && let Some(l) = last {
        body["nextPageToken"] = json!(format!("~{l}"));
    }
    Json(body).into_response()
}

async fn api_files_get(State(sim): State<GdriveSim>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = query_pairs(q);
    let st = sim.lock();
    let supports = match flag(&p, "supportsAllDrives") {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let Some(e) = st.files.get(&id).filter(|_| supports || !st.in_shared_drive()) else {
        return file_not_found(&id);
    };
    match p.get("alt").map(String::as_str) {
        None | Some("json") => Json(st.file_json(&id, e)).into_response(),
        Some("media") => {
            if e.mime.starts_with("application/vnd.google-apps.") {
                return google_error(
                    403,
                    "global",
                    "fileNotDownloadable",
                    "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
                    Some(("parameter", "alt")),
                );
            }
            let mime = HeaderValue::from_str(&e.mime).unwrap_or(HeaderValue::from_static("application/octet-stream"));
            (StatusCode::OK, [(header::CONTENT_TYPE, mime)], e.content.clone()).into_response()
        }
        Some(other) => invalid_param("alt", &format!("Invalid value '{other}'.")),
    }
}

async fn api_files_export(State(sim): State<GdriveSim>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = query_pairs(q);
    let st = sim.lock();
    let Some(e) = st.files.get(&id) else {
        return file_not_found(&id);
    };
    let Some(target) = p.get("mimeType") else {
        return google_error(
            400,
            "global",
            "required",
            "Required parameter: mimeType",
            Some(("parameter", "mimeType")),
        );
    };
    if !e.mime.starts_with("application/vnd.google-apps.") || e.mime == FOLDER_MIME {
        return google_error(
            403,
            "global",
            "fileNotExportable",
            "Export only supports Docs Editors files.",
            None,
        );
    }
    let supported = matches!(
        (e.mime.as_str(), target.as_str()),
        (DOC_MIME | SLIDES_MIME, "text/plain") | (SHEET_MIME, "text/csv")
    );
    if !supported {
        return google_error(
            400,
            "global",
            "badRequest",
            "The requested conversion is not supported.",
            Some(("parameter", "mimeType")),
        );
    }
    let ct = HeaderValue::from_str(target).unwrap_or(HeaderValue::from_static("text/plain"));
    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], e.content.clone()).into_response()
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct MoveBody {
    parent: String,
}

#[derive(Deserialize, Default)]
struct ExpireBody {
    #[serde(default)]
    before: Option<u64>,
}

async fn ctl_create(State(sim): State<GdriveSim>, Json(b): Json<CreateBody>) -> Response {
    let parent = b.parent.unwrap_or_else(|| sim.root_folder_id());
    let mime = b.mime_type.unwrap_or_else(|| "text/plain".to_owned());
    match sim.create_file(&b.name, &parent, &mime, &b.content) {
        Some(id) => (StatusCode::CREATED, Json(json!({"id": id}))).into_response(),
        None => file_not_found(&parent),
    }
}

async fn ctl_list(State(sim): State<GdriveSim>) -> Json<Vec<SimFile>> {
    Json(sim.files())
}

async fn ctl_update(State(sim): State<GdriveSim>, Path(id): Path<String>, Json(b): Json<UpdateBody>) -> Response {
    if sim.update_file(&id, b.name.as_deref(), b.content.as_deref()) {
        Json(json!({"id": id})).into_response()
    } else {
        file_not_found(&id)
    }
}

async fn ctl_delete(State(sim): State<GdriveSim>, Path(id): Path<String>) -> Response {
    if sim.delete_file(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        file_not_found(&id)
    }
}

async fn ctl_trash(State(sim): State<GdriveSim>, Path(id): Path<String>) -> Response {
    if sim.trash_file(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        file_not_found(&id)
    }
}

async fn ctl_move(State(sim): State<GdriveSim>, Path(id): Path<String>, Json(b): Json<MoveBody>) -> Response {
    if sim.move_file(&id, &b.parent) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        google_error(
            400,
            "global",
            "badRequest",
            &format!("Cannot move {id} to {}", b.parent),
            None,
        )
    }
}

async fn ctl_expire(State(sim): State<GdriveSim>, body: Option<Json<ExpireBody>>) -> Json<Value> {
    match body.map(|Json(b)| b).unwrap_or_default().before {
        Some(before) => sim.expire_tokens_before(before),
        None => sim.expire_all_tokens(),
    }
    Json(json!({"next_change_id": sim.next_change_id()}))
}

async fn ctl_stats(State(sim): State<GdriveSim>) -> Json<Value> {
    Json(json!({"total": sim.total_calls(), "by_endpoint": sim.calls()}))
}

async fn ctl_reset(State(sim): State<GdriveSim>) -> StatusCode {
    sim.reset_calls();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(cfg: SimConfig) -> (GdriveSim, String) {
        let sim = GdriveSim::new(cfg);
        let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
        (sim, format!("http://{addr}"))
    }

    async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
        let resp = http.get(url).send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    }

    /// The query subset parses with escapes and `and`; anything else is refused.
    #[test]
    fn q_parsing() {
        assert_eq!(
            parse_q("'root-folder' in parents and trashed = false"),
            Ok(Query {
                parent: Some("root-folder".into()),
                trashed: Some(false)
            })
        );
        assert_eq!(
            parse_q("'a\\'b' in parents AND trashed=true").map(|q| (q.parent, q.trashed)),
            Ok((Some("a'b".into()), Some(true)))
        );
        assert!(parse_q("name contains 'x'").is_err());
        assert!(parse_q("'x' in parents or trashed = false").is_err());
        assert!(parse_q("'x in parents").is_err());
    }

    /// Change pages honour pageSize, carry exactly one of nextPageToken and
    /// newStartPageToken, list each file once at its latest state, and report
    /// permanent deletions as `removed: true` without a file.
    #[tokio::test]
    async fn change_pages_and_tokens() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let (_, start_tok) = get_json(&http, &format!("{base}/drive/v3/changes/startPageToken")).await;
        let token = start_tok["startPageToken"].as_str().expect("token").to_owned();
        let root = sim.root_folder_id();
        let a = sim.create_file("a.txt", &root, "text/plain", "a").expect("a");
        let b = sim.create_file("b.txt", &root, "text/plain", "b").expect("b");
        assert!(sim.update_file(&a, None, Some("a2")));
        assert!(sim.delete_file(&b));
        let c = sim.create_file("c", &root, DOC_MIME, "c").expect("c");
        let (status, page1) = get_json(
            &http,
            &format!("{base}/drive/v3/changes?pageToken={token}&pageSize=2&includeRemoved=true&fields=*"),
        )
        .await;
        assert_eq!(status, 200, "{page1}");
        assert_eq!(page1["changes"].as_array().map(Vec::len), Some(2));
        assert!(page1.get("newStartPageToken").is_none());
        let next = page1["nextPageToken"].as_str().expect("next").to_owned();
        assert_eq!(page1["changes"][0]["fileId"], json!(a));
        assert_eq!(page1["changes"][0]["file"]["version"], json!("2"));
        assert_eq!(page1["changes"][1]["fileId"], json!(b));
        assert_eq!(page1["changes"][1]["removed"], json!(true));
        assert!(page1["changes"][1].get("file").is_none());
        let (_, page2) = get_json(&http, &format!("{base}/drive/v3/changes?pageToken={next}&pageSize=2")).await;
        assert_eq!(page2["changes"][0]["fileId"], json!(c));
        assert!(page2.get("nextPageToken").is_none());
        assert_eq!(
            page2["newStartPageToken"],
            json!(sim.next_change_id().to_string()),
            "{page2}"
        );

        sim.expire_all_tokens();
        let (status, err) = get_json(&http, &format!("{base}/drive/v3/changes?pageToken={token}")).await;
        assert_eq!(status, 400);
        assert_eq!(err["error"]["errors"][0]["reason"], "invalid");
        assert_eq!(err["error"]["errors"][0]["location"], "pageToken");
        assert_eq!(err["error"]["message"], "Invalid Value");
        assert_eq!(sim.total_calls(), 4);
    }

    /// files.list pages through one folder's children; alt=media and export
    /// serve content by type, and the wrong one is refused as Drive refuses it.
    #[tokio::test]
    async fn listing_download_and_export() {
        let (sim, base) = start(SimConfig {
            files: 30,
            subfolders: 2,
            ..SimConfig::default()
        })
        .await;
        let http = reqwest::Client::new();
        let q = "'root-folder' in parents and trashed=false";
        let url = format!("{base}/drive/v3/files?pageSize=5&q={}", urlencode(q));
        let (status, page) = get_json(&http, &url).await;
        assert_eq!(status, 200, "{page}");
        let mut n = page["files"].as_array().map_or(0, Vec::len);
        let mut token = page["nextPageToken"].as_str().map(str::to_owned);
        while let Some(t) = token {
            let (_, page) = get_json(&http, &format!("{url}&pageToken={}", urlencode(&t))).await;
            n += page["files"].as_array().map_or(0, Vec::len);
            token = page["nextPageToken"].as_str().map(str::to_owned);
        }
        let root = sim.root_folder_id();
        let expected = sim
            .files()
            .iter()
            .filter(|f| f.parent.as_deref() == Some(&root))
            .count();
        assert_eq!(n, expected);

        let files = sim.files();
        let doc = files.iter().find(|f| f.mime_type == DOC_MIME).expect("doc");
        let txt = files.iter().find(|f| f.mime_type == "text/plain").expect("txt");
        let resp = http
            .get(format!("{base}/drive/v3/files/{}?alt=media", txt.id))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.text().await.expect("text"), txt.content);
        let (status, err) = get_json(&http, &format!("{base}/drive/v3/files/{}?alt=media", doc.id)).await;
        assert_eq!(
            (status, err["error"]["errors"][0]["reason"].clone()),
            (403, json!("fileNotDownloadable"))
        );
        let resp = http
            .get(format!("{base}/drive/v3/files/{}/export?mimeType=text/plain", doc.id))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.text().await.expect("text"), doc.content);
        let (status, err) = get_json(&http, &format!("{base}/drive/v3/files/nope?alt=media")).await;
        assert_eq!(status, 404);
        assert_eq!(err["error"]["errors"][0]["reason"], "notFound");
    }

    /// Injected failures and an empty rate-limit bucket carry Google's error
    /// bodies; a shared drive hides its items without supportsAllDrives and
    /// refuses another driveId.
    #[tokio::test]
    async fn failures_rate_limits_and_shared_drives() {
        let (sim, base) = start(SimConfig {
            files: 3,
            drive_id: Some("0AbcSharedDrive".into()),
            ..SimConfig::default()
        })
        .await;
        let http = reqwest::Client::new();
        let tok = format!("{base}/drive/v3/changes/startPageToken");
        sim.fail_next(1, 429);
        let (status, err) = get_json(&http, &tok).await;
        assert_eq!(
            (status, err["error"]["errors"][0]["reason"].clone()),
            (429, json!("rateLimitExceeded"))
        );
        sim.set_rate_limit(Some(1));
        let (s1, _) = get_json(&http, &tok).await;
        let (s2, err) = get_json(&http, &tok).await;
        assert_eq!((s1, s2), (200, 403));
        assert_eq!(err["error"]["errors"][0]["reason"], "userRateLimitExceeded");
        assert_eq!(err["error"]["errors"][0]["domain"], "usageLimits");
        sim.set_rate_limit(None);

        let q = urlencode("'root-folder' in parents");
        let (_, hidden) = get_json(&http, &format!("{base}/drive/v3/files?q={q}")).await;
        assert_eq!(hidden["files"].as_array().map(Vec::len), Some(0));
        let shared = format!(
            "{base}/drive/v3/files?q={q}&corpora=drive&driveId=0AbcSharedDrive&supportsAllDrives=true&includeItemsFromAllDrives=true"
        );
        let (status, seen) = get_json(&http, &shared).await;
        assert_eq!(status, 200, "{seen}");
        assert!(seen["files"].as_array().is_some_and(|f| !f.is_empty()));
        assert_eq!(seen["files"][0]["driveId"], "0AbcSharedDrive");
        let (status, _) = get_json(&http, &shared.replace("0AbcSharedDrive", "0Other")).await;
        assert_eq!(status, 404);
        let (status, _) = get_json(&http, &format!("{base}/drive/v3/files?q={q}&corpora=drive")).await;
        assert_eq!(status, 400);
        assert!(
            sim.requests()
                .iter()
                .any(|r| r.params.get("driveId").map(String::as_str) == Some("0Other"))
        );
    }

    /// Control endpoints create, move, trash, delete and list files, and expire
    /// tokens, without counting themselves as API calls.
    #[tokio::test]
    async fn control_endpoints() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let created: Value = http
            .post(format!("{base}/_sim/files"))
            .json(&json!({"name": "x.txt", "content": "x"}))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let id = created["id"].as_str().expect("id").to_owned();
        let outside = sim.create_folder("Outside", &sim.drive_root_id()).expect("folder");
        let resp = http
            .post(format!("{base}/_sim/files/{id}/move"))
            .json(&json!({"parent": outside}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        let resp = http
            .post(format!("{base}/_sim/files/{id}/trash"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        let listed: Vec<SimFile> = http
            .get(format!("{base}/_sim/files"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let f = listed.iter().find(|f| f.id == id).expect("listed");
        assert!(f.trashed && f.parent.as_deref() == Some(outside.as_str()));
        let resp = http
            .delete(format!("{base}/_sim/files/{id}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        http.post(format!("{base}/_sim/tokens/expire"))
            .send()
            .await
            .expect("send");
        let (status, _) = get_json(&http, &format!("{base}/drive/v3/changes?pageToken={FIRST_CHANGE}")).await;
        assert_eq!(status, 400);
        assert_eq!(sim.total_calls(), 1);
        assert!(sim.files_in_tree().is_empty());
    }

    fn urlencode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}
