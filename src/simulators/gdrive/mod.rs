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
//! - `GET /drive/v3/files/{id}/permissions?pageSize=&pageToken=&supportsAllDrives=&fields=`
//! - `POST /drive/v3/changes/watch?pageToken=` and `POST /drive/v3/channels/stop`
//!   (push channels; every change is then POSTed to each open channel's address)
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
//!   `invalid`, location `pageToken` (or, after `set_token_refusal`, 404 or 410 Gone).
//! - `q` understands `'<id>' in parents` and `trashed = true|false` joined by
//!   `and`; anything else is a 400 `invalid` at location `q`.
//! - `fields` selects what responses carry, as Google's partial responses do
//!   (`fields.rs`); without it, Drive's defaults. `md5Checksum` is never served.
//! - Files stored in Drive are real files of their type (`crate::simulators::files`),
//!   with `size`, `sha256Checksum` and Drive's `webViewLink` forms.
//! - Shared drive (`drive_id` set): items are visible only with
//!   `supportsAllDrives=true` (files.get and files.list) and, for lists,
//!   `includeItemsFromAllDrives=true`; a `driveId` other than the configured one
//!   is a 404 `notFound`. `corpora=drive` and `driveId` must come together.
//! - Bearer tokens: any token, or none, is accepted; the caller can read and
//!   share everything (use `fail_next(n, 401)` for auth failures).
//! - Sharing: each item holds its direct permissions; its effective ones add
//!   those of every ancestor folder (Drive: "Permission lists for a folder
//!   propagate downward"). Files carry `permissions` (not in a shared drive)
//!   and `permissionIds`; a share or unshare bumps `version`, keeps
//!   `modifiedTime` and records one change, for the item only.
//! - Rate limit: a token bucket of `per_sec` tokens refilled per second; an empty
//!   bucket answers 403 `userRateLimitExceeded` without `Retry-After`, as Drive does.
//! - Trashing a folder trashes only that folder's own record (Drive implicitly
//!   trashes the subtree; a client sees the folder's change and must infer the rest).
//!
//! Where things are: [`GdriveSim`], its control methods and the request log
//! here; files, folders and the change log in `model`; the Drive endpoints,
//! their JSON and Google's errors in `api`; the `q` subset in `query`; the
//! `/_sim/` endpoints in `control`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::http::{self, CallCounts};
use super::traffic::{Admission, TrafficStats};
use model::SimState;
pub use model::{
    DOC_MIME, EXPORT_LIMIT_BYTES, FOLDER_MIME, FORM_MIME, SHEET_MIME, SHORTCUT_MIME, SLIDES_MIME, SimFile,
};
pub use push::MAX_CHANNEL_SECS;
pub use sharing::{
    EffectivePermission, PERMISSION_ROLES, PERMISSION_TYPES, PermissionDetail, PermissionError, SEED_DOMAIN,
    SEED_GROUP, SIM_OWNER_EMAIL, SimPermission,
};

mod api;
mod control;
mod fields;
mod model;
mod push;
mod query;
mod sharing;

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
    /// Shortcuts seeded in the last folder, each to one of the first seeded files.
    pub shortcuts: usize,
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
            shortcuts: 0,
        }
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

