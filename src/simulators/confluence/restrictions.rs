//! Page read restrictions in the simulated space: each page's own `read`
//! restriction (users and groups), how it is seeded, its v1 JSON (the
//! `ContentRestriction` of the v1 reference) inline on content with
//! `expand=restrictions.read.restrictions.user|group`, and the v1 endpoint
//! `GET /wiki/rest/api/content/{id}/restriction/byOperation/{operationKey}`.
//!
//! References: Confluence Cloud REST v1 ([`contentExpand`]: "`restrictions.read.restrictions.user`
//! returns the users that have permission to read the content";
//! `getContentRestrictionStatusForOperation`: "Returns the restictions on a
//! piece of content for a given operation (read or update)", `start` default 0,
//! `limit` default 100, "By default, the following objects are expanded:
//! `restrictions.user`, `restrictions.group`"; the `ContentRestriction`,
//! `UserArray`, `GroupArray`, `User` and `Group` schemas).
//!
//! Invariants and choices:
//! - A page holds only its *own* restriction, as the API lists it ("when
//!   checking the restrictions for a page via REST API, the inherited
//!   permissions are not listed", CONFCLOUD-71108). Effective access (the
//!   space's `read`/`space` holders, then every ancestor's non-empty read list,
//!   "View restrictions are inherited") is left to the reader; the simulator
//!   neither computes nor enforces it (every caller sees everything).
//! - Changing a restriction bumps no version and moves no modification time:
//!   restrictions are a separate sub-resource (`.../restriction`), and none of
//!   the reference's descriptions of it says a version is created.
//! - Only `read` restrictions are modelled; `byOperation/update` answers an
//!   empty restriction (edit restrictions do not govern reading).
//! - Users are identified by `accountId`; `email` may be `""` ("Depending on
//!   the user's privacy setting, this may return an empty string").
//! - The simulator has no blog posts, so only pages (and, empty, attachments)
//!   carry restrictions.
//!
//! [`contentExpand`]: https://developer.atlassian.com/cloud/confluence/rest/v1/

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ConfluenceSim;
use super::api::error_response;
use super::attachments;
use super::model::SimState;
use crate::simulators::http::query_pairs;
use crate::simulators::seed::splitmix;

/// `limit` of the user and group lists of a restriction when none is asked
/// for: the documented default of the restriction endpoints ("default: 100").
/// Inline restrictions (`expand=restrictions.read.restrictions.*`) are cut to
/// it too, so a list with `size == limit` must be paged with
/// `.../restriction/byOperation/read?start=&limit=`.
pub const RESTRICTION_LIST_LIMIT: usize = 100;
/// The largest `limit` honoured by `byOperation/{op}` ("this may be restricted
/// by fixed system limits"; the reference names no number, the simulator
/// chooses the default).
pub const RESTRICTION_MAX_LIMIT: usize = 100;
/// Mixed into the seed for the restriction draws, a stream of its own, so
/// every other seeded value (ids, titles, versions, bodies, times) stays.
pub(super) const RESTRICTION_STREAM: u64 = 0x7265_7374_7269_6374;

/// A user as a restriction lists it (v1 `User`: `type` `known`, `accountType` `atlassian`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimUser {
    /// `accountId`, the user's identity.
    pub account_id: String,
    /// `email`: "Depending on the user's privacy setting, this may return an empty string."
    #[serde(default)]
    pub email: String,
    /// `publicName`: "Will always contain a value" (the account id when not given).
    #[serde(default)]
    pub public_name: String,
    /// `displayName`: "may be the same as publicName" (it is when not given).
    #[serde(default)]
    pub display_name: String,
}

impl SimUser {
    /// A user with every field set.
    pub fn new(account_id: &str, email: &str, public_name: &str, display_name: &str) -> Self {
        Self {
            account_id: account_id.to_owned(),
            email: email.to_owned(),
            public_name: public_name.to_owned(),
            display_name: display_name.to_owned(),
        }
    }

