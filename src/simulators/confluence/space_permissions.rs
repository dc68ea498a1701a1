//! The space's permission assignments (v2 `SpacePermission`) and the v2
//! endpoint `GET /wiki/api/v2/spaces/{id}/permissions`.
//!
//! References: Confluence Cloud REST v2 "Get space permissions" ("Returns
//! space permissions for a specific space"; `limit` default 25, minimum 1,
//! maximum 250; `cursor`; 200 `{results: [SpacePermission], _links: {next}}`,
//! `next` "the relative URL for the next set of results, using a cursor query
//! parameter. This property will not be present if there is no additional
//! data available"; 404 when "the space was not found"), and its schema
//! `SpacePermission {id, principal {type: user|group|role, id}, operation
//! {key, targetType}}`. "View space" is `read`/`space`.
//!
//! Choices where the reference is silent:
//! - Assignments are served in id order (ids are increasing numeric strings);
//!   the opaque cursor encodes the last id returned, as the page listings do.
//! - A `limit` outside 1..=250 is a 400 (the schema's minimum and maximum),
//!   where the page listings clamp it.
//! - The reference lists no `Link` header for this endpoint (the page
//!   listings have one), so none is sent: read `_links.next`.
//! - The simulator does not enforce the v1 rule that `read`/`space` must be
//!   held before any other space permission; the seed respects it.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ConfluenceSim;
use super::api::{base_link, decode_cursor, encode_cursor, error_response, next_link};
use super::restrictions::{group_confluence_administrators, group_confluence_users, group_engineering, seed_users};
use crate::simulators::http::query_pairs;

/// Default `limit` of the space permissions listing.
pub const SPACE_PERMISSIONS_DEFAULT_LIMIT: usize = 25;
/// Largest `limit` of the space permissions listing.
pub const SPACE_PERMISSIONS_MAX_LIMIT: usize = 250;
/// The first assignment id handed out.
const FIRST_PERMISSION_ID: u64 = 1_310_721;

/// Who an assignment is for: `type` `user` (id = accountId), `group` (id =
/// group id) or `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPrincipal {
    /// `user`, `group` or `role`.
    #[serde(rename = "type")]
    pub kind: String,
    /// "ID of the entity."
    pub id: String,
}

/// What an assignment allows: `key` (`read`, `create`, `delete`, `administer`,
/// ...) on `targetType` (`space`, `page`, `blogpost`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimOperation {
    /// `key`.
    pub key: String,
    /// `targetType`.
    pub target_type: String,
}

/// One v2 `SpacePermission`, serialized exactly as the endpoint serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSpacePermission {
    /// "ID of the space permission." (numeric string; empty in a request = assign one)
    #[serde(default)]
    pub id: String,
    /// Who.
    pub principal: SimPrincipal,
    /// What.
    pub operation: SimOperation,
}

impl SimSpacePermission {
    /// An assignment without an id yet (one is given when it is added).
    pub fn new(principal_type: &str, principal_id: &str, key: &str, target_type: &str) -> Self {
        Self {
            id: String::new(),
            principal: SimPrincipal {
                kind: principal_type.to_owned(),
                id: principal_id.to_owned(),
            },
            operation: SimOperation {
                key: key.to_owned(),
                target_type: target_type.to_owned(),
            },
        }
    }

    /// `read`/`space`: "view space".
    pub fn is_read_space(&self) -> bool {
        self.operation.key == "read" && self.operation.target_type == "space"
    }
}

/// The seeded assignments, in id order: `confluence-users` may view the space
/// and create pages and blog posts; Alice may view it and create pages;
/// `confluence-administrators` may view, delete and administer it;
/// `engineering` may view it. Other seeded users hold nothing directly.
pub(super) fn seeded() -> Vec<SimSpacePermission> {
    let users = group_confluence_users().id;
    let admins = group_confluence_administrators().id;
    let alice = seed_users()[0].account_id.clone();
    let eng = group_engineering().id;
    let rows = [
        ("group", &users, "read", "space"),
        ("group", &users, "create", "page"),
        ("group", &users, "create", "blogpost"),
        ("user", &alice, "read", "space"),
        ("user", &alice, "create", "page"),
        ("group", &admins, "read", "space"),
        ("group", &admins, "delete", "space"),
        ("group", &admins, "administer", "space"),
        ("group", &eng, "read", "space"),
        ("group", &eng, "create", "comment"),
    ];
    rows.iter()
        .zip(FIRST_PERMISSION_ID..)
        .map(|((kind, who, key, target), id)| SimSpacePermission {
            id: id.to_string(),
            ..SimSpacePermission::new(kind, who, key, target)
        })
        .collect()
}

/// Gives every assignment without an id (or a non-numeric one) a fresh id
/// above every other, then orders them by id.
pub(super) fn with_ids(mut perms: Vec<SimSpacePermission>) -> Vec<SimSpacePermission> {
    let mut next = perms
        .iter()
        .filter_map(|p| p.id.parse::<u64>().ok())
        .max()
        .map_or(FIRST_PERMISSION_ID, |m| m + 1);
    for p in &mut perms {
        if p.id.parse::<u64>().is_err() {
            p.id = next.to_string();
            next += 1;
        }
    }
    perms.sort_by_key(|p| p.id.parse::<u64>().unwrap_or(u64::MAX));
    perms
}

