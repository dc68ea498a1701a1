//! Page attachments as documents: each file attached to a page is a document of
//! its own, under its page (parent = the page, so its breadcrumb runs through
//! it), detected by its attachment version, and read through the shared
//! extractors like a Drive file.
//!
//! Invariants:
//! - An attachment is fetched by the v1 download endpoint of its page (one
//!   call; the redirect to the file is followed); a 404 means it or its page
//!   went, and the document is deleted. One named without its page (a failed
//!   document retried, an unsettled one redone while the state did not hold
//!   it) is first looked up by id (`GET content/{id}`, one more call).
//! - A file over `max_attachment_bytes` (by the size the search reported, or
//!   by the bytes read) is kept as metadata with the reason, never dropped.
//! - An attachment dies with its page: a page deleted by a feed of changes
//!   takes its held attachments with it (`Source::dies_with_parent`).

use super::api::{Client, V1Content};
use crate::extract::{self, Format};
use crate::sources::{self, ApiCalls, DocMeta, Error, FetchedDoc};
use crate::types::DocumentId;

/// What one attachment fetch found.
pub(super) enum Fetch {
    /// Its text (or its metadata and why there is no text).
    Doc(Box<FetchedDoc>),
    /// No longer there.
    Missing,
}

impl Client {
    /// What Confluence holds as attachment `id` now (`GET content/{id}` with
    /// its version and page), or `None` if it is gone (404, or not current:
    /// its page was trashed).
    async fn lookup_attachment(&self, id: &DocumentId, calls: &ApiCalls) -> Result<Option<DocMeta>, Error> {
        let mut url = self.url(&format!("wiki/rest/api/content/{}", id.0))?;
        url.query_pairs_mut().append_pair("expand", "version,container");
        let Some(reply) = self.get_json_unless_gone::<V1Content>(&url, calls).await? else {
            return Ok(None);
        };
        let item = reply.body;
        if item.status.as_deref().is_some_and(|st| st != "current") {
            return Ok(None);
        }
        if item.kind.as_deref() != Some("attachment") {
            return Err(self.http.permanent(format_args!(
                "GET {}: {} is a {:?}, not an attachment",
                url.path(),
                item.id,
                item.kind
            )));
        }
        let web_root = self.web_root(item.links.as_ref().and_then(|l| l.base.as_deref()));
        let meta = item.meta(self, &url)?;
        item.attachment_meta(meta, self, &url, &web_root).map(Some)
    }

    /// Downloads and reads attachment `meta` (its `parent` is its page; without
    /// one it is looked up first).
    pub(super) async fn fetch_attachment(&self, meta: &DocMeta, calls: &ApiCalls) -> Result<Fetch, Error> {
        let cap = self.settings.max_attachment_bytes;
        let over_cap = |size: u64| {
            FetchedDoc::metadata_only(
                DocMeta {
                    size: Some(size),
                    ..meta.clone()
                },
                format!("not downloaded: {size} bytes is over max_attachment_bytes ({cap})"),
            )
        };
        // Named without its page (retried after a failure, or redone while the
        // state did not hold it): ask Confluence what it is now.
        let looked_up;
        let meta = match meta.parent {
            Some(_) => meta,
            None => match self.lookup_attachment(&meta.id, calls).await? {
                Some(found) => {
                    looked_up = found;
                    &looked_up
                }
                None => return Ok(Fetch::Missing),
            },
        };
        if let Some(size) = meta.size.filter(|s| *s > cap) {
            return Ok(Fetch::Doc(Box::new(over_cap(size))));
        }
        let Some(page) = meta.parent.as_ref() else {
            return Err(self.http.permanent(format_args!(
                "attachment {} {:?} has no page to download it from",
                meta.id, meta.title
            )));
        };
        let Some(reply) = self.download_attachment(&page.0, &meta.id.0, cap, calls).await? else {
            return Ok(Fetch::Missing);
        };
        if reply.truncated {
            return Ok(Fetch::Doc(Box::new(over_cap(reply.body.len() as u64))));
        }
        let served = reply
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // The type served with these bytes (the file may have had a new version of
        // another kind since the search), else the one the search reported, else the bytes.
        let mime = served
            .as_deref()
            .map(|m| m.split(';').next().unwrap_or(m).trim().to_owned())
            .filter(|m| !m.is_empty() && m != "application/octet-stream")
            .or_else(|| meta.mime_type.clone());
        let format = match mime.as_deref().map(Format::of_mime) {
            Some(f) if f != Format::Unsupported => f,
            _ => Format::sniff(&reply.body),
        };
        let charset = served.as_deref().and_then(extract::charset_of_content_type);
        let body = reply.body;
        let size = body.len() as u64;
        let source_sha256 = Some(sources::sha256_hex(&body));
        let extracted = tokio::task::spawn_blocking(move || extract::extract(&body, format, charset.as_deref()))
            .await
            .map_err(|e| {
                self.http
                    .permanent(format_args!("attachment {}: extraction stopped: {e}", meta.id))
            })?;
        let content = extracted.map_err(|e| {
            self.http
                .permanent(format_args!("attachment {} {:?}: {e}", meta.id, meta.title))
        })?;
        let content_note = (format == Format::Unsupported).then(|| {
            let mime = mime.as_deref().unwrap_or("this file type");
            format!("no text: {mime} has no text extractor")
        });
        Ok(Fetch::Doc(Box::new(FetchedDoc {
            meta: DocMeta {
                mime_type: mime,
                size: Some(size),
                ..meta.clone()
            },
            content,
            links: Vec::new(),
            source_sha256,
            content_note,
            raw_html: None,
        })))
    }
}