    /// With `publicName` and `displayName` filled as the reference promises.
    fn normalized(mut self) -> Self {
        if self.public_name.is_empty() {
            self.public_name.clone_from(&self.account_id);
        }
        if self.display_name.is_empty() {
            self.display_name.clone_from(&self.public_name);
        }
        self
    }
}

/// A group as a restriction lists it (v1 `Group`: required `name`, `type` `group`, `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGroup {
    /// `name` (default names can be edited: key groups by `id`).
    pub name: String,
    /// `id`.
    pub id: String,
}

impl SimGroup {
    /// A group.
    pub fn new(name: &str, id: &str) -> Self {
        Self {
            name: name.to_owned(),
            id: id.to_owned(),
        }
    }
}

/// A page's own read restriction: who is named in it. Empty = unrestricted
/// (the page is then as readable as its space and ancestors allow).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRestriction {
    /// Users named, in the order they were set.
    #[serde(default)]
    pub users: Vec<SimUser>,
    /// Groups named, in the order they were set.
    #[serde(default)]
    pub groups: Vec<SimGroup>,
}

impl SimRestriction {
    /// No user and no group: no restriction.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

/// The seeded users: Alice and Carol show their email, Bob and Dave hide it.
pub fn seed_users() -> Vec<SimUser> {
    vec![
        SimUser::new(
            "557058:a11ce000-0000-4000-8000-000000000001",
            "alice@example.com",
            "alice",
            "Alice Archer",
        ),
        SimUser::new("557058:b0b00000-0000-4000-8000-000000000002", "", "bob", "Bob Baker"),
        SimUser::new(
            "557058:ca201000-0000-4000-8000-000000000003",
            "carol@example.com",
            "carol",
            "Carol Chen",
        ),
        SimUser::new("712020:da7e0000-0000-4000-8000-000000000004", "", "dave", "dave"),
    ]
}

/// The site-wide default group (a default name only: it can be renamed).
pub fn group_confluence_users() -> SimGroup {
    SimGroup::new("confluence-users", "6a7c1f4e-0b1d-4c38-9d5e-000000000001")
}

/// The administrators' group.
pub fn group_confluence_administrators() -> SimGroup {
    SimGroup::new("confluence-administrators", "6a7c1f4e-0b1d-4c38-9d5e-000000000002")
}

/// The group the seeded restricted subtree is restricted to.
pub fn group_engineering() -> SimGroup {
    SimGroup::new("engineering", "6a7c1f4e-0b1d-4c38-9d5e-000000000003")
}

impl SimState {
    /// Seeds three restrictions from their own stream: a page with children
    /// (grandchildren when the tree has them) restricted to `engineering` (a
    /// restricted subtree); one of its children restricted further to Alice (a
    /// nested restriction); and a page outside that subtree restricted to Bob
    /// and Carol. Spaces too small for one of them go without it.
    pub(super) fn seed_restrictions(&mut self, seed: u64) {
        let mut rng = seed ^ RESTRICTION_STREAM;
        let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (id, p) in self.current() {
            if let Some(parent) = p.parent {
                children.entry(parent).or_default().push(*id);
            }
        }
        let has_children = |id: &u64| children.get(id).is_some_and(|c| !c.is_empty());
        let deep: Vec<u64> = children
            .iter()
            .filter(|(_, kids)| kids.iter().any(has_children))
            .map(|(id, _)| *id)
            .collect();
        let candidates: Vec<u64> = if deep.is_empty() {
            children.keys().copied().collect()
        } else {
            deep
        };
        let users = seed_users();
        let mut subtree = Vec::new();
        if !candidates.is_empty() {
            let top = candidates[(splitmix(&mut rng) % candidates.len() as u64) as usize];
            self.restrictions.insert(
                top,
                SimRestriction {
                    users: Vec::new(),
                    groups: vec![group_engineering()],
                },
            );
            let kids = &children[&top];
            let with_kids: Vec<u64> = kids.iter().copied().filter(has_children).collect();
            let pool = if with_kids.is_empty() { kids } else { &with_kids };
            let nested = pool[(splitmix(&mut rng) % pool.len() as u64) as usize];
            self.restrictions.insert(
                nested,
                SimRestriction {
                    users: vec![users[0].clone()],
                    groups: Vec::new(),
                },
            );
            subtree = self.subtree(top);
        }
        let outside: Vec<u64> = self
            .current()
            .map(|(id, _)| *id)
            .filter(|id| !subtree.contains(id))
            .collect();
        if !outside.is_empty() {
            let pick = outside[(splitmix(&mut rng) % outside.len() as u64) as usize];
            self.restrictions.insert(
                pick,
                SimRestriction {
                    users: vec![users[1].clone(), users[2].clone()],
                    groups: Vec::new(),
                },
            );
        }
    }

