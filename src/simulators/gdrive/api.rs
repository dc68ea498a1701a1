//! The Drive API v3 endpoints themselves: the gate every API request passes
//! (logging, counting, injected failures, rate limit), the handlers of
//! `changes.getStartPageToken`, `changes.list`, `files.list`, `files.get`
//! (metadata and `alt=media`), `files.export` and `permissions.list`, the
//! file/change/permission JSON, the
//! shared-drive scoping rules, parameter checks and Google's error bodies.
//!
//! Invariants:
//! - Every error has Google's shape: `{"error":{"code","message","errors":[{domain,
//!   reason,message,location?,locationType?}],"status"}}`.
//! - Exactly one of `nextPageToken` / `newStartPageToken` is in every change
//!   list; a change token older than the expiry, not a number, or beyond the
//!   log is a 400 `invalid` at `pageToken`. Each file is listed once, at its
//!   latest change, in its current state.
//! - Shared drive: items are visible only with `supportsAllDrives=true` and,
//!   for lists, `includeItemsFromAllDrives=true` (or a `driveId`); another
//!   `driveId` is a 404 `notFound`.
//! - An empty rate bucket answers 403 `userRateLimitExceeded` without
//!   `Retry-After`, as Drive does.
//! - `fields` selects what a response carries ([`super::fields`]); without it,
//!   Drive's defaults (`kind,id,name,mimeType` per file).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::GdriveSim;
use super::fields::Selection;
use super::model::{DOC_MIME, EXPORT_LIMIT_BYTES, Entry, FIRST_CHANGE, FOLDER_MIME, SHEET_MIME, SLIDES_MIME, SimState};
use super::query::parse_q;
use super::sharing::{EffectivePermission, SimPermission};
use crate::simulators::http::{self, query_map, rfc3339_millis as ts};
use crate::simulators::traffic::Admission;

/// Largest `pageSize` of `changes.list` and `files.list`.
const MAX_PAGE_SIZE: usize = 1000;
/// Default `pageSize` of `changes.list` and `files.list`.
const DEFAULT_PAGE_SIZE: usize = 100;

/// The API routes, behind [`gate`].
pub(super) fn routes(sim: &GdriveSim) -> Router<GdriveSim> {
    Router::new()
        .route("/drive/v3/changes/startPageToken", get(api_start_token))
        .route("/drive/v3/changes", get(api_changes))
        .route("/drive/v3/files", get(api_files_list))
        .route("/drive/v3/files/{id}", get(api_files_get))
        .route("/drive/v3/files/{id}/export", get(api_files_export))
        .route("/drive/v3/files/{id}/permissions", get(api_permissions_list))
        .route("/drive/v3/changes/watch", post(super::push::api_watch))
        .route("/drive/v3/channels/stop", post(super::push::api_stop))
        .route_layer(middleware::from_fn_with_state(sim.clone(), gate))
}

/// The resource JSON of one file, as every endpoint serves it.
impl SimState {
    pub(super) fn file_json(&self, id: &str, e: &Entry) -> Value {
        let mut v = json!({
            "kind": "drive#file",
            "id": id,
            "name": e.name,
            "mimeType": e.mime,
            "parents": e.parent.iter().collect::<Vec<_>>(),
            "trashed": e.trashed,
            "modifiedTime": ts(e.modified),
            "version": e.version.to_string(),
            "webViewLink": web_view_link(id, &e.mime),
        });
        // Only files with content stored in Drive have a size and checksums
        // (not Docs Editors files, folders or shortcuts). `md5Checksum` and
        // `sha1Checksum` are not simulated: tidemark does not ask for them.
        if !e.mime.starts_with("application/vnd.google-apps.") {
            v["size"] = json!(e.content.len().to_string());
            v["sha256Checksum"] = json!(crate::sources::sha256_hex(&e.content));
        }
        if let Some(d) = &self.drive_id {
            v["driveId"] = json!(d);
        }
        if let Some(target) = &e.target {
            let target_mime = self.files.get(target).map(|t| t.mime.clone()).unwrap_or_default();
            v["shortcutDetails"] = json!({"targetId": target, "targetMimeType": target_mime});
        }
        // `permissionIds`: "List of permission IDs for users with access to this
        // file." (the effective grantees: the reference does not say whether
        // inherited grants count; access comes from them too). `permissions`:
        // "Not populated for items in shared drives."
        let effective = self.effective_perms(id).unwrap_or_default();
        v["permissionIds"] = json!(effective.iter().map(|ep| &ep.permission.id).collect::<Vec<_>>());
        if !self.in_shared_drive() {
            v["permissions"] = Value::Array(effective.iter().map(permission_json).collect());
        }
        v
    }
}

