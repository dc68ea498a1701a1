//! Page attachments in the simulated space: files attached to a page,
//! versioned, deleted to the trash on their own or hidden with their page;
//! their v1 JSON as CQL search returns it (`type = attachment`); and the
//! download: the v1 endpoint
//! `GET /wiki/rest/api/content/{id}/child/attachment/{attachmentId}/download`
//! answers with a redirect to the file's bytes, as Confluence Cloud's does (to
//! its media service). The bytes' route stands for that service: it is not the
//! REST API, so it is neither counted nor gated.
//!
//! References: Confluence Cloud REST v1 "Download attachment"
//! (`downloadAttachment`: "Redirects the client to a URL that serves an
//! attachment's binary data"; `version` absent = the latest), the v1 content
//! model of an attachment (`extensions.mediaType`, `extensions.fileSize`,
//! `_links.download`, `container` with `expand=container`), and v2 "Delete
//! attachment" (deleting moves an attachment to the trash; purging removes it).
//!
//! Invariants:
//! - Attachment ids come from the same sequence as page ids (Confluence content
//!   ids are one sequence) and are shown with the `att` prefix, as the REST
//!   APIs show them.
//! - An attachment is visible (searched, downloadable) only while it is
//!   current and its page is current: trashing a page hides its attachments,
//!   restoring it brings them back.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ConfluenceSim;
use super::api::error_response;
use super::model::{PageStatus, SimState};
use crate::simulators::files::Sample;
use crate::simulators::http::{query_pairs, rfc3339_millis as ts};

/// A file attached to a page, as the simulator holds it.
pub(super) struct Attachment {
    pub(super) page: u64,
    pub(super) status: PageStatus,
    pub(super) title: String,
    pub(super) media_type: String,
    pub(super) bytes: Vec<u8>,
    /// What a reader should get from `bytes`.
    pub(super) text: String,
    pub(super) version: u64,
    pub(super) modified_at: DateTime<Utc>,
}

/// An attachment as tests see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimAttachment {
    /// Id as the APIs show it (`att…`).
    pub id: String,
    /// The page it is attached to.
    pub page_id: String,
    /// File name.
    pub title: String,
    /// Media type.
    pub media_type: String,
    /// `version.number`.
    pub version: u64,
    /// The text a reader should get from the file (empty for an image).
    pub text: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// SHA-256 (hex) of the file's bytes.
    pub sha256: String,
}

/// `att123` → 123.
pub(super) fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix("att")?.parse().ok()
}

impl SimState {
    /// Attaches `file` to current page `page` (version 1, stamped now); its id, or
    /// `None` if there is no such current page.
    pub(super) fn attach(&mut self, page: &str, file: Sample) -> Option<String> {
        let page = page.parse::<u64>().ok().filter(|p| self.is_current(*p))?;
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now();
        self.attachments.insert(id, attachment(page, file, now));
        Some(format!("att{id}"))
    }

    /// Uploads a new version of a visible attachment. `false` if there is none.
    pub(super) fn update_attachment(&mut self, id: &str, file: Sample) -> bool {
        let now = self.now();
        let Some(id) = parse_id(id).filter(|id| self.attachment_visible(*id)) else {
            return false;
        };
        let Some(a) = self.attachments.get_mut(&id) else {
            return false;
        };
        let version = a.version + 1;
        *a = Attachment {
            version,
            ..attachment(a.page, file, now)
        };
        true
    }

    /// Deletes a visible attachment to the trash (version unchanged). `false` if there is none.
    pub(super) fn delete_attachment(&mut self, id: &str) -> bool {
        let Some(id) = parse_id(id).filter(|id| self.attachment_visible(*id)) else {
            return false;
        };
        self.attachments
            .get_mut(&id)
            .map(|a| a.status = PageStatus::Trashed)
            .is_some()
    }

    /// Current, on a current page.
    pub(super) fn attachment_visible(&self, id: u64) -> bool {
        self.attachments
            .get(&id)
            .is_some_and(|a| a.status == PageStatus::Current && self.is_current(a.page))
    }

    /// Every visible attachment, by id.
    pub(super) fn visible_attachments(&self) -> impl Iterator<Item = (&u64, &Attachment)> {
        self.attachments.iter().filter(|(id, _)| self.attachment_visible(**id))
    }

