//! Who may read a Drive file: its `permissions` (the Permission resource of
//! the Drive v3 reference) normalized to principals, and `permissions.list`
//! for files whose resource does not carry them (shared drives: "Not
//! populated for items in shared drives").
//!
//! Invariants:
//! - every role reads (reader, commenter, writer, fileOrganizer, organizer,
//!   owner); a permission of a deleted account, one limited to a view
//!   (`view`: published or metadata) or one already expired grants nothing;
//! - `user` and `group` are their email addresses; `domain` and `anyone` are
//!   `domain:`/`anyone` when discoverable (`allowFileDiscovery`) and
//!   `domain_with_link:`/`anyone_with_link` when not;
//! - the permissions as Drive sent them are kept as the document's
//!   `permissions.source`, for audit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use futures::StreamExt;

use super::api::{Client, DriveFile, PERMISSION_FIELDS};
use crate::permissions::{ANYONE, ANYONE_WITH_LINK, Permissions};
use crate::sources::{ApiCalls, Error};

/// `permissions.list` answers at most this many per page (its `pageSize` maximum).
const PERMISSIONS_PAGE_SIZE: u32 = 100;

/// One Permission resource, as far as who may read goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DrivePermission {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allow_file_discovery: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    view: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiration_time: Option<String>,
}

impl DrivePermission {
    /// The principal this permission grants reading to, if any.
    fn principal(&self, now: DateTime<Utc>) -> Option<String> {
        if self.deleted || self.view.is_some() {
            return None;
        }
        let expired = self
            .expiration_time
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t <= now);
        if expired {
            return None;
        }
        let discoverable = self.allow_file_discovery.unwrap_or(false);
        match self.kind.as_str() {
            "user" => self.email_address.as_ref().map(|e| format!("user:{e}")),
            "group" => self.email_address.as_ref().map(|e| format!("group:{e}")),
            "domain" => self.domain.as_ref().map(|d| {
                if discoverable {
                    format!("domain:{d}")
                } else {
                    format!("domain_with_link:{d}")
                }
            }),
            "anyone" => Some(if discoverable { ANYONE } else { ANYONE_WITH_LINK }.to_owned()),
            // A type this build does not know grants no one: never more than Drive says.
            _ => None,
        }
    }
}

/// Who may read a file with these permissions, keeping Drive's form for audit.
pub(super) fn permissions(list: &[DrivePermission], now: DateTime<Utc>) -> Permissions {
    let mut sorted = list.to_vec();
    // Drive's order is not a change of who may read.
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let source = serde_json::to_value(&sorted).unwrap_or_default();
    Permissions::new(list.iter().filter_map(|p| p.principal(now)), source)
}

/// What `permissions.list` found for one file (`None`: the file is gone).
type Listed = Result<Option<Vec<DrivePermission>>, Error>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PermissionList {
    next_page_token: Option<String>,
    #[serde(default)]
    permissions: Vec<DrivePermission>,
}

impl Client {
    /// Gives each file of a shared drive whose resource came without
    /// `permissions` (Drive never sends them there) its permissions from
    /// `permissions.list`: one call per such file (more past 100
    /// permissions), a few in flight. Trashed files are left alone.
    pub(super) async fn fill_permissions(&self, files: &mut [&mut DriveFile], calls: &ApiCalls) -> Result<(), Error> {
        let wanted: Vec<(usize, String)> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.permissions.is_none() && f.drive_id.is_some() && !f.trashed)
            .map(|(i, f)| (i, f.id.clone()))
            .collect();
        let found: Vec<(usize, Listed)> = futures::stream::iter(wanted)
            .map(|(i, id)| async move { (i, self.permissions_of(&id, calls).await) })
            .buffered(super::FETCH_CONCURRENCY)
            .collect()
            .await;
        for (i, result) in found {
            // 404: gone since it was listed; whoever reads it next finds it gone.
            if let Some(list) = result? {
                files[i].permissions = Some(list);
            }
        }
        Ok(())
    }

    /// Every permission of file `id` (`permissions.list`, a page of 100 at a
    /// time); `None` if Drive no longer has the file.
    pub(super) async fn permissions_of(
        &self,
        id: &str,
        calls: &ApiCalls,
    ) -> Result<Option<Vec<DrivePermission>>, Error> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut url = self.url("drive/v3/files")?;
            if let Ok(mut s) = url.path_segments_mut() {
                s.push(id).push("permissions");
            }
            url.query_pairs_mut()
                .append_pair("supportsAllDrives", "true")
                .append_pair("pageSize", &PERMISSIONS_PAGE_SIZE.to_string())
                .append_pair("fields", &format!("nextPageToken,permissions({PERMISSION_FIELDS})"));
            if let Some(p) = &page {
                url.query_pairs_mut().append_pair("pageToken", p);
            }
            let list: PermissionList = match self.get(&url, calls).await? {
                Ok(body) => self.decode(&url, &body)?,
                Err(r) if r.status == 404 => return Ok(None),
                Err(r) => return Err(r.into_error()),
            };
            out.extend(list.permissions);
            match list.next_page_token {
                Some(next) if Some(&next) != page.as_ref() => page = Some(next),
                Some(_) => {
                    return Err(self
                        .http
                        .permanent(format_args!("GET {}: pagination did not advance", url.path())));
                }
                None => return Ok(Some(out)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(json: &str) -> DrivePermission {
        serde_json::from_str(json).expect("permission")
    }

    /// Each type becomes its principal; discovery tells `anyone` from
    /// `anyone_with_link`; deleted, view-limited and expired grants give nothing.
    #[test]
    fn permissions_become_principals() {
        let now = Utc::now();
        let list = vec![
            perm(r#"{"id":"1","type":"user","role":"owner","emailAddress":"Owner@Example.com"}"#),
            perm(r#"{"id":"2","type":"group","role":"reader","emailAddress":"eng@example.com"}"#),
            perm(r#"{"id":"3","type":"domain","role":"reader","domain":"example.com","allowFileDiscovery":true}"#),
            perm(r#"{"id":"4","type":"domain","role":"commenter","domain":"partner.org","allowFileDiscovery":false}"#),
            perm(r#"{"id":"anyoneWithLink","type":"anyone","role":"reader","allowFileDiscovery":false}"#),
            perm(r#"{"id":"6","type":"user","role":"reader","emailAddress":"gone@example.com","deleted":true}"#),
            perm(r#"{"id":"7","type":"user","role":"reader","emailAddress":"pub@example.com","view":"published"}"#),
            perm(
                r#"{"id":"8","type":"user","role":"reader","emailAddress":"old@example.com","expirationTime":"2020-01-01T00:00:00.000Z"}"#,
            ),
        ];
        let p = permissions(&list, now);
        assert_eq!(
            p.readers,
            vec![
                "anyone_with_link",
                "domain:example.com",
                "domain_with_link:partner.org",
                "group:eng@example.com",
                "user:owner@example.com"
            ]
        );
        assert_eq!(p.source.as_array().map(Vec::len), Some(8), "kept whole for audit");
        let mut reordered = list.clone();
        reordered.reverse();
        assert_eq!(permissions(&reordered, now), p, "Drive's order changes nothing");
        let public = permissions(
            &[perm(
                r#"{"id":"anyone","type":"anyone","role":"reader","allowFileDiscovery":true}"#,
            )],
            now,
        );
        assert_eq!(public.readers, vec!["anyone"]);
    }
}