/// A permission as Drive serves it (`drive#permission`), without `permissionDetails`.
pub(super) fn permission_base_json(p: &SimPermission) -> Value {
    let mut v = json!({"kind": "drive#permission", "id": p.id, "type": p.r#type, "role": p.role});
    if let Some(email) = &p.email_address {
        v["emailAddress"] = json!(email);
    }
    if let Some(domain) = &p.domain {
        v["domain"] = json!(domain);
    }
    if let Some(discovery) = p.allow_file_discovery {
        v["allowFileDiscovery"] = json!(discovery);
    }
    v
}

/// An effective permission as Drive serves it, `permissionDetails` included.
fn permission_json(ep: &EffectivePermission) -> Value {
    let mut v = permission_base_json(&ep.permission);
    v["permissionDetails"] = json!(ep.details);
    v
}

/// A Google API error body: `{"error":{"code","message","errors":[{domain,reason,message,location?,locationType?}],"status"}}`.
pub(super) fn google_error(
    status: u16,
    domain: &str,
    reason: &str,
    message: &str,
    location: Option<(&str, &str)>,
) -> Response {
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
        410 => "ABORTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    (
        code,
        Json(json!({"error": {"code": status, "message": message, "errors": [item], "status": status_name}})),
    )
        .into_response()
}

/// A refused page token, in the shape a Google API answers it with `status`:
/// 400 `invalid` at `pageToken` (what Drive documents), 404 `notFound`, or 410
/// `fullSyncRequired` (how Google's sync-token APIs say "start over").
fn token_refused(status: u16) -> Response {
    match status {
        404 => google_error(
            404,
            "global",
            "notFound",
            "Page token not found.",
            Some(("parameter", "pageToken")),
        ),
        410 => google_error(
            410,
            "global",
            "fullSyncRequired",
            "Sync token is no longer valid, a full sync is required.",
            None,
        ),
        _ => invalid_param("pageToken", "Invalid Value"),
    }
}

/// A 400 `required` for a missing parameter `name`, as Google words it.
pub(super) fn required_param(name: &str) -> Response {
    google_error(
        400,
        "global",
        "required",
        &format!("Required parameter: {name}"),
        Some(("parameter", name)),
    )
}

fn invalid_param(name: &str, message: &str) -> Response {
    google_error(400, "global", "invalid", message, Some(("parameter", name)))
}

/// A 404 `notFound` for file `id`.
pub(super) fn file_not_found(id: &str) -> Response {
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
async fn gate(State(sim): State<GdriveSim>, req: Request, next: Next) -> Response {
    let arrived = std::time::Instant::now();
    let label = http::endpoint_label(&req);
    let params = query_map(req.uri().query());
    let latency = sim.lock().traffic.latency();
    http::delay(latency).await;
    match sim.admit(&label, params, arrived) {
        Admission::Serve(_) => next.run(req).await,
        Admission::Fail(status) => injected(status),
        Admission::Corrupt => http::truncated_json(r#"{"kind":"drive#changeList","changes":[{"kind":"drive#ch"#),
        // Drive answers an exhausted quota with 403 userRateLimitExceeded, no Retry-After.
        Admission::Limited { .. } => injected(403),
    }
}

/// Any other path: Google's 404.
pub(super) async fn not_found() -> Response {
    google_error(404, "global", "notFound", "Not Found", None)
}

/// `fields` when the request has none: what Drive v3 answers by default.
const DEFAULT_LIST_FIELDS: &str = "kind,nextPageToken,incompleteSearch,files(kind,id,name,mimeType)";
const DEFAULT_CHANGE_FIELDS: &str = "kind,nextPageToken,newStartPageToken,changes(kind,changeType,removed,fileId,time,driveId,file(kind,id,name,mimeType))";
const DEFAULT_FILE_FIELDS: &str = "kind,id,name,mimeType";
/// permissions.list: "By default, permissions requests only return a subset of
/// fields. Permission kind, ID, type, and role are always returned."
const DEFAULT_PERMISSION_LIST_FIELDS: &str = "kind,nextPageToken,permissions(kind,id,type,role)";
/// Largest `pageSize` of `permissions.list` ("Maximum: 100").
const MAX_PERMISSION_PAGE: usize = 100;

/// `body` cut down to the request's `fields` (or `default`); 400 for a malformed selection.
fn selected(p: &BTreeMap<String, String>, default: &str, body: &Value) -> Response {
    match Selection::parse(p.get("fields").map_or(default, String::as_str)) {
        Ok(sel) => Json(sel.apply(body)).into_response(),
        Err(e) => invalid_param("fields", &format!("Invalid field selection: {e}")),
    }
}

/// `webViewLink` as Drive serves it (files resource: "a link for opening the
/// file in a relevant Google editor or viewer in a browser"): the editor for
/// Docs Editors files, the Drive viewer otherwise, with `usp=drivesdk` for API clients.
fn web_view_link(id: &str, mime: &str) -> String {
    match mime {
        DOC_MIME => format!("https://docs.google.com/document/d/{id}/edit?usp=drivesdk"),
        SHEET_MIME => format!("https://docs.google.com/spreadsheets/d/{id}/edit?usp=drivesdk"),
        SLIDES_MIME => format!("https://docs.google.com/presentation/d/{id}/edit?usp=drivesdk"),
        FOLDER_MIME => format!("https://drive.google.com/drive/folders/{id}"),
        _ => format!("https://drive.google.com/file/d/{id}/view?usp=drivesdk"),
    }
}

async fn api_start_token(State(sim): State<GdriveSim>, RawQuery(q): RawQuery) -> Response {
    let p = query_map(q.as_deref());
    let st = sim.lock();
    if let Err(resp) = drive_scope(&st, &p) {
        return *resp;
    }
    Json(json!({"kind": "drive#startPageToken", "startPageToken": st.next_change.to_string()})).into_response()
}

async fn api_changes(State(sim): State<GdriveSim>, RawQuery(q): RawQuery) -> Response {
    let p = query_map(q.as_deref());
    let st = sim.lock();
    let visible = match drive_scope(&st, &p) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let Some(token) = p.get("pageToken") else {
        return required_param("pageToken");
    };
    let start = match token.parse::<u64>() {
        Ok(t) if t >= st.expired_before && t >= FIRST_CHANGE && t <= st.next_change => t,
        _ => return token_refused(st.token_refusal),
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
    selected(&p, DEFAULT_CHANGE_FIELDS, &body)
}

async fn api_files_list(State(sim): State<GdriveSim>, RawQuery(q): RawQuery) -> Response {
    let p = query_map(q.as_deref());
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
    selected(&p, DEFAULT_LIST_FIELDS, &body)
}

async fn api_files_get(State(sim): State<GdriveSim>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = query_map(q.as_deref());
    let st = sim.lock();
    let supports = match flag(&p, "supportsAllDrives") {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let Some(e) = st.files.get(&id).filter(|_| supports || !st.in_shared_drive()) else {
        return file_not_found(&id);
    };
    match p.get("alt").map(String::as_str) {
        None | Some("json") => selected(&p, DEFAULT_FILE_FIELDS, &st.file_json(&id, e)),
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
    let p = query_map(q.as_deref());
    let st = sim.lock();
    let Some(e) = st.files.get(&id) else {
        return file_not_found(&id);
    };
    let Some(target) = p.get("mimeType") else {
        return required_param("mimeType");
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
    // "The exported content is limited to 10MB" (files.export reference); the
    // refusal's body is 403 `exportSizeLimitExceeded`, "This file is too large
    // to be exported." (the "Resolve errors" guide and Google's client libraries' reports).
    if e.content.len() > EXPORT_LIMIT_BYTES {
        return google_error(
            403,
            "global",
            "exportSizeLimitExceeded",
            "This file is too large to be exported.",
            None,
        );
    }
    let ct = HeaderValue::from_str(target).unwrap_or(HeaderValue::from_static("text/plain"));
    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], e.content.clone()).into_response()
}

/// `permissions.list`: the item's effective permissions, paged. `fileId` may
/// be the shared drive's id ("The ID of the file or shared drive."): its
/// membership, the drive root's permissions. A shared-drive item without
/// `supportsAllDrives=true` is a 404, as files.get answers it.
async fn api_permissions_list(State(sim): State<GdriveSim>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    let p = query_map(q.as_deref());
    let st = sim.lock();
    let supports = match flag(&p, "supportsAllDrives") {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let item = if st.drive_id.as_deref() == Some(id.as_str()) {
        st.drive_root_id.clone()
    } else {
        id.clone()
    };
    let Some(effective) = st.effective_perms(&item).filter(|_| supports || !st.in_shared_drive()) else {
        return file_not_found(&id);
    };
    // "When not set for files in a shared drive, at most 100 results will be
    // returned. When not set for files that are not in a shared drive, the
    // entire list will be returned."
    let size = match p.get("pageSize") {
        None if st.in_shared_drive() => MAX_PERMISSION_PAGE,
        None => usize::MAX,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PERMISSION_PAGE).contains(&n) => n,
            _ => {
                return invalid_param(
                    "pageSize",
                    &format!("Invalid value '{s}'. Values must be within the range: [1, 100]"),
                );
            }
        },
    };
    let start = match p.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("p").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 && n < effective.len() => n,
            _ => return invalid_param("pageToken", "Invalid Value"),
        },
    };
    let end = start.saturating_add(size).min(effective.len());
    let page: Vec<Value> = effective[start..end].iter().map(permission_json).collect();
    let mut body = json!({"kind": "drive#permissionList", "permissions": page});
    if end < effective.len() {
        body["nextPageToken"] = json!(format!("p{end}"));
    }
    selected(&p, DEFAULT_PERMISSION_LIST_FIELDS, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulators::gdrive::{SimConfig, get_json, start};

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
        assert_eq!(resp.bytes().await.expect("bytes"), txt.content);
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
        assert_eq!(resp.bytes().await.expect("bytes"), doc.content);
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
            "{base}/drive/v3/files?q={q}&corpora=drive&driveId=0AbcSharedDrive&supportsAllDrives=true&includeItemsFromAllDrives=true&fields=files(id%2CdriveId)"
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

    fn urlencode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}

#[cfg(test)]
mod permission_tests {
    use super::*;
    use crate::simulators::gdrive::{
        GdriveSim, PermissionError, SEED_DOMAIN, SEED_GROUP, SIM_OWNER_EMAIL, SimConfig, SimPermission, get_json, start,
    };

    fn folder(sim: &GdriveSim, name: &str) -> String {
        sim.files().into_iter().find(|f| f.name == name).expect("folder").id
    }

    fn urlencode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    /// A file in Folder 2 (in Folder 1) holds its owner's grant and inherits the
    /// domain's (Folder 2) and the group's (Folder 1); a direct grant raising an
    /// inherited one is one permission at the higher role with both details. In
    /// My Drive `inheritedFrom` is absent.
    #[tokio::test]
    async fn inheritance_and_permission_details() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let f2 = folder(&sim, "Folder 2");
        let id = sim.create_file("a.txt", &f2, "text/plain", "a").expect("file");
        let group = SimPermission::group(SEED_GROUP, "reader");
        let domain = SimPermission::domain(SEED_DOMAIN, "reader", true);
        let owner = SimPermission::user(SIM_OWNER_EMAIL, "owner");
        assert_eq!(sim.permissions(&id), vec![owner.clone(), domain.clone(), group.clone()]);
        sim.share(&id, SimPermission::group(SEED_GROUP, "writer"))
            .expect("share");

        let (status, f) = get_json(
            &http,
            &format!("{base}/drive/v3/files/{id}?fields=permissions,permissionIds"),
        )
        .await;
        assert_eq!(status, 200, "{f}");
        let perms = f["permissions"].as_array().expect("permissions");
        assert_eq!(perms.len(), 3);
        assert_eq!(f["permissionIds"], json!([owner.id, group.id, domain.id]));
        let g = perms.iter().find(|p| p["id"] == json!(group.id)).expect("group");
        assert_eq!(g["kind"], "drive#permission");
        assert_eq!(g["type"], "group");
        assert_eq!(g["role"], "writer");
        assert_eq!(g["emailAddress"], SEED_GROUP);
        assert_eq!(
            g["permissionDetails"],
            json!([
                {"permissionType": "file", "role": "writer", "inherited": false},
                {"permissionType": "file", "role": "reader", "inherited": true}
            ])
        );
        let d = perms.iter().find(|p| p["id"] == json!(domain.id)).expect("domain");
        assert_eq!(d["domain"], SEED_DOMAIN);
        assert_eq!(d["allowFileDiscovery"], true);
        assert_eq!(
            d["permissionDetails"],
            json!([{"permissionType": "file", "role": "reader", "inherited": true}])
        );
        let o = perms.iter().find(|p| p["id"] == json!(owner.id)).expect("owner");
        assert_eq!(o["role"], "owner");
        assert_eq!(
            o["permissionDetails"],
            json!([
                {"permissionType": "file", "role": "owner", "inherited": false},
                {"permissionType": "file", "role": "owner", "inherited": true}
            ])
        );
        // Anyone with the link: Drive's id for it.
        let link = sim.share(&id, SimPermission::anyone("reader", false)).expect("share");
        assert_eq!(link.id, "anyoneWithLink");
        assert_eq!(link.allow_file_discovery, Some(false));
    }

    /// `fields` selects sub-fields of `permissions` in files.get, files.list and
    /// changes.list; an unrequested `permissions` is absent.
    #[tokio::test]
    async fn fields_select_permissions() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let root = sim.root_folder_id();
        let (_, tok) = get_json(&http, &format!("{base}/drive/v3/changes/startPageToken")).await;
        let token = tok["startPageToken"].as_str().expect("token").to_owned();
        let id = sim.create_file("a.txt", &root, "text/plain", "a").expect("file");

        let (_, f) = get_json(&http, &format!("{base}/drive/v3/files/{id}")).await;
        assert!(
            f.get("permissions").is_none() && f.get("permissionIds").is_none(),
            "{f}"
        );
        let (_, f) = get_json(
            &http,
            &format!(
                "{base}/drive/v3/files/{id}?fields={}",
                urlencode("id,permissions(id,type)")
            ),
        )
        .await;
        assert_eq!(
            f,
            json!({"id": id, "permissions": [{"id": SimPermission::user(SIM_OWNER_EMAIL, "owner").id, "type": "user"}]})
        );
        let q = urlencode("'root-folder' in parents");
        let (_, list) = get_json(
            &http,
            &format!(
                "{base}/drive/v3/files?q={q}&fields={}",
                urlencode("files(id,permissions(id,type))")
            ),
        )
        .await;
        let files = list["files"].as_array().expect("files");
        assert!(!files.is_empty());
        for f in files {
            for p in f["permissions"].as_array().expect("permissions") {
                let keys: Vec<&String> = p.as_object().expect("object").keys().collect();
                assert_eq!(keys, vec!["id", "type"], "{p}");
            }
        }
        let (_, changes) = get_json(
            &http,
            &format!(
                "{base}/drive/v3/changes?pageToken={token}&fields={}",
                urlencode("changes(file(permissions(role)))")
            ),
        )
        .await;
        assert_eq!(
            changes,
            json!({"changes": [{"file": {"permissions": [{"role": "owner"}]}}]})
        );
    }

    /// In a shared drive files carry `permissionIds` but no `permissions`;
    /// permissions.list serves them (with `inheritedFrom` and the drive's
    /// membership as `member`) only with supportsAllDrives=true, 100 at most by default.
    #[tokio::test]
    async fn shared_drive_permissions() {
        let (sim, base) = start(SimConfig {
            drive_id: Some("0AbcSharedDrive".into()),
            ..SimConfig::default()
        })
        .await;
        let http = reqwest::Client::new();
        let f1 = folder(&sim, "Folder 1");
        let id = sim.create_file("a.txt", &f1, "text/plain", "a").expect("file");
        let (status, f) = get_json(
            &http,
            &format!("{base}/drive/v3/files/{id}?supportsAllDrives=true&fields=*"),
        )
        .await;
        assert_eq!(status, 200, "{f}");
        assert!(f.get("permissions").is_none(), "{f}");
        let ids: Vec<String> = sim.permissions(&id).into_iter().map(|p| p.id).collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(f["permissionIds"], json!(ids));

        let url = format!("{base}/drive/v3/files/{id}/permissions");
        let (status, _) = get_json(&http, &url).await;
        assert_eq!(status, 404);
        let (status, list) = get_json(&http, &format!("{url}?supportsAllDrives=true&fields=*")).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["kind"], "drive#permissionList");
        let perms = list["permissions"].as_array().expect("permissions");
        let organizer = perms.iter().find(|p| p["role"] == "organizer").expect("member");
        assert_eq!(
            organizer["permissionDetails"],
            json!([{"permissionType": "member", "role": "organizer", "inherited": true, "inheritedFrom": sim.drive_root_id()}])
        );
        let group = perms.iter().find(|p| p["type"] == "group").expect("group");
        assert_eq!(
            group["permissionDetails"],
            json!([{"permissionType": "file", "role": "reader", "inherited": true, "inheritedFrom": f1}])
        );
        // The shared drive's own id lists its membership.
        let (status, members) = get_json(
            &http,
            &format!("{base}/drive/v3/files/0AbcSharedDrive/permissions?supportsAllDrives=true"),
        )
        .await;
        assert_eq!(status, 200, "{members}");
        assert_eq!(members["permissions"].as_array().map(Vec::len), Some(1));
    }

    /// permissions.list pages with pageSize (1..=100), returns only kind, id,
    /// type and role by default, is counted as an API call, and answers 404 for
    /// an unknown file.
    #[tokio::test]
    async fn permissions_list_pages_and_defaults() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let f2 = folder(&sim, "Folder 2");
        let id = sim.create_file("a.txt", &f2, "text/plain", "a").expect("file");
        let url = format!("{base}/drive/v3/files/{id}/permissions");
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page_url = match &token {
                Some(t) => format!("{url}?pageSize=1&pageToken={t}"),
                None => format!("{url}?pageSize=1"),
            };
            let (status, page) = get_json(&http, &page_url).await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(page["kind"], "drive#permissionList");
            let perms = page["permissions"].as_array().expect("permissions");
            assert_eq!(perms.len(), 1);
            let keys: Vec<&String> = perms[0].as_object().expect("object").keys().collect();
            assert_eq!(keys, vec!["id", "kind", "role", "type"]);
            seen.push(perms[0]["id"].as_str().expect("id").to_owned());
            token = page["nextPageToken"].as_str().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let expected: Vec<String> = sim.permissions(&id).into_iter().map(|p| p.id).collect();
        assert_eq!(seen, expected);
        assert_eq!(seen.len(), 3);
        let (_, all) = get_json(&http, &url).await;
        assert_eq!(all["permissions"].as_array().map(Vec::len), Some(3));
        assert!(all.get("nextPageToken").is_none());
        for bad in ["0", "101", "x"] {
            let (status, err) = get_json(&http, &format!("{url}?pageSize={bad}")).await;
            assert_eq!(status, 400, "{err}");
            assert_eq!(err["error"]["errors"][0]["location"], "pageSize");
        }
        let (status, err) = get_json(&http, &format!("{base}/drive/v3/files/nope/permissions")).await;
        assert_eq!(status, 404);
        assert_eq!(err["error"]["errors"][0]["reason"], "notFound");
        assert!(sim.delete_file(&id));
        let (status, _) = get_json(&http, &url).await;
        assert_eq!(status, 404);
        assert_eq!(sim.calls().get("GET /drive/v3/files/{id}/permissions"), Some(&9));
        sim.fail_next(1, 429);
        let (status, _) = get_json(&http, &format!("{base}/drive/v3/files/nope/permissions")).await;
        assert_eq!(status, 429);
    }

    /// Sharing and unsharing bump the item's version, keep its modifiedTime and
    /// record exactly one change, for the item only (not its descendants); an
    /// inherited permission cannot be removed.
    #[tokio::test]
    async fn share_and_unshare_record_one_change() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let f3 = folder(&sim, "Folder 3");
        let child = sim.create_file("c.txt", &f3, "text/plain", "c").expect("file");
        let before = sim.files();
        let folder_before = before.iter().find(|f| f.id == f3).expect("folder").clone();
        let child_before = before.iter().find(|f| f.id == child).expect("child").clone();
        let first = sim.next_change_id();

        let resp = http
            .post(format!("{base}/_sim/files/{f3}/permissions"))
            .json(&json!({"type": "user", "role": "commenter", "emailAddress": "carol@example.com"}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let created: Value = resp.json().await.expect("json");
        let carol = SimPermission::user("carol@example.com", "commenter");
        assert_eq!(
            created,
            json!({"kind": "drive#permission", "id": carol.id, "type": "user", "role": "commenter", "emailAddress": "carol@example.com"})
        );
        assert_eq!(sim.next_change_id(), first + 1);
        let after = sim.files();
        let folder_after = after.iter().find(|f| f.id == f3).expect("folder");
        assert_eq!(folder_after.version, folder_before.version + 1);
        assert_eq!(folder_after.modified_time, folder_before.modified_time);
        assert_eq!(after.iter().find(|f| f.id == child), Some(&child_before));
        assert!(sim.permissions(&child).contains(&carol));
        let (_, changes) = get_json(
            &http,
            &format!("{base}/drive/v3/changes?pageToken={first}&fields=changes(fileId)"),
        )
        .await;
        assert_eq!(changes, json!({"changes": [{"fileId": f3}]}));

        // Inherited on the child: refused, nothing recorded.
        assert_eq!(sim.unshare(&child, &carol.id), Err(PermissionError::Inherited));
        let resp = http
            .delete(format!("{base}/_sim/files/{child}/permissions/{}", carol.id))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 403);
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["errors"][0]["reason"], "insufficientFilePermissions");
        assert_eq!(sim.next_change_id(), first + 1);

        let resp = http
            .delete(format!("{base}/_sim/files/{f3}/permissions/{}", carol.id))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        assert_eq!(sim.next_change_id(), first + 2);
        let folder_now = sim.files().into_iter().find(|f| f.id == f3).expect("folder");
        assert_eq!(folder_now.version, folder_before.version + 2);
        assert_eq!(folder_now.modified_time, folder_before.modified_time);
        assert!(!sim.permissions(&child).contains(&carol));
        assert_eq!(sim.unshare(&f3, &carol.id), Err(PermissionError::PermissionNotFound));
        assert_eq!(sim.unshare("nope", &carol.id), Err(PermissionError::FileNotFound));
        let owner = SimPermission::user(SIM_OWNER_EMAIL, "owner");
        assert_eq!(sim.unshare(&f3, &owner.id), Err(PermissionError::Owner));
        assert!(matches!(
            sim.share(&f3, SimPermission::user("", "reader")),
            Err(PermissionError::Invalid(_))
        ));
        assert_eq!(sim.total_calls(), 1);
    }

    /// The seeded tree is shared in a deterministic variety: groups and a domain
    /// on folders, anyone-with-link and users on files.
    #[test]
    fn seeded_sharing_is_varied_and_deterministic() {
        let cfg = SimConfig {
            files: 24,
            ..SimConfig::default()
        };
        let a = GdriveSim::new(cfg.clone());
        let b = GdriveSim::new(cfg);
        let direct = |sim: &GdriveSim| -> Vec<Vec<SimPermission>> {
            sim.files().iter().map(|f| sim.direct_permissions(&f.id)).collect()
        };
        assert_eq!(direct(&a), direct(&b));
        let all: Vec<SimPermission> = direct(&a).into_iter().flatten().collect();
        for (kind, role) in [
            ("group", "reader"),
            ("domain", "reader"),
            ("anyone", "reader"),
            ("user", "writer"),
            ("user", "commenter"),
        ] {
            assert!(
                all.iter().any(|p| p.r#type == kind && p.role == role),
                "no {kind} {role}"
            );
        }
        assert!(all.iter().any(|p| p.id == "anyoneWithLink"));
    }
}