    /// Every visible attachment, as tests see them.
    pub(super) fn attachment_snapshot(&self) -> Vec<SimAttachment> {
        self.visible_attachments()
            .map(|(id, a)| SimAttachment {
                id: format!("att{id}"),
                page_id: a.page.to_string(),
                title: a.title.clone(),
                media_type: a.media_type.clone(),
                version: a.version,
                text: a.text.clone(),
                size: a.bytes.len() as u64,
                sha256: crate::sources::sha256_hex(&a.bytes),
            })
            .collect()
    }
}

pub(super) fn attachment(page: u64, file: Sample, at: DateTime<Utc>) -> Attachment {
    Attachment {
        page,
        status: PageStatus::Current,
        title: file.name,
        media_type: file.mime.to_owned(),
        bytes: file.content,
        text: file.text,
        version: 1,
        modified_at: at,
    }
}

/// `title` form-encoded, as in a web UI query (`preview=`).
fn file_slug(title: &str) -> String {
    url::form_urlencoded::byte_serialize(title.as_bytes()).collect()
}

/// `title` as one percent-encoded path segment.
fn path_segment(title: &str) -> String {
    let mut url = url::Url::parse("http://x/").expect("a constant URL parses");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(title);
    }
    url.path().trim_start_matches('/').to_owned()
}

/// Where the file's bytes are served: `/download/attachments/{page}/{file}?version=N&api=v2`, under `/wiki`.
fn download_link(a: &Attachment) -> String {
    format!(
        "/download/attachments/{}/{}?version={}&modificationDate={}&cacheVersion=1&api=v2",
        a.page,
        path_segment(&a.title),
        a.version,
        a.modified_at.timestamp_millis()
    )
}

/// The v1 content JSON of attachment `id` (CQL search results).
pub(super) fn v1_attachment(st: &SimState, id: u64, a: &Attachment, expand: &[&str]) -> Value {
    let page_title = st.pages.get(&a.page).map(|p| p.title.clone()).unwrap_or_default();
    let mut v = json!({
        "id": format!("att{id}"),
        "type": "attachment",
        "status": "current",
        "title": a.title,
        "metadata": {"mediaType": a.media_type, "comment": ""},
        "extensions": {
            "mediaType": a.media_type,
            "fileSize": a.bytes.len(),
            "comment": "",
            "fileId": format!("{id:032x}"),
        },
        "_links": {
            "webui": format!(
                "/spaces/{}/pages/{}/{}?preview=%2F{}%2F{id}%2F{}",
                st.space_key,
                a.page,
                file_slug(&page_title),
                a.page,
                file_slug(&a.title)
            ),
            "download": download_link(a),
            "self": format!("/rest/api/content/att{id}"),
        },
        "_expandable": {"space": format!("/rest/api/space/{}", st.space_key)},
    });
    if expand.contains(&"version") {
        v["version"] = json!({
            "by": {"type": "known", "accountId": super::api::AUTHOR_ID},
            "when": ts(a.modified_at),
            "message": "",
            "number": a.version,
            "minorEdit": false,
        });
    }
    if expand.contains(&"container") {
        v["container"] = json!({
            "id": a.page.to_string(),
            "type": "page",
            "status": "current",
            "title": page_title,
        });
    }
    v
}

/// The gated download endpoint: a redirect to the bytes.
pub(super) async fn api_download(
    State(sim): State<ConfluenceSim>,
    Path((page, attachment)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let st = sim.lock();
    let pairs = query_pairs(q.as_deref());
    let found = parse_id(&attachment)
        .filter(|id| st.attachment_visible(*id))
        .and_then(|id| st.attachments.get(&id).map(|a| (id, a)))
        .filter(|(_, a)| a.page.to_string() == page);
    match found {
        // The reference: "If this parameter is absent, the redirect URI will download the latest version".
        Some((_, a)) if pairs.iter().all(|(k, v)| k != "version" || *v == a.version.to_string()) => (
            StatusCode::FOUND,
            [(header::LOCATION, format!("/wiki{}", download_link(a)))],
        )
            .into_response(),
        Some(_) => error_response(404, true, "No such version of the attachment"),
        None => error_response(
            404,
            true,
            &format!("Attachment {attachment} of content {page} not found"),
        ),
    }
}

/// The media service's route (not the REST API: not counted, not gated).
pub(super) fn media_routes() -> Router<ConfluenceSim> {
    Router::new().route("/wiki/download/attachments/{page}/{file}", get(media_download))
}

async fn media_download(State(sim): State<ConfluenceSim>, Path((page, file)): Path<(String, String)>) -> Response {
    let st = sim.lock();
    let found = st
        .visible_attachments()
        .find(|(_, a)| a.page.to_string() == page && a.title == file);
    match found {
        Some((_, a)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, a.media_type.clone())],
            a.bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