    /// `id` and every current page under it.
    fn subtree(&self, id: u64) -> Vec<u64> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i];
            out.extend(
                self.current()
                    .filter(|(_, p)| p.parent == Some(parent))
                    .map(|(c, _)| *c),
            );
            i += 1;
        }
        out
    }

    /// Replaces the read restriction of current page `id` (empty lists remove
    /// it). No new version, no new modification time (see the module docs).
    /// `false` if there is no such current page.
    pub(super) fn set_read_restriction(&mut self, id: &str, users: Vec<SimUser>, groups: Vec<SimGroup>) -> bool {
        let Some(id) = id.parse::<u64>().ok().filter(|id| self.is_current(*id)) else {
            return false;
        };
        let r = SimRestriction {
            users: users.into_iter().map(SimUser::normalized).collect(),
            groups,
        };
        if r.is_empty() {
            self.restrictions.remove(&id);
        } else {
            self.restrictions.insert(id, r);
        }
        true
    }

    /// Page `id`'s own read restriction (empty when it has none).
    pub(super) fn read_restriction(&self, id: u64) -> SimRestriction {
        self.restrictions.get(&id).cloned().unwrap_or_default()
    }
}

/// A v1 `User` of a restriction.
fn user_json(u: &SimUser) -> Value {
    json!({
        "type": "known",
        "accountId": u.account_id,
        "accountType": "atlassian",
        "email": u.email,
        "publicName": u.public_name,
        "displayName": u.display_name,
        "isExternalCollaborator": false,
        "_expandable": {"operations": "", "personalSpace": ""},
        "_links": {"self": format!("/rest/api/user?accountId={}", u.account_id)},
    })
}

/// A v1 `Group` of a restriction.
fn group_json(g: &SimGroup) -> Value {
    json!({
        "type": "group",
        "name": g.name,
        "id": g.id,
        "_links": {"self": format!("/rest/api/group/by-id?id={}", g.id)},
    })
}

/// `{"results","start","limit","size"}` of `items[start..start+limit]`.
/// (`UserArray` may also carry `totalSize`; the reference does not say when,
/// and `GroupArray` has none, so neither list carries it: a reader pages until
/// `size < limit`.)
fn array_json<T>(items: &[T], start: usize, limit: usize, one: fn(&T) -> Value) -> Value {
    let page: Vec<Value> = items.iter().skip(start).take(limit).map(one).collect();
    json!({"results": page, "start": start, "limit": limit, "size": page.len()})
}

/// Which lists of a restriction to expand.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lists {
    pub(super) user: bool,
    pub(super) group: bool,
}