/// `GET /wiki/api/v2/spaces/{id}/permissions?limit=&cursor=`.
pub(super) async fn api_space_permissions(
    State(sim): State<ConfluenceSim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(q.as_deref());
    let st = sim.lock();
    if id != st.space_id {
        return error_response(404, false, &format!("Space {id} not found"));
    }
    let param = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let limit = match param("limit").map(str::parse::<usize>) {
        None => SPACE_PERMISSIONS_DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=SPACE_PERMISSIONS_MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return error_response(
                400,
                false,
                &format!("limit must be between 1 and {SPACE_PERMISSIONS_MAX_LIMIT}"),
            );
        }
    };
    let after = match param("cursor").map(decode_cursor) {
        None => 0,
        Some(Some(a)) => a,
        Some(None) => return error_response(400, false, "Invalid cursor"),
    };
    let mut chosen: Vec<&SimSpacePermission> = st
        .space_permissions
        .iter()
        .filter(|p| p.id.parse::<u64>().is_ok_and(|n| n > after))
        .take(limit + 1)
        .collect();
    let more = chosen.len() > limit;
    chosen.truncate(limit);
    let mut links = json!({"base": base_link(&headers)});
    if more && let Some(last) = chosen.last().and_then(|p| p.id.parse::<u64>().ok()) {
        links["next"] = json!(next_link(
            &format!("/wiki/api/v2/spaces/{id}/permissions"),
            &pairs,
            &encode_cursor(last)
        ));
    }
    Json(json!({"results": chosen, "_links": links})).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::simulators::confluence::{SimConfig, start};

    async fn get_json(url: String) -> (u16, Value, bool) {
        let resp = reqwest::get(url).await.expect("GET");
        let status = resp.status().as_u16();
        let link = resp.headers().contains_key(axum::http::header::LINK);
        (status, resp.json::<Value>().await.expect("json"), link)
    }

    /// `limit=2` pages through every assignment by `_links.next` (absent on
    /// the last page); the seed holds `read`/`space` for two groups and a
    /// user among other operations.
    #[tokio::test]
    async fn space_permissions_page_by_links_next() {
        let (sim, base) = start(SimConfig::default()).await;
        let mut url = format!("{base}/wiki/api/v2/spaces/98304/permissions?limit=2");
        let mut got: Vec<SimSpacePermission> = Vec::new();
        let mut pages = 0;
        loop {
            let (code, body, link) = get_json(url).await;
            assert_eq!(code, 200, "{body}");
            assert!(!link, "the reference lists no Link header here");
            pages += 1;
            let results: Vec<SimSpacePermission> = serde_json::from_value(body["results"].clone()).expect("shape");
            assert!(results.len() <= 2);
            got.extend(results);
            match body["_links"]["next"].as_str() {
                Some(next) => {
                    assert!(next.starts_with("/wiki/api/v2/spaces/98304/permissions?"), "{next}");
                    assert!(next.contains("limit=2") && next.contains("cursor="), "{next}");
                    url = format!("{base}{next}");
                }
                None => break,
            }
        }
        assert_eq!(got, sim.space_permissions());
        assert_eq!(pages, got.len().div_ceil(2));
        let readers = sim.space_read_principals();
        assert!(readers.contains(&SimPrincipal {
            kind: "group".into(),
            id: group_confluence_users().id
        }));
        assert!(readers.iter().any(|p| p.kind == "user"));
        assert!(readers.iter().filter(|p| p.kind == "group").count() >= 2);
        assert!(
            got.iter()
                .any(|p| !p.is_read_space() && p.operation.target_type == "space")
        );
        assert!(
            got.iter()
                .any(|p| p.operation.key == "create" && p.operation.target_type == "page")
        );
        let raw = serde_json::to_value(&got[0]).expect("json");
        assert_eq!(raw["principal"]["type"], "group");
        assert_eq!(raw["operation"]["targetType"], "space");
        assert_eq!(
            sim.calls().get("GET /wiki/api/v2/spaces/{id}/permissions"),
            Some(&(pages as u64))
        );
    }

    /// Unknown space: 404 v2 body; `limit` outside 1..=250 or a bad cursor: 400;
    /// added and removed assignments show in the listing.
    #[tokio::test]
    async fn space_permissions_errors_and_mutations() {
        let (sim, base) = start(SimConfig::default()).await;
        let (code, body, _) = get_json(format!("{base}/wiki/api/v2/spaces/1/permissions")).await;
        assert_eq!((code, body["errors"][0]["status"].as_u64()), (404, Some(404)), "{body}");
        for q in ["limit=0", "limit=251", "limit=x", "cursor=zz"] {
            let (code, body, _) = get_json(format!("{base}/wiki/api/v2/spaces/98304/permissions?{q}")).await;
            assert_eq!(
                (code, body["errors"][0]["code"].as_str()),
                (400, Some("BAD_REQUEST")),
                "{q}"
            );
        }
        let (_, body, _) = get_json(format!("{base}/wiki/api/v2/spaces/98304/permissions")).await;
        assert!(body["_links"]["next"].is_null(), "default limit 25 holds the seed");
        let id = sim.add_space_permission(SimSpacePermission::new("user", "acct-new", "read", "space"));
        assert!(sim.space_read_principals().iter().any(|p| p.id == "acct-new"));
        let (_, body, _) = get_json(format!("{base}/wiki/api/v2/spaces/98304/permissions?limit=250")).await;
        assert_eq!(
            body["results"]
                .as_array()
                .and_then(|a| a.last())
                .map(|p| p["id"].clone()),
            Some(json!(id))
        );
        assert!(sim.remove_space_permission(&id));
        assert!(!sim.remove_space_permission(&id));
        let resp = reqwest::Client::new()
            .put(format!("{base}/_sim/space/permissions"))
            .json(&json!([{"principal": {"type": "group", "id": "g"}, "operation": {"key": "read", "targetType": "space"}}]))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        let perms = sim.space_permissions();
        assert_eq!(perms.len(), 1);
        assert!(!perms[0].id.is_empty());
    }
}
