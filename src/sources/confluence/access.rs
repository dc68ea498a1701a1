//! Who may read each page of the space: the space's "view space" holders and
//! the read restrictions of the page and of every ancestor, read through the
//! documented endpoints and combined here.
//!
//! What Atlassian documents, and what follows from it:
//! - Viewing a page needs the space's `read`/`space` permission (v2 `GET
//!   /spaces/{id}/permissions`) *and*, for every page on its path with a read
//!   restriction of its own, to be named in it ("view restrictions are
//!   inherited"). So a page's [`Permissions`] are the space's holders, also
//!   requiring each restricted ancestor's list and its own
//!   ([`Permissions::also_require`]); an attachment is its page's.
//! - The API lists a page's *own* restrictions only (inherited ones are not
//!   listed), and no restriction change moves a version, a modification
//!   time or anything CQL can ask for. So every run of changes reads them all
//!   again: one v1 search over the space's pages with the restrictions and
//!   `ancestors` expanded (a call per hundred pages), paging a list that fills
//!   its `limit` through `.../restriction/byOperation/read`. The nested
//!   `ancestors.restrictions` expand is not used: it fails whole batches on
//!   drafts and trashed ancestors.
//! - Users are `user:atlassian:ACCOUNT_ID` (emails are hidden by privacy
//!   settings and can move between accounts), groups `group:GROUP_ID`
//!   (names can be renamed and reused), roles `role:ROLE_ID`. Groups are not
//!   expanded.
//!
//! Invariants:
//! - a page's permissions are computed from one scan's view of the tree and
//!   restrictions; a page the scan did not see (created after it) gets them
//!   from its own reported ancestors when it has them, else none are
//!   announced and its fetch reads them ([`Client::permissions_of`]); a
//!   page nobody can tell is written for nobody: never more readers than
//!   the source allows;
//! - memory is a pair of ids per page (16 bytes) and the restricted pages'
//!   lists, for the length of one run.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::api::{Client, Reply, V2List};
use crate::permissions::Permissions;
use crate::sources::{ApiCalls, Error};

/// Users and groups per page of a restriction list: the endpoints' documented
/// default, which the inline expand uses too; a list of exactly this many
/// may go on and is paged.
pub(super) const RESTRICTION_LIMIT: usize = 100;
/// Assignments per page of the v2 space permissions listing (its maximum).
pub(super) const SPACE_PERMISSIONS_LIMIT: u32 = 250;
/// Ancestors followed before a chain is taken for a cycle (a corrupt reply).
const MAX_DEPTH: usize = 10_000;
/// The largest restriction cache kept in a checkpoint (bytes of JSON): a
/// space with more restricted pages than that scans on every run.
const MAX_CACHED: usize = 256 * 1024;

/// v2 `SpacePermission`.
#[derive(Deserialize)]
pub(super) struct V2SpacePermission {
    pub(super) principal: Option<V2Principal>,
    pub(super) operation: Option<V2Operation>,
}

