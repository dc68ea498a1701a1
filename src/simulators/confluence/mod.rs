//! In-process simulator of the Confluence Cloud REST endpoints the connector uses.
//!
//! What it owns: one space of pages (a tree), served by an axum app on the real
//! paths, parameters, JSON fields, pagination links, error bodies and headers:
//! - `GET /wiki/api/v2/spaces?keys=..`
//! - `GET /wiki/api/v2/spaces/{id}/pages?limit=&cursor=&status=&body-format=`
//! - `GET /wiki/api/v2/pages?id=1,2&space-id=&body-format=&limit=&cursor=`
//! - `GET /wiki/rest/api/content/search?cql=&limit=&cursor=&expand=` (v1, CQL;
//!   `expand` takes `version`, `ancestors`, `container`,
//!   `restrictions.read.restrictions.user` and `restrictions.read.restrictions.group`)
//! - `GET /wiki/rest/api/content/{id}?status=&expand=` (v1)
//! - `GET /wiki/rest/api/content/{id}/restriction/byOperation/{read|update}?start=&limit=&expand=` (v1)
//! - `GET /wiki/api/v2/spaces/{id}/permissions?limit=&cursor=`
//!
//! plus control endpoints under `/_sim/` (not Confluence; not counted as API calls).
//!
//! Invariants and deliberate simplifications:
//! - Every API response carries a `Date` header from the *source* clock
//!   (real UTC + `clock_skew`); page times are stamped from the same clock.
//! - Page ids are increasing numeric strings; listings are ordered by id and the
//!   opaque cursor encodes the last id returned, so a page created mid-listing
//!   with a larger id shows up later in the same listing, as with real cursors.
//! - CQL: only `space`, `type` and `lastmodified` clauses joined by `and`; date
//!   literals are read in `user_timezone` and compared at minute precision, as
//!   Confluence does. Anything else is a 400 with Atlassian's v1 error body.
//! - Basic auth: any credentials, or none, are accepted; the simulator models
//!   data and traffic. Page read restrictions and space permission assignments
//!   are served as data (module `restrictions`, `space_permissions`), never
//!   enforced: every caller sees everything (use `fail_next(n, 401)` for auth failures).
//! - Deleting a page moves it to the space's trash (`status=trashed`; purging
//!   removes it from there) and, like Confluence, moves its children up to its parent.
//! - Rate limit: a token bucket of `rate_limit_per_sec` tokens refilled per second;
//!   an empty bucket answers 429 with `Retry-After` and `X-RateLimit-*` headers.
//!
//! Where things are: [`ConfluenceSim`] and its control methods here; the space
//! and its mutations in `model`; the REST endpoints, their JSON and errors in
//! `api`; the CQL subset in `cql`; the `/_sim/` endpoints in `control`; page
//! read restrictions in `restrictions`; space permissions in `space_permissions`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::http::{self, CallCounts};
use super::traffic::{Admission, TrafficStats};
pub use attachments::SimAttachment;
pub use model::SimPage;
use model::SimState;
pub use restrictions::{
    RESTRICTION_LIST_LIMIT, RESTRICTION_MAX_LIMIT, SimGroup, SimRestriction, SimUser, group_confluence_administrators,
    group_confluence_users, group_engineering, seed_users,
};
pub use space_permissions::{
    SPACE_PERMISSIONS_DEFAULT_LIMIT, SPACE_PERMISSIONS_MAX_LIMIT, SimOperation, SimPrincipal, SimSpacePermission,
};

use super::files::Sample;

mod api;
mod attachments;
mod control;
mod cql;
mod model;
mod restrictions;
mod space_permissions;

/// How a simulator starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The one space's key.
    pub space_key: String,
    /// The one space's numeric id.
    pub space_id: String,
    /// Pages seeded at start.
    pub pages: usize,
    /// The zone CQL date literals are read in.
    pub user_timezone: Tz,
    /// Source clock = real UTC + skew.
    pub clock_skew: chrono::Duration,
    /// Requests per second before 429s; `None` = unlimited.
    pub rate_limit_per_sec: Option<u32>,
    /// Seed of the page tree's shape.
    pub seed: u64,
    /// Seed attachments too: one page in four carries one or two files of
    /// every stored kind (PDF, Office, text, HTML, an image).
    pub attachments: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            space_key: "ENG".to_owned(),
            space_id: "98304".to_owned(),
            pages: 0,
            user_timezone: Tz::UTC,
            clock_skew: chrono::Duration::zero(),
            rate_limit_per_sec: None,
            seed: 0,
            attachments: false,
        }
    }
}