/// A v1 `ContentRestriction` of `operation` on content `id`, its user and
/// group lists paged by `start`/`limit` when expanded, else named in
/// `restrictions._expandable`.
pub(super) fn content_restriction_json(
    id: &str,
    operation: &str,
    r: &SimRestriction,
    lists: Lists,
    start: usize,
    limit: usize,
) -> Value {
    let path = format!("/rest/api/content/{id}/restriction/byOperation/{operation}");
    let mut restrictions = json!({});
    let mut expandable = json!({});
    if lists.user {
        restrictions["user"] = array_json(&r.users, start, limit, user_json);
    } else {
        expandable["user"] = json!(format!("{path}/user"));
    }
    if lists.group {
        restrictions["group"] = array_json(&r.groups, start, limit, group_json);
    } else {
        expandable["group"] = json!(format!("{path}/group"));
    }
    restrictions["_expandable"] = expandable;
    json!({
        "operation": operation,
        "restrictions": restrictions,
        "_expandable": {"content": format!("/rest/api/content/{id}")},
        "_links": {"self": path},
    })
}

/// The `restrictions` field of v1 content when `expand` asks for it (`None`
/// otherwise): `read` with the lists named by
/// `restrictions.read.restrictions.user` / `.group`, cut to
/// [`RESTRICTION_LIST_LIMIT`]; `update` left expandable.
pub(super) fn inline_restrictions(id: &str, r: &SimRestriction, expand: &[&str]) -> Option<Value> {
    if !expand
        .iter()
        .any(|e| *e == "restrictions" || e.starts_with("restrictions."))
    {
        return None;
    }
    let mut v = json!({
        "_expandable": {"update": ""},
        "_links": {"self": format!("/rest/api/content/{id}/restriction/byOperation")},
    });
    if expand.iter().any(|e| e.starts_with("restrictions.read")) {
        let lists = Lists {
            user: expand.contains(&"restrictions.read.restrictions.user"),
            group: expand.contains(&"restrictions.read.restrictions.group"),
        };
        v["read"] = content_restriction_json(id, "read", r, lists, 0, RESTRICTION_LIST_LIMIT);
    } else {
        v["_expandable"]["read"] = json!("");
    }
    Some(v)
}

/// A non-negative integer query parameter, `default` when absent.
fn count_param(pairs: &[(String, String)], key: &str, default: usize) -> Result<usize, String> {
    match pairs.iter().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => v.parse().map_err(|_| format!("Invalid {key}: {v:?}")),
    }
}