impl GdriveSim {
    /// A simulator with the drive root, the synced folder, `cfg.subfolders`
    /// folders and `cfg.files` files (every third a Google Doc).
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState::seeded(cfg))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum app: API routes (counted, failed and rate limited on demand) and `/_sim/` controls.
    pub fn router(&self) -> Router {
        http::app(self.clone(), api::routes(self), control::routes(), api::not_found)
    }

    /// Binds `addr` (port 0 picks one), serves in a spawned task, returns the
    /// bound address. Push notifications are delivered from here on.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().outbox = Some(tx);
        tokio::spawn(push::deliver(rx));
        http::serve(self.router(), addr, "gdrive").await
    }

    /// The open push channels: (id, address, expiration).
    pub fn channels(&self) -> Vec<(String, String, DateTime<Utc>)> {
        self.lock()
            .channels
            .iter()
            .map(|c| (c.id.clone(), c.address.clone(), c.expiration))
            .collect()
    }

    /// How many channels `channels.stop` has closed.
    pub fn stopped_channels(&self) -> u64 {
        self.lock().stopped_channels
    }

    /// Grants channels at most `secs` of life (Drive: one week), so tests see renewals.
    pub fn set_channel_cap(&self, secs: i64) {
        self.lock().max_channel_secs = secs;
    }

    /// The synced folder's id.
    pub fn root_folder_id(&self) -> String {
        self.lock().root_id.clone()
    }

    /// The drive root's id (the synced folder's parent, outside the synced tree).
    pub fn drive_root_id(&self) -> String {
        self.lock().drive_root_id.clone()
    }

    /// Creates a text file (or a Docs Editors file whose export is `content`),
    /// version 1, under `parent`; returns its id. `None` if `parent` is not a folder.
    pub fn create_file(&self, name: &str, parent: &str, mime: &str, content: &str) -> Option<String> {
        self.lock().create_file(name, parent, mime, content.as_bytes(), content)
    }

    /// Creates a file holding `bytes` (a real PDF, DOCX, ...) whose readable
    /// text is `text`, version 1, under `parent`; returns its id.
    pub fn create_binary(&self, name: &str, parent: &str, mime: &str, bytes: &[u8], text: &str) -> Option<String> {
        self.lock().create_file(name, parent, mime, bytes, text)
    }

    /// Creates a folder under `parent`; returns its id. `None` if `parent` is not a folder.
    pub fn create_folder(&self, name: &str, parent: &str) -> Option<String> {
        self.create_file(name, parent, FOLDER_MIME, "")
    }

    /// Renames and/or rewrites a text file: bumps `version` and `modifiedTime`,
    /// records a change. `false` if there is no such file.
    pub fn update_file(&self, id: &str, name: Option<&str>, content: Option<&str>) -> bool {
        self.lock().update_file(id, name, content.map(|c| (c.as_bytes(), c)))
    }

    /// Rewrites a file with new `bytes` whose readable text is `text`, as [`Self::update_file`].
    pub fn update_binary(&self, id: &str, bytes: &[u8], text: &str) -> bool {
        self.lock().update_file(id, None, Some((bytes, text)))
    }

    /// Moves a file to the trash (`trashed: true`, still readable by id), recording a change.
    pub fn trash_file(&self, id: &str) -> bool {
        self.lock().set_trashed(id, true)
    }

    /// Restores a file from the trash, recording a change.
    pub fn untrash_file(&self, id: &str) -> bool {
        self.lock().set_trashed(id, false)
    }

    /// Deletes a file permanently (its change then reads `removed: true`). A
    /// folder's descendants are deleted with it, each with its own change.
    pub fn delete_file(&self, id: &str) -> bool {
        self.lock().delete_file(id)
    }

    /// Moves a file or folder to `new_parent` (Drive's `addParents`/`removeParents`),
    /// recording one change for the moved item only. `false` if either is unknown,
    /// the new parent is not a folder, or the move would create a cycle.
    pub fn move_file(&self, id: &str, new_parent: &str) -> bool {
        self.lock().move_file(id, new_parent)
    }

    /// Adds `perm` directly on item `id`, or replaces the same grantee's (its id
    /// is set from the grantee); returns it as stored. Bumps `version`, keeps
    /// `modifiedTime`, records one change for the item only (not its descendants).
    pub fn share(&self, id: &str, perm: SimPermission) -> Result<SimPermission, PermissionError> {
        self.lock().share(id, perm)
    }

    /// Removes the direct permission `permission_id` from item `id`, as
    /// [`Self::share`] records it. Inherited permissions and the owner's are refused.
    pub fn unshare(&self, id: &str, permission_id: &str) -> Result<(), PermissionError> {
        self.lock().unshare(id, permission_id)
    }

    /// The item's effective permissions (its own and every ancestor's, one per
    /// grantee at its highest role), in the order the API serves them; empty for
    /// an unknown item.
    pub fn permissions(&self, id: &str) -> Vec<SimPermission> {
        self.effective_permissions(id)
            .into_iter()
            .map(|ep| ep.permission)
            .collect()
    }

    /// [`Self::permissions`] with each one's grants (`permissionDetails`).
    pub fn effective_permissions(&self, id: &str) -> Vec<EffectivePermission> {
        self.lock().effective_perms(id).unwrap_or_default()
    }

    /// The permissions set directly on the item (none inherited).
    pub fn direct_permissions(&self, id: &str) -> Vec<SimPermission> {
        self.lock().files.get(id).map(|e| e.perms.clone()).unwrap_or_default()
    }

    /// Every file and folder (the drive root included), sorted by id.
    pub fn files(&self) -> Vec<SimFile> {
        self.lock().snapshot()
    }

    /// Non-folder files whose ancestor chain reaches the synced folder through
    /// untrashed folders, themselves untrashed: what a correct sync holds
    /// (before filtering out types it cannot read).
    pub fn files_in_tree(&self) -> Vec<SimFile> {
        let all = self.files();
        let root = self.root_folder_id();
        model::files_in_tree(&all, &root)
    }

    /// Refuses page tokens older than `change_id` from now on.
    pub fn expire_tokens_before(&self, change_id: u64) {
        self.lock().expired_before = change_id;
    }

    /// Refuses every page token handed out so far, the current start token
    /// included. Skips one change id so tokens handed out from now on are newer
    /// (Drive's change ids are not contiguous either).
    pub fn expire_all_tokens(&self) {
        self.lock().expire_all_tokens();
    }

    /// Refuses expired page tokens with `status` from now on: 400 `invalid`
    /// (the default, as Drive documents), 404 `notFound` or 410 `fullSyncRequired`.
    pub fn set_token_refusal(&self, status: u16) {
        self.lock().token_refusal = status;
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
        model::now()
    }

    /// Counts and logs one API request and decides whether it is served.
    fn admit(&self, label: &str, params: BTreeMap<String, String>, arrived: std::time::Instant) -> Admission {
        let mut st = self.lock();
        if st.requests.len() >= REQUEST_LOG {
            st.requests.pop_front();
        }
        st.requests.push_back(SimRequest {
            label: label.to_owned(),
            params,
        });
        st.traffic.admit(label, arrived)
    }

    /// How clients behaved: the busiest second (Drive sends no `Retry-After`,
    /// so there are no early requests to count; also at `/_sim/stats`).
    pub fn traffic_stats(&self) -> TrafficStats {
        self.lock().traffic.stats()
    }
}

impl CallCounts for GdriveSim {
    fn calls(&self) -> BTreeMap<String, u64> {
        GdriveSim::calls(self)
    }

    fn total_calls(&self) -> u64 {
        GdriveSim::total_calls(self)
    }

    fn reset_calls(&self) {
        GdriveSim::reset_calls(self);
    }

    fn traffic_stats(&self) -> TrafficStats {
        GdriveSim::traffic_stats(self)
    }
}

/// Serves a fresh simulator on a free local port; returns it and its base URL.
#[cfg(test)]
async fn start(cfg: SimConfig) -> (GdriveSim, String) {
    let sim = GdriveSim::new(cfg);
    let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
    (sim, format!("http://{addr}"))
}

/// GETs `url`; returns the status and the JSON body.
#[cfg(test)]
async fn get_json(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let resp = http.get(url).send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}