#[derive(Deserialize)]
pub(super) struct V2Principal {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct V2Operation {
    pub(super) key: String,
    pub(super) target_type: String,
}

/// v1 content's `restrictions` (`expand=restrictions.read.restrictions.user,...group`).
#[derive(Deserialize)]
pub(super) struct V1Restrictions {
    pub(super) read: Option<V1ContentRestriction>,
}

/// v1 `ContentRestriction` (inline, or from `byOperation/read`).
#[derive(Deserialize)]
pub(super) struct V1ContentRestriction {
    pub(super) restrictions: Option<V1RestrictionLists>,
}

#[derive(Deserialize)]
pub(super) struct V1RestrictionLists {
    pub(super) user: Option<V1Array<V1User>>,
    pub(super) group: Option<V1Array<V1Group>>,
}

/// v1 `UserArray` / `GroupArray`.
#[derive(Deserialize)]
pub(super) struct V1Array<T> {
    #[serde(default = "Vec::new")]
    pub(super) results: Vec<T>,
    pub(super) size: Option<usize>,
    pub(super) limit: Option<usize>,
}

impl<T> V1Array<T> {
    /// Whether this page of the list is full, so more may follow.
    fn full(&self) -> bool {
        let size = self.size.unwrap_or(self.results.len());
        size > 0 && size >= self.limit.unwrap_or(RESTRICTION_LIMIT)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct V1User {
    pub(super) account_id: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct V1Group {
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) name: String,
}

/// One page's own read restriction, as principals (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Restriction(pub(super) Vec<String>);

impl Restriction {
    /// Adds what one page of the lists names. A group without an id is named
    /// by its name (older sites); a user without an account id is dropped
    /// (it cannot be told apart: narrower, never wider).
    fn add(&mut self, lists: &V1RestrictionLists) {
        if let Some(users) = &lists.user {
            self.0.extend(
                users
                    .results
                    .iter()
                    .filter_map(|u| u.account_id.as_deref())
                    .filter(|a| !a.is_empty())
                    .map(|a| format!("user:atlassian:{a}")),
            );
        }
        if let Some(groups) = &lists.group {
            self.0
                .extend(groups.results.iter().filter_map(|g| match g.id.as_deref() {
                    Some(id) if !id.is_empty() => Some(format!("group:{id}")),
                    _ if !g.name.is_empty() => Some(format!("group:{}", g.name)),
                    _ => None,
                }));
        }
    }

    /// Whether any list of this reply filled its page (more to read).
    fn more(lists: &V1RestrictionLists) -> bool {
        lists.user.as_ref().is_some_and(V1Array::full) || lists.group.as_ref().is_some_and(V1Array::full)
    }
}

/// The principals of the space's "view space" (`read`/`space`) assignments.
pub(super) fn space_readers(assignments: &[V2SpacePermission]) -> Vec<String> {
    let mut out: Vec<String> = assignments
        .iter()
        .filter(|a| {
            a.operation
                .as_ref()
                .is_some_and(|o| o.key == "read" && o.target_type == "space")
        })
        .filter_map(|a| a.principal.as_ref())
        .filter(|p| !p.id.is_empty())
        .filter_map(|p| match p.kind.as_str() {
            "user" => Some(format!("user:atlassian:{}", p.id)),
            "group" => Some(format!("group:{}", p.id)),
            "role" => Some(format!("role:{}", p.id)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The tree and the restrictions as one run's scan saw them, and the
/// space's readers: what every page's permissions are computed from.
#[derive(Debug, Default)]
pub(super) struct AccessMap {
    /// The space's "view space" principals.
    pub(super) space: Vec<String>,
    /// (page, parent or 0), sorted by page once the scan is over.
    parents: Vec<(u64, u64)>,
    /// Pages with a read restriction of their own.
    restricted: HashMap<u64, Restriction>,
    sorted: bool,
}

impl AccessMap {
    /// A map knowing the space's readers and no page yet.
    pub(super) fn new(space: Vec<String>) -> Self {
        Self {
            space,
            ..Self::default()
        }
    }

    /// The restrictions a scan saw, as JSON for the checkpoint's scope (the
    /// runs between scans read them back with [`AccessMap::from_cache`]);
    /// `None` when too large to keep there.
    pub(super) fn cache(&self) -> Option<String> {
        let restricted: BTreeMap<String, &Vec<String>> =
            self.restricted.iter().map(|(id, r)| (id.to_string(), &r.0)).collect();
        serde_json::to_string(&restricted)
            .ok()
            .filter(|t| t.len() <= MAX_CACHED)
    }

    /// A map knowing the space's readers and, from a cache a scan left, the
    /// restricted pages; no tree (a page's ancestors come from its reply).
    /// `None` if the cache does not read.
    pub(super) fn from_cache(space: Vec<String>, cache: &str) -> Option<Self> {
        let restricted: BTreeMap<String, Vec<String>> = serde_json::from_str(cache).ok()?;
        let mut map = Self::new(space);
        for (id, list) in restricted {
            map.restricted.insert(id.parse().ok()?, Restriction(list));
        }
        map.sorted = true;
        Some(map)
    }

    /// Records page `id` under `parent` with its own `restriction`.
    pub(super) fn insert(&mut self, id: u64, parent: Option<u64>, restriction: Restriction) {
        self.parents.push((id, parent.unwrap_or(0)));
        if !restriction.0.is_empty() {
            self.restricted.insert(id, restriction);
        }
        self.sorted = false;
    }

    /// Orders the pages for lookups (after the scan, before any).
    pub(super) fn seal(&mut self) {
        self.parents.sort_unstable();
        self.parents.dedup_by_key(|(id, _)| *id);
        self.sorted = true;
    }

    /// The pages scanned, in id order (after [`AccessMap::seal`]).
    pub(super) fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.parents.iter().map(|(id, _)| *id)
    }

    /// How many pages the scan saw.
    pub(super) fn len(&self) -> usize {
        self.parents.len()
    }

    fn parent(&self, id: u64) -> Option<Option<u64>> {
        debug_assert!(self.sorted);
        let at = self.parents.binary_search_by_key(&id, |(p, _)| *p).ok()?;
        let parent = self.parents[at].1;
        Some((parent != 0).then_some(parent))
    }

    /// Page `id`'s permissions, when the scan saw it.
    pub(super) fn of_page(&self, id: u64) -> Option<Permissions> {
        self.parent(id)?;
        let mut chain = vec![id];
        let mut at = id;
        while let Some(Some(parent)) = self.parent(at) {
            if chain.len() >= MAX_DEPTH || chain.contains(&parent) {
                break;
            }
            chain.push(parent);
            at = parent;
        }
        chain.reverse();
        Some(self.along(&chain, None))
    }

    /// The permissions of a page the scan may not have seen, from its
    /// `ancestors` (root first) and its own restriction as a reply reported them.
    pub(super) fn of_reported(&self, id: u64, ancestors: &[u64], own: Option<&Restriction>) -> Permissions {
        let mut chain = ancestors.to_vec();
        chain.push(id);
        self.along(&chain, own)
    }

    /// The space's readers, also requiring every restriction along `chain`
    /// (root first; `own` replaces what the scan holds for its last page).
    fn along(&self, chain: &[u64], own: Option<&Restriction>) -> Permissions {
        let last = chain.last().copied();
        let lists: Vec<(u64, &Restriction)> = chain
            .iter()
            .filter_map(|id| match own {
                Some(r) if Some(*id) == last => Some((*id, r)),
                _ => self.restricted.get(id).map(|r| (*id, r)),
            })
            .filter(|(_, r)| !r.0.is_empty())
            .collect();
        let source = json!({
            "space": self.space,
            "restrictions": lists
                .iter()
                .map(|(id, r)| json!({"content": id.to_string(), "read": r.0}))
                .collect::<Vec<Value>>(),
        });
        lists
            .iter()
            .fold(Permissions::new(&self.space, source), |p, (_, r)| p.also_require(&r.0))
    }
}

impl Client {
    /// Who may read each of `pages` (numeric ids) now, for a fetch that no
    /// feed announced it for (a document named by a webhook, a repair, one
    /// redone after a failure): the space's holders (a space lookup and its
    /// permissions), then a v1 search `id in (...)` with `ancestors` and the
    /// restrictions for the pages, and one for their ancestors'
    /// restrictions: 2 calls and 2 per hundred pages. A page the search does
    /// not return (gone, or not visible) is left out.
    pub(super) async fn permissions_of(
        &self,
        pages: &[u64],
        calls: &ApiCalls,
    ) -> Result<HashMap<u64, Permissions>, Error> {
        if pages.is_empty() {
            return Ok(HashMap::new());
        }
        let (space_id, _) = self.lookup_space(calls).await?;
        let mut map = AccessMap::new(self.space_readers(&space_id, calls).await?);
        let mut reported: Vec<(u64, Vec<u64>, Restriction)> = Vec::new();
        for chunk in pages.chunks(super::api::SEARCH_LIMIT as usize) {
            for item in self
                .search_ids(chunk, &format!("ancestors,{}", super::RESTRICTIONS_EXPAND), calls)
                .await?
            {
                let Some((id, own)) = self.own_restriction(&item, calls).await? else {
                    continue;
                };
                let ancestors = item.ancestors.iter().filter_map(|a| a.id.parse().ok()).collect();
                reported.push((id, ancestors, own));
            }
        }
        let mut above: Vec<u64> = reported.iter().flat_map(|(_, a, _)| a.iter().copied()).collect();
        above.sort_unstable();
        above.dedup();
        for chunk in above.chunks(super::api::SEARCH_LIMIT as usize) {
            for item in self.search_ids(chunk, super::RESTRICTIONS_EXPAND, calls).await? {
                let Some((id, own)) = self.own_restriction(&item, calls).await? else {
                    continue;
                };
                map.insert(id, None, own);
            }
        }
        map.seal();
        Ok(reported
            .into_iter()
            .map(|(id, ancestors, own)| (id, map.of_reported(id, &ancestors, Some(&own))))
            .collect())
    }

    /// A search result's numeric id and own read restriction; `None` when
    /// either does not read (left out, never taken as unrestricted).
    async fn own_restriction(
        &self,
        item: &super::api::V1Content,
        calls: &ApiCalls,
    ) -> Result<Option<(u64, Restriction)>, Error> {
        let Ok(id) = item.id.parse::<u64>() else {
            return Ok(None);
        };
        Ok(self
            .restriction(&item.id, item.restrictions.as_ref(), calls)
            .await?
            .map(|own| (id, own)))
    }

    /// One v1 search for the content with these ids (at most a page of them), `expand`ed.
    async fn search_ids(
        &self,
        ids: &[u64],
        expand: &str,
        calls: &ApiCalls,
    ) -> Result<Vec<super::api::V1Content>, Error> {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let mut url = self.url("wiki/rest/api/content/search")?;
        url.query_pairs_mut()
            .append_pair("cql", &format!("id in ({})", list.join(",")))
            .append_pair("limit", &super::api::SEARCH_LIMIT.to_string())
            .append_pair("expand", expand);
        let reply: Reply<super::api::V1Search> = self.get_json(&url, calls).await?;
        Ok(reply.body.results)
    }

    /// The space's "view space" principals: every page of v2 `GET
    /// /spaces/{id}/permissions`.
    pub(super) async fn space_readers(&self, space_id: &str, calls: &ApiCalls) -> Result<Vec<String>, Error> {
        let mut url = self.url(&format!("wiki/api/v2/spaces/{space_id}/permissions"))?;
        url.query_pairs_mut()
            .append_pair("limit", &SPACE_PERMISSIONS_LIMIT.to_string());
        let mut all = Vec::new();
        loop {
            let reply: Reply<V2List<V2SpacePermission>> = self.get_json(&url, calls).await?;
            all.extend(reply.body.results);
            match self.v2_next(reply.body.links, reply.link_next, &url)? {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(space_readers(&all))
    }

    /// Page `id`'s own read restriction from what a reply inlined, reading
    /// the rest of a list that filled its page through `byOperation/read`;
    /// `None` when the reply has no read restriction to read (not expanded).
    pub(super) async fn restriction(
        &self,
        id: &str,
        inline: Option<&V1Restrictions>,
        calls: &ApiCalls,
    ) -> Result<Option<Restriction>, Error> {
        let mut out = Restriction::default();
        let Some(lists) = inline
            .and_then(|r| r.read.as_ref())
            .and_then(|r| r.restrictions.as_ref())
        else {
            return Ok(None);
        };
        out.add(lists);
        let mut more = Restriction::more(lists);
        let mut start = RESTRICTION_LIMIT;
        while more {
            let mut url: Url = self.url(&format!("wiki/rest/api/content/{id}/restriction/byOperation/read"))?;
            url.query_pairs_mut()
                .append_pair("start", &start.to_string())
                .append_pair("limit", &RESTRICTION_LIMIT.to_string());
            let reply: Reply<V1ContentRestriction> = self.get_json(&url, calls).await?;
            let Some(lists) = reply.body.restrictions else { break };
            out.add(&lists);
            more = Restriction::more(&lists);
            start += RESTRICTION_LIMIT;
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(list: &[&str]) -> Restriction {
        Restriction(list.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Only `read`/`space` assignments give readers; users, groups and roles
    /// keep their ids.
    #[test]
    fn view_space_holders_are_the_space_readers() {
        let raw = r#"[
            {"id":"1","principal":{"type":"group","id":"g1"},"operation":{"key":"read","targetType":"space"}},
            {"id":"2","principal":{"type":"group","id":"g2"},"operation":{"key":"create","targetType":"page"}},
            {"id":"3","principal":{"type":"user","id":"557058:abc"},"operation":{"key":"read","targetType":"space"}},
            {"id":"4","principal":{"type":"role","id":"r1"},"operation":{"key":"read","targetType":"space"}},
            {"id":"5","principal":{"type":"group","id":""},"operation":{"key":"read","targetType":"space"}}
        ]"#;
        let list: Vec<V2SpacePermission> = serde_json::from_str(raw).expect("json");
        assert_eq!(
            space_readers(&list),
            vec!["group:g1", "role:r1", "user:atlassian:557058:abc"]
        );
    }

    /// A page needs the space and every restriction on its path; a nested
    /// restriction adds a list, an unrestricted page under a restricted one
    /// inherits it, and a page the scan missed is read from its reported ancestors.
    #[test]
    fn restrictions_are_inherited_down_the_tree() {
        let mut m = AccessMap::new(vec!["group:users".into(), "group:eng".into()]);
        m.insert(1, None, Restriction::default());
        m.insert(2, Some(1), r(&["group:eng"]));
        m.insert(3, Some(2), Restriction::default());
        m.insert(4, Some(3), r(&["user:atlassian:alice"]));
        m.insert(5, Some(1), Restriction::default());
        m.seal();
        let readers = |id| m.of_page(id).expect("scanned");
        assert_eq!(readers(1).readers, vec!["group:eng", "group:users"]);
        assert!(readers(1).also_required.is_empty());
        assert_eq!(readers(3).readers, vec!["group:eng"]);
        assert!(readers(3).also_required.is_empty(), "eng implies the space list");
        let nested = readers(4);
        assert_eq!(nested.readers.len() + nested.also_required.len(), 2, "{nested:?}");
        assert!(nested.may_read(&["user:atlassian:alice", "group:eng"]));
        assert!(!nested.may_read(&["user:atlassian:alice", "group:users"]));
        assert!(!nested.may_read(&["group:eng"]));
        assert_eq!(readers(5).readers, vec!["group:eng", "group:users"]);
        assert!(m.of_page(9).is_none());
        let late = m.of_reported(9, &[1, 2], None);
        assert_eq!(late.readers, vec!["group:eng"]);
        assert_eq!(late.source["restrictions"][0]["content"], "2");
        let own = m.of_reported(2, &[1], Some(&Restriction::default()));
        assert_eq!(own.readers, vec!["group:eng", "group:users"], "a removed restriction");
    }

    /// What a scan saw round-trips through the checkpoint's cache: a page
    /// reported between scans gets its ancestors' restrictions from it.
    #[test]
    fn the_cache_carries_restrictions_between_scans() {
        let mut m = AccessMap::new(vec!["group:users".into()]);
        m.insert(1, None, r(&["group:eng"]));
        m.insert(2, Some(1), Restriction::default());
        m.seal();
        let cache = m.cache().expect("small");
        let between = AccessMap::from_cache(vec!["group:users".into()], &cache).expect("reads");
        let p = between.of_reported(7, &[1, 2], Some(&Restriction::default()));
        assert!(p.may_read(&["group:eng", "group:users"]) && !p.may_read(&["group:users"]));
        assert!(between.of_page(2).is_none(), "no tree between scans");
        assert!(AccessMap::from_cache(Vec::new(), "{\"x\": []}").is_none());
    }

    /// A reply naming its page in its own ancestry ends the walk instead of looping.
    #[test]
    fn a_cycle_in_the_tree_ends_the_walk() {
        let mut m = AccessMap::new(vec!["group:users".into()]);
        m.insert(1, Some(2), r(&["group:a"]));
        m.insert(2, Some(1), r(&["group:b"]));
        m.seal();
        let p = m.of_page(1).expect("scanned");
        assert!(!p.may_read(&["group:users"]));
    }

    /// A list that fills its page (size == limit) is paged on.
    #[test]
    fn a_full_list_goes_on() {
        let full: V1Array<V1User> = serde_json::from_str(r#"{"results":[],"size":100,"limit":100}"#).expect("json");
        assert!(full.full());
        let short: V1Array<V1User> = serde_json::from_str(r#"{"results":[],"size":3,"limit":100}"#).expect("json");
        assert!(!short.full());
    }
}