/// A running simulator's shared state; clones share it.
#[derive(Clone)]
pub struct ConfluenceSim {
    state: Arc<Mutex<SimState>>,
}

impl ConfluenceSim {
    /// A simulator with `cfg.pages` seeded pages: titles `Page 0001`..., a
    /// deterministic tree (about a third at the root), modified over the last 30 days.
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState::seeded(cfg))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum app: API routes (counted, rate limited, `Date`-stamped) and `/_sim/` controls.
    pub fn router(&self) -> Router {
        http::app(
            self.clone(),
            api::routes(self),
            control::routes().merge(attachments::media_routes()),
            api::not_found,
        )
    }

    /// Binds `addr` (port 0 picks one), serves in a spawned task, returns the bound address.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        http::serve(self.router(), addr, "confluence").await
    }

    /// Creates a page (version 1, stamped now by the source clock); returns its id.
    /// An unknown `parent` puts the page at the space root.
    pub fn create_page(&self, title: &str, parent: Option<&str>, body: &str) -> String {
        self.lock().create_page(title, parent, body)
    }

    /// Edits a page: bumps `version.number`, stamps `version.createdAt` with the
    /// source clock. `false` if there is no such page.
    pub fn update_page(&self, id: &str, title: Option<&str>, body: Option<&str>) -> bool {
        self.lock().update_page(id, title, body)
    }

    /// Deletes a page as Confluence does: it moves to the space's trash (listed
    /// with `status=trashed`, gone from search and from current listings and
    /// fetches); its children move up to its parent. `false` if there is no such
    /// current page.
    pub fn delete_page(&self, id: &str) -> bool {
        self.lock().delete_page(id)
    }

    /// Purges a trashed page: gone from every endpoint. `false` if it is not in the trash.
    pub fn purge_page(&self, id: &str) -> bool {
        self.lock().purge_page(id)
    }

    /// Deletes then purges a page at once (a page that was trashed and purged
    /// between two syncs: no trace left in the trash).
    pub fn delete_and_purge_page(&self, id: &str) -> bool {
        let mut st = self.lock();
        st.delete_page(id) && st.purge_page(id)
    }

    /// Restores a trashed page with its old version. `false` if it is not in the trash.
    pub fn restore_page(&self, id: &str) -> bool {
        self.lock().restore_page(id)
    }

    /// Every current page, sorted by id.
    pub fn pages(&self) -> Vec<SimPage> {
        self.lock().snapshot()
    }

    /// The pages each seeded page's body links to by id (URL and
    /// `ri:content-id` forms, in order, once each), as the simulator wrote them;
    /// title-only links are not listed. Bodies edited since say otherwise.
    pub fn seeded_links(&self) -> BTreeMap<String, Vec<String>> {
        self.lock()
            .seeded_links
            .iter()
            .map(|(id, links)| (id.to_string(), links.clone()))
            .collect()
    }

    /// Attaches `file` to current page `page`: its id (`att…`), or `None` if there is no such page.
    pub fn attach(&self, page: &str, file: Sample) -> Option<String> {
        self.lock().attach(page, file)
    }

    /// Uploads a new version of attachment `id`. `false` if it is not visible.
    pub fn update_attachment(&self, id: &str, file: Sample) -> bool {
        self.lock().update_attachment(id, file)
    }

    /// Deletes attachment `id` to the trash. `false` if it is not visible.
    pub fn delete_attachment(&self, id: &str) -> bool {
        self.lock().delete_attachment(id)
    }

    /// Every visible attachment (current, on a current page), sorted by id.
    pub fn attachments(&self) -> Vec<SimAttachment> {
        self.lock().attachment_snapshot()
    }

    /// Replaces page `id`'s own read restriction with `users` and `groups`
    /// (both empty: no restriction). Like Confluence's restriction
    /// sub-resource, this creates no page version and leaves the page's
    /// modification time alone. A user's empty `publicName` becomes its
    /// accountId, an empty `displayName` its publicName. `false` if there is
    /// no such current page.
    pub fn set_read_restriction(&self, id: &str, users: Vec<SimUser>, groups: Vec<SimGroup>) -> bool {
        self.lock().set_read_restriction(id, users, groups)
    }

    /// Page `id`'s own read restriction, as the API lists it (empty when it
    /// has none; inherited restrictions are not in it). `None` if there is no
    /// such current page.
    pub fn read_restriction(&self, id: &str) -> Option<SimRestriction> {
        let st = self.lock();
        let id = id.parse::<u64>().ok().filter(|id| st.is_current(*id))?;
        Some(st.read_restriction(id))
    }

    /// Every current page with a read restriction of its own, by id.
    pub fn read_restrictions(&self) -> BTreeMap<String, SimRestriction> {
        let st = self.lock();
        st.restrictions
            .iter()
            .filter(|(id, _)| st.is_current(**id))
            .map(|(id, r)| (id.to_string(), r.clone()))
            .collect()
    }

    /// Page `id`'s ancestors from the root down to its parent, each with its
    /// own read restriction (empty when it has none). Combining them into
    /// effective access is the reader's job. Empty for an unknown page.
    pub fn ancestor_restrictions(&self, id: &str) -> Vec<(String, SimRestriction)> {
        let st = self.lock();
        let Some(id) = id.parse::<u64>().ok().filter(|id| st.is_current(*id)) else {
            return Vec::new();
        };
        st.ancestors(id)
            .into_iter()
            .map(|a| (a.to_string(), st.read_restriction(a)))
            .collect()
    }

    /// Who may view page `id`, by the references' rules, as the lists of
    /// principals a reader must hold one of each: the space's "view space"
    /// holders, then every non-empty read restriction from the root down to
    /// the page itself ("view restrictions are inherited"). Principals are
    /// written as tidemark writes them (`user:atlassian:ACCOUNT_ID`,
    /// `group:GROUP_ID`, `role:ID`), so a test can compare. `None` for an
    /// unknown page; an attachment is its page's.
    pub fn reader_lists(&self, id: &str) -> Option<Vec<Vec<String>>> {
        let page = match attachments::parse_id(id) {
            Some(n) => self.lock().attachments.get(&n).map(|a| a.page.to_string())?,
            None => id.to_owned(),
        };
        let own = self.read_restriction(&page)?;
        let space = self
            .space_read_principals()
            .into_iter()
            .map(|p| match p.kind.as_str() {
                "user" => format!("user:atlassian:{}", p.id),
                kind => format!("{kind}:{}", p.id),
            })
            .collect();
        let mut lists = vec![space];
        for (_, r) in self
            .ancestor_restrictions(&page)
            .into_iter()
            .chain([(page.clone(), own)])
        {
            if !r.is_empty() {
                let users = r.users.iter().map(|u| format!("user:atlassian:{}", u.account_id));
                lists.push(
                    users
                        .chain(r.groups.iter().map(|g| format!("group:{}", g.id)))
                        .collect(),
                );
            }
        }
        Some(lists)
    }

    /// [`ConfluenceSim::reader_lists`] as tidemark's [`Permissions`]
    /// (`source` left empty): the space's list, also requiring each restriction.
    ///
    /// [`Permissions`]: crate::permissions::Permissions
    pub fn expected_permissions(&self, id: &str) -> Option<crate::permissions::Permissions> {
        let mut lists = self.reader_lists(id)?.into_iter();
        let space = lists.next().unwrap_or_default();
        Some(lists.fold(
            crate::permissions::Permissions::new(space, serde_json::Value::Null),
            |p, l| p.also_require(l),
        ))
    }

    /// The space's permission assignments, in id order.
    pub fn space_permissions(&self) -> Vec<SimSpacePermission> {
        self.lock().space_permissions.clone()
    }

    /// The principals holding `read`/`space` ("view space"), in assignment order.
    pub fn space_read_principals(&self) -> Vec<SimPrincipal> {
        self.lock()
            .space_permissions
            .iter()
            .filter(|p| p.is_read_space())
            .map(|p| p.principal.clone())
            .collect()
    }

    /// Replaces every assignment of the space; those without a numeric id get one.
    pub fn set_space_permissions(&self, perms: Vec<SimSpacePermission>) {
        self.lock().space_permissions = space_permissions::with_ids(perms);
    }

    /// Adds one assignment (its id is replaced by a fresh one); returns the id.
    pub fn add_space_permission(&self, mut perm: SimSpacePermission) -> String {
        let mut st = self.lock();
        perm.id = String::new();
        let mut all = std::mem::take(&mut st.space_permissions);
        all.push(perm);
        st.space_permissions = space_permissions::with_ids(all);
        st.space_permissions.last().map(|p| p.id.clone()).unwrap_or_default()
    }

    /// Removes assignment `id`. `false` if there is none.
    pub fn remove_space_permission(&self, id: &str) -> bool {
        let mut st = self.lock();
        let before = st.space_permissions.len();
        st.space_permissions.retain(|p| p.id != id);
        st.space_permissions.len() != before
    }

    /// Every trashed page, sorted by id.
    pub fn trash(&self) -> Vec<SimPage> {
        self.lock().trash()
    }

    /// API calls by endpoint label, e.g. `"GET /wiki/api/v2/spaces/{id}/pages"`.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.lock().traffic.calls()
    }

    /// All API calls (including those answered with errors or 429).
    pub fn total_calls(&self) -> u64 {
        self.lock().traffic.total()
    }

    /// Zeroes the call counters.
    pub fn reset_calls(&self) {
        self.lock().traffic.reset();
    }

    /// Changes the rate limit; the bucket starts full.
    pub fn set_rate_limit(&self, per_sec: Option<u32>) {
        self.lock().traffic.set_rate_limit(per_sec);
    }

    /// The next `n` API requests answer `status` (429 and 503 with `Retry-After`,
    /// 1 s unless [`set_throttle_retry_after`](Self::set_throttle_retry_after)).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.lock().traffic.fail_next(n, status);
    }

    /// The next `n` API requests answer 200 with a truncated JSON body, as a
    /// proxy or a half-failed server might.
    pub fn corrupt_next(&self, n: u32) {
        self.lock().traffic.corrupt_next(n);
    }

    /// Every API request waits this long before it is served (a slow server,
    /// or a window in which tests change pages while a request is in flight).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().traffic.set_latency(latency);
    }

    /// Moves the source clock: source time = real UTC + `skew`.
    pub fn set_clock_skew(&self, skew: chrono::Duration) {
        self.lock().skew = skew;
    }

    /// The source clock now.
    pub fn now(&self) -> DateTime<Utc> {
        self.lock().now()
    }

    /// Counts one API request (arrived at `arrived`) and decides whether it is served.
    fn admit(&self, label: &str, arrived: std::time::Instant) -> Admission {
        self.lock().traffic.admit(label, arrived)
    }

    /// Notes a throttle answered just now with `Retry-After: retry_after`; returns the header value.
    fn throttle_sent(&self, status: u16, retry_after: std::time::Duration) -> u64 {
        self.lock().traffic.throttle_sent(status, retry_after);
        retry_after.as_secs()
    }

    /// How clients behaved toward throttles and limits: early requests per
    /// throttle, the busiest second (also at `/_sim/stats`).
    pub fn traffic_stats(&self) -> TrafficStats {
        self.lock().traffic.stats()
    }

    /// The `Retry-After` (whole seconds) of injected 429s and 503s (default 1 s).
    pub fn set_throttle_retry_after(&self, d: std::time::Duration) {
        self.lock().traffic.set_throttle_retry_after(d);
    }
}

impl CallCounts for ConfluenceSim {
    fn calls(&self) -> BTreeMap<String, u64> {
        ConfluenceSim::calls(self)
    }

    fn total_calls(&self) -> u64 {
        ConfluenceSim::total_calls(self)
    }

    fn reset_calls(&self) {
        ConfluenceSim::reset_calls(self);
    }

    fn traffic_stats(&self) -> TrafficStats {
        ConfluenceSim::traffic_stats(self)
    }
}

/// Serves a fresh simulator on a free local port; returns it and its base URL.
#[cfg(test)]
async fn start(cfg: SimConfig) -> (ConfluenceSim, String) {
    let sim = ConfluenceSim::new(cfg);
    let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
    (sim, format!("http://{addr}"))
}