/// `GET /wiki/rest/api/content/{id}/restriction/byOperation/{operationKey}`:
/// one `ContentRestriction`, its user and group lists both paged by `start`
/// (default 0) and `limit` (default 100, at most [`RESTRICTION_MAX_LIMIT`],
/// at least 1). `expand` absent expands both lists ("Expanded by default");
/// given, only the lists it names (`restrictions.user`, `restrictions.group`)
/// and `content`. Unknown or trashed content: 404 in the v1 error form
/// ("There is no content with the given ID"); an `operationKey` other than
/// `read` or `update`: 400. An attachment has no restriction of its own (it is
/// "as readable as its container"): its lists are empty.
pub(super) async fn api_restriction_by_operation(
    State(sim): State<ConfluenceSim>,
    Path((id, operation)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(q.as_deref());
    let st = sim.lock();
    if operation != "read" && operation != "update" {
        return error_response(400, true, &format!("Invalid operation key: {operation}"));
    }
    let restriction = if let Some(n) = attachments::parse_id(&id) {
        st.attachment_visible(n).then(SimRestriction::default)
    } else {
        id.parse::<u64>()
            .ok()
            .filter(|n| st.is_current(*n))
            .map(|n| st.read_restriction(n))
    };
    let Some(mut restriction) = restriction else {
        return error_response(404, true, &format!("No content found with id: ContentId{{id={id}}}"));
    };
    if operation == "update" {
        restriction = SimRestriction::default();
    }
    let (start, limit) = match (
        count_param(&pairs, "start", 0),
        count_param(&pairs, "limit", RESTRICTION_LIST_LIMIT),
    ) {
        (Ok(s), Ok(l)) => (s, l.clamp(1, RESTRICTION_MAX_LIMIT)),
        (Err(e), _) | (_, Err(e)) => return error_response(400, true, &e),
    };
    let expand: Option<Vec<&str>> = pairs
        .iter()
        .find(|(k, _)| k == "expand")
        .map(|(_, v)| v.split(',').map(str::trim).collect());
    let lists = match &expand {
        None => Lists {
            user: true,
            group: true,
        },
        Some(e) => Lists {
            user: e.contains(&"restrictions.user"),
            group: e.contains(&"restrictions.group"),
        },
    };
    let mut v = content_restriction_json(&id, &operation, &restriction, lists, start, limit);
    if expand.as_ref().is_some_and(|e| e.contains(&"content")) {
        let title = id
            .parse::<u64>()
            .ok()
            .and_then(|n| st.pages.get(&n))
            .map(|p| p.title.clone());
        let kind = if title.is_some() { "page" } else { "attachment" };
        let title = title.or_else(|| {
            attachments::parse_id(&id)
                .and_then(|n| st.attachments.get(&n))
                .map(|a| a.title.clone())
        });
        v["content"] = json!({"id": id, "type": kind, "status": "current", "title": title});
        v["_expandable"] = json!({});
    }
    Json(v).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulators::confluence::{SimConfig, start};

    const RESTRICTION_EXPAND: &str =
        "ancestors,version,restrictions.read.restrictions.user,restrictions.read.restrictions.group";

    /// A GET's status and JSON body.
    async fn get_json(url: String) -> (u16, Value) {
        let resp = reqwest::get(url).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("json"))
    }

    /// Every search result (following `_links.next`), by id.
    async fn search_all(base: &str, expand: &str) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let mut url = format!("{base}/wiki/rest/api/content/search?cql=type%3Dpage&limit=50&expand={expand}");
        loop {
            let (code, body) = get_json(url).await;
            assert_eq!(code, 200, "{body}");
            for r in body["results"].as_array().expect("results") {
                out.insert(r["id"].as_str().expect("id").to_owned(), r.clone());
            }
            match body["_links"]["next"].as_str() {
                Some(next) => url = format!("{base}/wiki{next}"),
                None => return out,
            }
        }
    }

    fn names(list: &Value, key: &str) -> Vec<String> {
        list["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u[key].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// The seed holds a group-restricted page with children, a child of it
    /// restricted further to one user, and a page elsewhere restricted to two
    /// users; the same seed gives the same restrictions.
    #[test]
    fn seeded_restrictions_have_a_subtree_a_nested_one_and_two_users() {
        let cfg = SimConfig {
            pages: 40,
            seed: 7,
            ..SimConfig::default()
        };
        let sim = crate::simulators::confluence::ConfluenceSim::new(cfg.clone());
        let all = sim.read_restrictions();
        assert_eq!(all.len(), 3, "{all:?}");
        let (top, _) = all
            .iter()
            .find(|(_, r)| r.groups == vec![group_engineering()])
            .expect("a group-restricted page");
        assert!(sim.pages().iter().any(|p| p.parent_id.as_deref() == Some(top.as_str())));
        let (nested, r) = all.iter().find(|(_, r)| r.users.len() == 1).expect("a nested one");
        assert_eq!(r.users[0].account_id, seed_users()[0].account_id);
        let above = sim.ancestor_restrictions(nested);
        assert_eq!(above.last().map(|(id, _)| id), Some(top), "{above:?}");
        let (pair, r) = all.iter().find(|(_, r)| r.users.len() == 2).expect("two users");
        assert!(r.users.iter().any(|u| u.email.is_empty()), "one hides its email");
        assert!(sim.ancestor_restrictions(pair).iter().all(|(id, _)| id != top));
        let again = crate::simulators::confluence::ConfluenceSim::new(cfg);
        assert_eq!(again.read_restrictions(), all);
    }

    /// With the expand, every page of a search carries its own read
    /// restriction (empty lists when it has none) and its ancestors; without
    /// it, `restrictions` is absent and only named in `_expandable`.
    #[tokio::test]
    async fn search_inlines_read_restrictions_only_when_expanded() {
        let (sim, base) = start(SimConfig {
            pages: 40,
            seed: 3,
            ..SimConfig::default()
        })
        .await;
        let own = sim.read_restrictions();
        let found = search_all(&base, RESTRICTION_EXPAND).await;
        assert_eq!(found.len(), 40);
        for (id, v) in &found {
            let read = &v["restrictions"]["read"];
            assert_eq!(read["operation"], "read", "{v}");
            let want = own.get(id).cloned().unwrap_or_default();
            let users = &read["restrictions"]["user"];
            let groups = &read["restrictions"]["group"];
            assert_eq!(
                names(users, "accountId"),
                want.users.iter().map(|u| u.account_id.clone()).collect::<Vec<_>>()
            );
            assert_eq!(
                names(groups, "id"),
                want.groups.iter().map(|g| g.id.clone()).collect::<Vec<_>>()
            );
            assert_eq!(
                (users["start"].as_u64(), users["limit"].as_u64(), users["size"].as_u64()),
                (Some(0), Some(100), Some(want.users.len() as u64))
            );
            assert_eq!(groups["limit"], 100);
            if let Some(u) = users["results"].get(0) {
                assert_eq!(
                    (u["type"].as_str(), u["accountType"].as_str()),
                    (Some("known"), Some("atlassian"))
                );
                assert!(u["email"].is_string() && u["publicName"].is_string() && u["displayName"].is_string());
            }
            if let Some(g) = groups["results"].get(0) {
                assert_eq!(g["type"], "group");
                assert!(g["name"].is_string());
            }
            assert!(v["ancestors"].is_array(), "{v}");
        }
        // Only the user list asked for: the group list is expandable.
        let (_, body) = get_json(format!(
            "{base}/wiki/rest/api/content/search?cql=type%3Dpage&expand=restrictions.read.restrictions.user"
        ))
        .await;
        let read = &body["results"][0]["restrictions"]["read"]["restrictions"];
        assert!(read["user"].is_object() && read["group"].is_null(), "{read}");
        assert!(read["_expandable"]["group"].is_string(), "{read}");
        let plain = search_all(&base, "version").await;
        for v in plain.values() {
            assert!(v.get("restrictions").is_none(), "{v}");
            assert!(v["_expandable"]["restrictions"].is_string(), "{v}");
        }
        // Content by id takes the same expand.
        let (id, r) = own.iter().next().expect("a restricted page");
        let (code, body) = get_json(format!("{base}/wiki/rest/api/content/{id}?expand={RESTRICTION_EXPAND}")).await;
        assert_eq!(code, 200);
        assert_eq!(
            body["restrictions"]["read"]["restrictions"]["user"]["size"].as_u64(),
            Some(r.users.len() as u64)
        );
    }

    /// A restriction longer than the inline limit is cut to it (`size ==
    /// limit`); `byOperation/read` pages the rest with `start`/`limit`, users
    /// and groups together; unknown and trashed pages are 404s in the v1 form.
    #[tokio::test]
    async fn long_restrictions_are_truncated_inline_and_paged_by_operation() {
        let (sim, base) = start(SimConfig {
            pages: 3,
            ..SimConfig::default()
        })
        .await;
        let page = sim.pages()[1].id.clone();
        let users: Vec<SimUser> = (0..150)
            .map(|i| SimUser::new(&format!("acct-{i:03}"), "", "", ""))
            .collect();
        let groups = vec![group_confluence_users(), group_engineering()];
        assert!(sim.set_read_restriction(&page, users.clone(), groups));
        let got = sim.read_restriction(&page).expect("page");
        assert_eq!(got.users[7].public_name, "acct-007", "publicName always has a value");
        assert_eq!(got.users[7].display_name, "acct-007");

        let (_, body) = get_json(format!(
            "{base}/wiki/rest/api/content/{page}?expand={RESTRICTION_EXPAND}"
        ))
        .await;
        let inline = &body["restrictions"]["read"]["restrictions"]["user"];
        assert_eq!(
            (inline["size"].as_u64(), inline["limit"].as_u64()),
            (Some(100), Some(100))
        );

        let by_op = format!("{base}/wiki/rest/api/content/{page}/restriction/byOperation/read");
        let (code, body) = get_json(by_op.clone()).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["operation"], "read");
        assert_eq!(body["restrictions"]["user"]["size"], 100);
        assert_eq!(body["restrictions"]["group"]["size"], 2);
        let mut seen = Vec::new();
        let mut start_at = 0;
        loop {
            let (code, body) = get_json(format!("{by_op}?start={start_at}&limit=40")).await;
            assert_eq!(code, 200);
            let list = &body["restrictions"]["user"];
            assert_eq!(list["start"].as_u64(), Some(start_at as u64));
            seen.extend(names(list, "accountId"));
            let size = list["size"].as_u64().expect("size") as usize;
            if size < 40 {
                break;
            }
            start_at += 40;
        }
        assert_eq!(seen, users.iter().map(|u| u.account_id.clone()).collect::<Vec<_>>());
        let (_, body) = get_json(format!("{by_op}?expand=restrictions.group")).await;
        assert!(body["restrictions"]["user"].is_null() && body["restrictions"]["group"]["size"] == 2);
        let (code, _) = get_json(format!("{by_op}?limit=x")).await;
        assert_eq!(code, 400);

        let (code, body) = get_json(format!(
            "{base}/wiki/rest/api/content/999999/restriction/byOperation/read"
        ))
        .await;
        assert_eq!((code, body["statusCode"].as_u64()), (404, Some(404)), "{body}");
        assert_eq!(body["data"]["successful"], false);
        assert!(sim.delete_page(&page));
        let (code, _) = get_json(by_op).await;
        assert_eq!(code, 404);
        assert!(!sim.set_read_restriction(&page, Vec::new(), Vec::new()));
        assert_eq!(
            sim.calls()
                .get("GET /wiki/rest/api/content/{id}/restriction/byOperation/{operation}"),
            Some(&9),
            "counted like every API call: 1 + 4 pages + 2 + 2 404s"
        );
    }

    /// Setting a restriction (over `/_sim/` too) changes what search shows
    /// and nothing else: same version, same modification time; empty lists
    /// remove it.
    #[tokio::test]
    async fn set_read_restriction_keeps_version_and_modification_time() {
        let (sim, base) = start(SimConfig {
            pages: 6,
            ..SimConfig::default()
        })
        .await;
        let before = sim.pages()[4].clone();
        let resp = reqwest::Client::new()
            .put(format!("{base}/_sim/pages/{}/restrictions/read", before.id))
            .json(&json!({
                "users": [{"accountId": "557058:x", "email": "x@example.com", "displayName": "X"}],
                "groups": [{"name": "engineering", "id": "g-1"}]
            }))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        let after = sim.pages()[4].clone();
        assert_eq!(after, before, "no new version, no new modification time");
        let found = search_all(&base, RESTRICTION_EXPAND).await;
        let read = &found[&before.id]["restrictions"]["read"]["restrictions"];
        assert_eq!(names(&read["user"], "accountId"), vec!["557058:x"]);
        assert_eq!(names(&read["user"], "publicName"), vec!["557058:x"]);
        assert_eq!(names(&read["group"], "name"), vec!["engineering"]);
        assert_eq!(found[&before.id]["version"]["number"], before.version);

        assert!(sim.set_read_restriction(&before.id, Vec::new(), Vec::new()));
        assert_eq!(sim.read_restriction(&before.id), Some(SimRestriction::default()));
        assert!(!sim.read_restrictions().contains_key(&before.id));
        let resp = reqwest::Client::new()
            .put(format!("{base}/_sim/pages/999999/restrictions/read"))
            .json(&json!({}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 404);
    }
}
