//! In-process simulator of the Confluence Cloud REST endpoints the connector uses.
//!
//! What it owns: one space of pages (a tree), served by an axum app on the real
//! paths, parameters, JSON fields, pagination links, error bodies and headers:
//! - `GET /wiki/api/v2/spaces?keys=..`
//! - `GET /wiki/api/v2/spaces/{id}/pages?limit=&cursor=&status=&body-format=`
//! - `GET /wiki/api/v2/pages?id=1,2&space-id=&body-format=&limit=&cursor=`
//! - `GET /wiki/rest/api/content/search?cql=&limit=&cursor=&expand=` (v1, CQL)
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
//!   data and traffic, not permissions (use `fail_next(n, 401)` for auth failures).
//! - Deleting a page purges it (no trash) and, like Confluence, moves its
//!   children up to its parent.
//! - Rate limit: a token bucket of `rate_limit_per_sec` tokens refilled per second;
//!   an empty bucket answers 429 with `Retry-After` and `X-RateLimit-*` headers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::traffic::{Admission, Traffic};
use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, SubsecRound, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The first page id handed out.
const FIRST_ID: u64 = 100_001;
/// Largest `limit` of the v2 endpoints.
const V2_MAX_LIMIT: usize = 250;
/// Default `limit` of the v2 endpoints.
const V2_DEFAULT_LIMIT: usize = 25;
/// Largest `limit` honoured by v1 content search (Confluence caps it; clients follow `next`).
const V1_MAX_LIMIT: usize = 100;
/// Default `limit` of v1 content search.
const V1_DEFAULT_LIMIT: usize = 25;
/// The author every simulated page has.
const AUTHOR_ID: &str = "557058:5e5a7d4b-sim-user";

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
        }
    }
}

/// A page as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPage {
    /// Numeric id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Parent page id; `None` at the space root.
    pub parent_id: Option<String>,
    /// `version.number`.
    pub version: u64,
    /// Storage-format body.
    pub body: String,
    /// `version.createdAt`, source clock.
    pub modified_at: DateTime<Utc>,
}

/// A running simulator's shared state; clones share it.
#[derive(Clone)]
pub struct ConfluenceSim {
    state: Arc<Mutex<SimState>>,
}

struct Page {
    title: String,
    parent: Option<u64>,
    version: u64,
    body: String,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

struct SimState {
    space_key: String,
    space_id: String,
    tz: Tz,
    skew: chrono::Duration,
    space_created: DateTime<Utc>,
    pages: BTreeMap<u64, Page>,
    next_id: u64,
    traffic: Traffic,
}

impl SimState {
    /// The source clock, at the millisecond precision Confluence stores and serves.
    fn now(&self) -> DateTime<Utc> {
        (Utc::now() + self.skew).trunc_subsecs(3)
    }

    /// Ancestors from the root down to the direct parent (bounded against cycles).
    fn ancestors(&self, id: u64) -> Vec<u64> {
        let mut chain = Vec::new();
        let mut cur = self.pages.get(&id).and_then(|p| p.parent);
        while let Some(pid) = cur {
            if chain.len() > self.pages.len() {
                break;
            }
            chain.push(pid);
            cur = self.pages.get(&pid).and_then(|p| p.parent);
        }
        chain.reverse();
        chain
    }
}

/// splitmix64: a tiny deterministic generator, enough for a reproducible tree.
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

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

impl ConfluenceSim {
    /// A simulator with `cfg.pages` seeded pages: titles `Page 0001`..., a
    /// deterministic tree (about a third at the root), modified over the last 30 days.
    pub fn new(cfg: SimConfig) -> Self {
        let now = (Utc::now() + cfg.clock_skew).trunc_subsecs(3);
        let start = now - chrono::Duration::days(30);
        let span_secs: i64 = 29 * 24 * 3600;
        let n = i64::try_from(cfg.pages.max(1)).unwrap_or(i64::MAX);
        let mut rng = cfg.seed;
        let mut pages = BTreeMap::new();
        for i in 0..cfg.pages {
            let id = FIRST_ID + i as u64;
            let parent = if i == 0 || splitmix(&mut rng).is_multiple_of(3) {
                None
            } else {
                Some(FIRST_ID + splitmix(&mut rng) % i as u64)
            };
            let offset = i64::try_from(i).unwrap_or(0).saturating_mul(span_secs) / n;
            let modified = start + chrono::Duration::seconds(offset);
            pages.insert(
                id,
                Page {
                    title: format!("Page {:04}", i + 1),
                    parent,
                    version: 1 + splitmix(&mut rng) % 3,
                    body: format!(
                        "<p>Seeded page {} of space {}.</p><p>Token {:016x}.</p>",
                        i + 1,
                        cfg.space_key,
                        splitmix(&mut rng)
                    ),
                    created_at: modified,
                    modified_at: modified,
                },
            );
        }
        let state = SimState {
            space_key: cfg.space_key,
            space_id: cfg.space_id,
            tz: cfg.user_timezone,
            skew: cfg.clock_skew,
            space_created: start,
            next_id: FIRST_ID + cfg.pages as u64,
            pages,
            traffic: Traffic::new(cfg.rate_limit_per_sec),
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum app: API routes (counted, rate limited, `Date`-stamped) and `/_sim/` controls.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/wiki/api/v2/spaces", get(api_spaces))
            .route("/wiki/api/v2/spaces/{id}/pages", get(api_space_pages))
            .route("/wiki/api/v2/pages", get(api_pages))
            .route("/wiki/rest/api/content/search", get(api_search))
            .route_layer(middleware::from_fn_with_state(self.clone(), api_gate));
        let control = Router::new()
            .route("/_sim/pages", post(ctl_create).get(ctl_list))
            .route("/_sim/pages/{id}", put(ctl_update).delete(ctl_delete))
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
                tracing::error!("confluence simulator stopped: {e}");
            }
        });
        Ok((bound, handle))
    }

    /// Creates a page (version 1, stamped now by the source clock); returns its id.
    /// An unknown `parent` puts the page at the space root.
    pub fn create_page(&self, title: &str, parent: Option<&str>, body: &str) -> String {
        let mut st = self.lock();
        let parent = parent
            .and_then(|p| p.parse::<u64>().ok())
            .filter(|p| st.pages.contains_key(p));
        let id = st.next_id;
        st.next_id += 1;
        let now = st.now();
        st.pages.insert(
            id,
            Page {
                title: title.to_owned(),
                parent,
                version: 1,
                body: body.to_owned(),
                created_at: now,
                modified_at: now,
            },
        );
        id.to_string()
    }

    /// Edits a page: bumps `version.number`, stamps `version.createdAt` with the
    /// source clock. `false` if there is no such page.
    pub fn update_page(&self, id: &str, title: Option<&str>, body: Option<&str>) -> bool {
        let mut st = self.lock();
        let now = st.now();
        let Some(page) = id.parse::<u64>().ok().and_then(|id| st.pages.get_mut(&id)) else {
            return false;
        };
        if let Some(t) = title {
            page.title = t.to_owned();
        }
        if let Some(b) = body {
            page.body = b.to_owned();
        }
        page.version += 1;
        page.modified_at = now;
        true
    }

    /// Purges a page from every endpoint; its children move up to its parent.
    pub fn delete_page(&self, id: &str) -> bool {
        let mut st = self.lock();
        let Some(id) = id.parse::<u64>().ok() else {
            return false;
        };
        let Some(gone) = st.pages.remove(&id) else {
            return false;
        };
        for page in st.pages.values_mut() {
            if page.parent == Some(id) {
                page.parent = gone.parent;
            }
        }
        true
    }

    /// Every page, sorted by id.
    pub fn pages(&self) -> Vec<SimPage> {
        let st = self.lock();
        st.pages.iter().map(|(id, p)| sim_page(*id, p)).collect()
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

    /// The next `n` API requests answer `status` (429 and 503 with `Retry-After: 1`).
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

    /// Counts one API request and decides whether it is served.
    fn admit(&self, label: &str) -> Admission {
        self.lock().traffic.admit(label)
    }
}

fn sim_page(id: u64, p: &Page) -> SimPage {
    SimPage {
        id: id.to_string(),
        title: p.title.clone(),
        parent_id: p.parent.map(|p| p.to_string()),
        version: p.version,
        body: p.body.clone(),
        modified_at: p.modified_at,
    }
}

fn status_code_name(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        429 => "TOO_MANY_REQUESTS",
        500 => "INTERNAL_SERVER_ERROR",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        _ => "ERROR",
    }
}

/// An error in Atlassian's form: v1 `{"statusCode","data","message"}`, v2 `{"errors":[...]}`.
fn error_response(status: u16, v1: bool, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if v1 {
        json!({
            "statusCode": status,
            "data": {
                "authorized": status != 401 && status != 403,
                "valid": status != 400,
                "allowedInReadOnlyMode": true,
                "errors": [],
                "successful": false
            },
            "message": message,
            "reason": code.canonical_reason().unwrap_or("Error"),
        })
    } else {
        json!({
            "errors": [{
                "status": status,
                "code": status_code_name(status),
                "title": message,
                "detail": null
            }]
        })
    };
    (code, Json(body)).into_response()
}

/// Counts, fails, rate-limits and `Date`-stamps every API request.
async fn api_gate(State(sim): State<ConfluenceSim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let label = format!(
        "{} {}",
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map_or(path.as_str(), |m| m.as_str())
    );
    let v1 = path.starts_with("/wiki/rest/");
    let latency = sim.lock().traffic.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut resp = match sim.admit(&label) {
        Admission::Serve(limits) => {
            let mut resp = next.run(req).await;
            if let Some((limit, remaining)) = limits {
                let h = resp.headers_mut();
                h.insert("x-ratelimit-limit", HeaderValue::from(limit));
                h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
                // Atlassian flags the last fifth of the budget.
                if remaining * 5 < u64::from(limit) {
                    h.insert("x-ratelimit-nearlimit", HeaderValue::from_static("true"));
                }
            }
            resp
        }
        Admission::Fail(status) => {
            let mut resp = error_response(status, v1, &format!("Simulated failure (HTTP {status})"));
            if status == 429 || status == 503 {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            resp
        }
        Admission::Corrupt => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"results":[{"id":"1","title":"trunc"#,
        )
            .into_response(),
        Admission::Limited { per_sec, retry_after } => {
            let now = sim.now();
            let mut resp = error_response(429, v1, "Rate limit exceeded");
            let h = resp.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            h.insert("x-ratelimit-limit", HeaderValue::from(per_sec));
            h.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
            let reset = now + chrono::Duration::seconds(i64::try_from(retry_after).unwrap_or(1));
            if let Ok(v) = HeaderValue::from_str(&reset.format("%Y-%m-%dT%H:%MZ").to_string()) {
                h.insert("x-ratelimit-reset", v);
            }
            h.insert("ratelimit-reason", HeaderValue::from_static("confluence-burst-based"));
            resp
        }
    };
    // Hyper adds a Date from the real clock only when none is set, so ours wins.
    if let Ok(v) = HeaderValue::from_str(&http_date(sim.now())) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

async fn not_found() -> Response {
    error_response(404, false, "Not Found")
}

/// Query pairs in order; repeated keys kept.
fn query_pairs(q: Option<String>) -> Vec<(String, String)> {
    q.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// All values of `key`, comma lists split (`id=1,2&id=3`).
fn list_param(pairs: &[(String, String)], key: &str) -> Option<Vec<String>> {
    let values: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    (pairs.iter().any(|(k, _)| k == key)).then_some(values)
}

fn parse_limit(pairs: &[(String, String)], default: usize, max: usize) -> Result<usize, String> {
    match param(pairs, "limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map(|n| n.clamp(1, max))
            .map_err(|_| format!("Invalid limit: {v:?}")),
    }
}

fn encode_cursor(last: u64) -> String {
    hex::encode(format!("sim-cursor:{last}"))
}

fn decode_cursor(c: &str) -> Option<u64> {
    let bytes = hex::decode(c).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("sim-cursor:")?.parse().ok()
}

fn parse_cursor(pairs: &[(String, String)]) -> Result<u64, String> {
    match param(pairs, "cursor") {
        None => Ok(0),
        Some(c) => decode_cursor(c).ok_or_else(|| "Invalid cursor".to_owned()),
    }
}

/// `http://{Host}/wiki`, what `_links.base` says.
fn base_link(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/wiki")
}

/// `path?query` with `cursor` replaced.
fn next_link(path: &str, pairs: &[(String, String)], cursor: &str) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "cursor") {
        ser.append_pair(k, v);
    }
    ser.append_pair("cursor", cursor);
    format!("{path}?{}", ser.finish())
}

fn v2_page_json(st: &SimState, id: u64, p: &Page, with_body: bool) -> Value {
    let mut v = json!({
        "id": id.to_string(),
        "status": "current",
        "title": p.title,
        "spaceId": st.space_id,
        "parentId": p.parent.map(|x| x.to_string()),
        "parentType": p.parent.map(|_| "page"),
        "position": null,
        "authorId": AUTHOR_ID,
        "ownerId": AUTHOR_ID,
        "lastOwnerId": null,
        "createdAt": ts(p.created_at),
        "version": {
            "createdAt": ts(p.modified_at),
            "message": "",
            "number": p.version,
            "minorEdit": false,
            "authorId": AUTHOR_ID
        },
        "body": {},
        "_links": {
            "webui": format!("/spaces/{}/pages/{id}/{}", st.space_key, p.title.replace(' ', "+")),
            "editui": format!("/pages/resumedraft.action?draftId={id}"),
            "tinyui": format!("/x/{}", hex::encode(id.to_le_bytes()).trim_end_matches('0'))
        }
    });
    if with_body {
        v["body"] = json!({"storage": {"value": p.body, "representation": "storage"}});
    }
    v
}

/// A v2 page of results with `_links.next` and the `Link` header.
fn v2_results(
    st: &SimState,
    headers: &HeaderMap,
    path: &str,
    pairs: &[(String, String)],
    ids: impl Iterator<Item = u64>,
) -> Response {
    let limit = match parse_limit(pairs, V2_DEFAULT_LIMIT, V2_MAX_LIMIT) {
        Ok(l) => l,
        Err(e) => return error_response(400, false, &e),
    };
    let after = match parse_cursor(pairs) {
        Ok(a) => a,
        Err(e) => return error_response(400, false, &e),
    };
    let with_body = match param(pairs, "body-format") {
        None => false,
        Some("storage") => true,
        Some(other) => {
            return error_response(400, false, &format!("Unsupported body-format {other:?}"));
        }
    };
    if let Some(statuses) = list_param(pairs, "status")
        && !statuses.iter().any(|s| s == "current")
    {
        // Every simulated page is current.
        return v2_json(headers, Vec::new(), None);
    }
    let mut chosen: Vec<u64> = ids.filter(|id| *id > after).take(limit + 1).collect();
    let more = chosen.len() > limit;
    chosen.truncate(limit);
    let results = chosen
        .iter()
        .filter_map(|id| st.pages.get(id).map(|p| v2_page_json(st, *id, p, with_body)))
        .collect();
    let next = match (more, chosen.last()) {
        (true, Some(last)) => Some(next_link(path, pairs, &encode_cursor(*last))),
        _ => None,
    };
    v2_json(headers, results, next)
}

fn v2_json(headers: &HeaderMap, results: Vec<Value>, next: Option<String>) -> Response {
    let base = base_link(headers);
    let mut links = json!({"base": base});
    if let Some(n) = &next {
        links["next"] = json!(n);
    }
    let mut resp = Json(json!({"results": results, "_links": links})).into_response();
    if let Some(n) = next
        && let Ok(v) = HeaderValue::from_str(&format!("<{n}>; rel=\"next\", <{base}>; rel=\"base\""))
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

async fn api_spaces(State(sim): State<ConfluenceSim>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q);
    let st = sim.lock();
    let key_ok = list_param(&pairs, "keys").is_none_or(|keys| keys.contains(&st.space_key));
    let id_ok = list_param(&pairs, "ids").is_none_or(|ids| ids.contains(&st.space_id));
    let results = if key_ok && id_ok {
        vec![json!({
            "id": st.space_id,
            "key": st.space_key,
            "name": format!("{} space", st.space_key),
            "type": "global",
            "status": "current",
            "authorId": AUTHOR_ID,
            "createdAt": ts(st.space_created),
            "homepageId": st.pages.keys().next().map(|id| id.to_string()),
            "description": null,
            "icon": null,
            "_links": {"webui": format!("/spaces/{}", st.space_key)}
        })]
    } else {
        Vec::new()
    };
    v2_json(&headers, results, None)
}

async fn api_space_pages(
    State(sim): State<ConfluenceSim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(q);
    let st = sim.lock();
    if id != st.space_id {
        return error_response(404, false, &format!("Space {id} not found"));
    }
    let path = format!("/wiki/api/v2/spaces/{id}/pages");
    let ids: Vec<u64> = st.pages.keys().copied().collect();
    v2_results(&st, &headers, &path, &pairs, ids.into_iter())
}

async fn api_pages(State(sim): State<ConfluenceSim>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q);
    let st = sim.lock();
    let wanted = match list_param(&pairs, "id") {
        None => None,
        Some(ids) if ids.len() > V2_MAX_LIMIT => {
            return error_response(400, false, &format!("At most {V2_MAX_LIMIT} ids may be given"));
        }
        Some(ids) => match ids.iter().map(|i| i.parse::<u64>()).collect::<Result<Vec<_>, _>>() {
            Ok(ids) => Some(ids),
            Err(_) => return error_response(400, false, "Invalid id: page ids are numeric"),
        },
    };
    if let Some(spaces) = list_param(&pairs, "space-id")
        && !spaces.contains(&st.space_id)
    {
        return v2_json(&headers, Vec::new(), None);
    }
    let ids: Vec<u64> = match wanted {
        Some(mut ids) => {
            ids.sort_unstable();
            ids.dedup();
            ids.retain(|id| st.pages.contains_key(id));
            ids
        }
        None => st.pages.keys().copied().collect(),
    };
    v2_results(&st, &headers, "/wiki/api/v2/pages", &pairs, ids.into_iter())
}

/// One parsed CQL clause.
enum Clause {
    Space(String),
    Type(String),
    LastModified(Cmp, DateTime<Utc>),
}

#[derive(Clone, Copy)]
enum Cmp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn holds(self, a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(String),
}

fn tokenize(cql: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = cql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".to_owned()),
                    Some('\\') => s.extend(chars.next()),
                    Some(q) if q == c => break,
                    Some(ch) => s.push(ch),
                }
            }
            out.push(Tok::Str(s));
        } else if matches!(c, '=' | '>' | '<' | '!') {
            chars.next();
            let mut op = c.to_string();
            if chars.peek() == Some(&'=') {
                chars.next();
                op.push('=');
            }
            out.push(Tok::Op(op));
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '~' {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_alphanumeric() || matches!(ch, '_' | '.' | '~' | '-') {
                    w.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(w));
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// A CQL date literal read in `tz`; date-only literals mean midnight.
fn parse_cql_date(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let naive = ["%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            ["%Y/%m/%d", "%Y-%m-%d"]
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    // In a DST gap the wall time does not exist; read it with the offset before the gap.
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())
        .map(|t| t.with_timezone(&Utc))
}

fn parse_cql(cql: &str, tz: Tz) -> Result<Vec<Clause>, String> {
    let toks = tokenize(cql)?;
    let mut clauses = Vec::new();
    let mut i = 0;
    loop {
        let (Some(Tok::Word(field)), Some(Tok::Op(op)), Some(value)) = (toks.get(i), toks.get(i + 1), toks.get(i + 2))
        else {
            return Err(format!("expected <field> <operator> <value> at token {}", i + 1));
        };
        let value = match value {
            Tok::Word(v) | Tok::Str(v) => v.clone(),
            Tok::Op(o) => return Err(format!("unexpected operator {o:?}")),
        };
        let clause = match (field.to_ascii_lowercase().as_str(), op.as_str()) {
            ("space", "=") => Clause::Space(value),
            ("type", "=") => Clause::Type(value),
            ("lastmodified", op) => {
                let cmp = match op {
                    "=" => Cmp::Eq,
                    ">" => Cmp::Gt,
                    ">=" => Cmp::Ge,
                    "<" => Cmp::Lt,
                    "<=" => Cmp::Le,
                    other => {
                        return Err(format!("operator {other:?} not supported for lastmodified"));
                    }
                };
                let at = parse_cql_date(&value, tz).ok_or_else(|| format!("invalid date {value:?}"))?;
                Clause::LastModified(cmp, at)
            }
            (f, o) => return Err(format!("unsupported clause {f} {o}")),
        };
        clauses.push(clause);
        i += 3;
        match toks.get(i) {
            None => return Ok(clauses),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            Some(t) => return Err(format!("expected AND, found {t:?}")),
        }
    }
}

fn matches(st: &SimState, clauses: &[Clause], p: &Page) -> bool {
    // CQL dates have minute precision: the page's time is truncated to its minute.
    let minute = p
        .modified_at
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(p.modified_at);
    clauses.iter().all(|c| match c {
        Clause::Space(k) => *k == st.space_key,
        Clause::Type(t) => t == "page",
        Clause::LastModified(cmp, at) => cmp.holds(minute, *at),
    })
}

async fn api_search(State(sim): State<ConfluenceSim>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q);
    let st = sim.lock();
    let Some(cql) = param(&pairs, "cql") else {
        return error_response(400, true, "The CQL query parameter is required");
    };
    let clauses = match parse_cql(cql, st.tz) {
        Ok(c) => c,
        Err(e) => {
            return error_response(
                400,
                true,
                &format!(
                    "com.atlassian.confluence.api.service.exceptions.BadRequestException: Could not parse cql : {cql} ({e})"
                ),
            );
        }
    };
    let limit = match parse_limit(&pairs, V1_DEFAULT_LIMIT, V1_MAX_LIMIT) {
        Ok(l) => l,
        Err(e) => return error_response(400, true, &e),
    };
    let after = match parse_cursor(&pairs) {
        Ok(a) => a,
        Err(e) => return error_response(400, true, &e),
    };
    let expand: Vec<&str> = param(&pairs, "expand")
        .map(|e| e.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let hits: Vec<u64> = st
        .pages
        .iter()
        .filter(|(_, p)| matches(&st, &clauses, p))
        .map(|(id, _)| *id)
        .collect();
    let start = hits.iter().filter(|id| **id <= after).count();
    let mut chosen: Vec<u64> = hits.iter().copied().filter(|id| *id > after).take(limit + 1).collect();
    let more = chosen.len() > limit;
    chosen.truncate(limit);
    let results: Vec<Value> = chosen
        .iter()
        .filter_map(|id| st.pages.get(id).map(|p| v1_content(&st, *id, p, &expand)))
        .collect();
    let base = base_link(&headers);
    let mut links = json!({
        "base": base,
        "context": "/wiki",
        "self": format!("{base}/rest/api/content/search"),
    });
    if more && let Some(last) = chosen.last() {
        links["next"] = json!(next_link("/rest/api/content/search", &pairs, &encode_cursor(*last)));
    }
    Json(json!({
        "results": results,
        "start": start,
        "limit": limit,
        "size": chosen.len(),
        "_links": links,
    }))
    .into_response()
}

fn v1_content(st: &SimState, id: u64, p: &Page, expand: &[&str]) -> Value {
    let mut v = json!({
        "id": id.to_string(),
        "type": "page",
        "status": "current",
        "title": p.title,
        "_links": {
            "webui": format!("/spaces/{}/pages/{id}/{}", st.space_key, p.title.replace(' ', "+")),
            "self": format!("/rest/api/content/{id}"),
        },
        "_expandable": {"space": format!("/rest/api/space/{}", st.space_key)},
    });
    if expand.contains(&"version") {
        v["version"] = json!({
            "by": {"type": "known", "accountId": AUTHOR_ID},
            "when": ts(p.modified_at),
            "message": "",
            "number": p.version,
            "minorEdit": false,
        });
    }
    if expand.contains(&"ancestors") {
        let ancestors: Vec<Value> = st
            .ancestors(id)
            .into_iter()
            .filter_map(|a| {
                st.pages
                    .get(&a)
                    .map(|ap| json!({"id": a.to_string(), "type": "page", "status": "current", "title": ap.title}))
            })
            .collect();
        v["ancestors"] = json!(ancestors);
    }
    v
}

#[derive(Deserialize)]
struct CreateBody {
    title: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct UpdateBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

async fn ctl_create(State(sim): State<ConfluenceSim>, Json(b): Json<CreateBody>) -> Response {
    let id = sim.create_page(&b.title, b.parent_id.as_deref(), &b.body);
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn ctl_list(State(sim): State<ConfluenceSim>) -> Json<Vec<SimPage>> {
    Json(sim.pages())
}

async fn ctl_update(State(sim): State<ConfluenceSim>, Path(id): Path<String>, Json(b): Json<UpdateBody>) -> Response {
    if sim.update_page(&id, b.title.as_deref(), b.body.as_deref()) {
        Json(json!({"id": id})).into_response()
    } else {
        error_response(404, false, &format!("Page {id} not found"))
    }
}

async fn ctl_delete(State(sim): State<ConfluenceSim>, Path(id): Path<String>) -> Response {
    if sim.delete_page(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(404, false, &format!("Page {id} not found"))
    }
}

async fn ctl_stats(State(sim): State<ConfluenceSim>) -> Json<Value> {
    Json(json!({"total": sim.total_calls(), "by_endpoint": sim.calls()}))
}

async fn ctl_reset(State(sim): State<ConfluenceSim>) -> StatusCode {
    sim.reset_calls();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(cfg: SimConfig) -> (ConfluenceSim, String) {
        let sim = ConfluenceSim::new(cfg);
        let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
        (sim, format!("http://{addr}"))
    }

    async fn search(base: &str, cql: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{base}/wiki/rest/api/content/search"))
            .query(&[("cql", cql), ("expand", "version,ancestors")])
            .send()
            .await
            .expect("send")
    }

    /// CQL the simulator cannot parse is a 400 with Atlassian's v1 error body.
    #[tokio::test]
    async fn malformed_cql_is_400_with_v1_body() {
        let (sim, base) = start(SimConfig {
            pages: 2,
            ..SimConfig::default()
        })
        .await;
        let resp = search(&base, "space = ENG and title ~ (\"x\"").await;
        assert_eq!(resp.status(), 400);
        assert!(resp.headers().contains_key(header::DATE));
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["statusCode"], 400);
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("Could not parse cql")),
            "{body}"
        );
        assert_eq!(sim.total_calls(), 1, "an answered 400 is still an API call");
    }

    /// Literals are read in the user's zone and compared at minute precision: a page
    /// edited in minute M matches `>= M` and not `> M`; the Date header is the skewed clock.
    #[tokio::test]
    async fn cql_minute_precision_in_user_zone() {
        let tz = chrono_tz::Asia::Kolkata; // +05:30, so a wrong zone cannot pass by accident
        let skew = chrono::Duration::hours(-2);
        let (sim, base) = start(SimConfig {
            pages: 5,
            user_timezone: tz,
            clock_skew: skew,
            ..SimConfig::default()
        })
        .await;
        let id = sim.pages()[2].id.clone();
        assert!(sim.update_page(&id, None, Some("<p>x</p>")));
        let page = sim.pages()[2].clone();
        let at = page.modified_at;
        let minute = at.with_timezone(&tz).format("%Y/%m/%d %H:%M").to_string();
        let ids = |v: &Value| -> Vec<String> {
            v["results"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let resp = search(
            &base,
            &format!("space = \"ENG\" and type = page and lastmodified >= \"{minute}\""),
        )
        .await;
        let date = resp
            .headers()
            .get(header::DATE)
            .and_then(|d| d.to_str().ok())
            .map(str::to_owned)
            .expect("date");
        let served = DateTime::parse_from_rfc2822(&date)
            .expect("http date")
            .with_timezone(&Utc);
        assert!(
            (served - (Utc::now() + skew)).num_seconds().abs() <= 2,
            "Date {served} is not the source clock"
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(ids(&body), vec![id.clone()]);
        assert_eq!(body["results"][0]["version"]["number"], page.version);
        let body: Value = search(
            &base,
            &format!(
                "space = ENG AND type = page AND lastModified > \"{}\"",
                minute.replace('/', "-")
            ),
        )
        .await
        .json()
        .await
        .expect("json");
        assert!(ids(&body).is_empty(), "{body}");
        let body: Value = search(&base, &format!("space = \"OTHER\" and lastmodified >= \"{minute}\""))
            .await
            .json()
            .await
            .expect("json");
        assert!(ids(&body).is_empty());
    }

    /// An empty token bucket answers 429 with Retry-After, the X-RateLimit headers
    /// and a v2 error body; fail_next injects statuses; both are counted.
    #[tokio::test]
    async fn rate_limit_and_injected_failures() {
        let (sim, base) = start(SimConfig {
            rate_limit_per_sec: Some(2),
            ..SimConfig::default()
        })
        .await;
        let http = reqwest::Client::new();
        let url = format!("{base}/wiki/api/v2/spaces?keys=ENG");
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let resp = http.get(&url).send().await.expect("send");
            statuses.push(resp.status().as_u16());
            last = Some(resp);
        }
        assert_eq!(statuses, vec![200, 200, 429]);
        let resp = last.expect("response");
        let h = resp.headers();
        assert_eq!(h.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(h.get("x-ratelimit-limit").and_then(|v| v.to_str().ok()), Some("2"));
        assert_eq!(h.get("x-ratelimit-remaining").and_then(|v| v.to_str().ok()), Some("0"));
        assert!(h.contains_key("x-ratelimit-reset") && h.contains_key("ratelimit-reason"));
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["errors"][0]["code"], "TOO_MANY_REQUESTS");

        sim.set_rate_limit(None);
        sim.fail_next(2, 503);
        let codes: Vec<u16> = [
            http.get(&url).send().await.expect("send").status().as_u16(),
            http.get(&url).send().await.expect("send").status().as_u16(),
            http.get(&url).send().await.expect("send").status().as_u16(),
        ]
        .to_vec();
        assert_eq!(codes, vec![503, 503, 200]);
        assert_eq!(sim.total_calls(), 6);
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces"), Some(&6));
    }

    /// The /_sim control endpoints create, edit, delete and list pages and report
    /// call counts, without counting themselves; deleting a parent re-parents children.
    #[tokio::test]
    async fn control_endpoints_drive_the_simulator() {
        let (sim, base) = start(SimConfig::default()).await;
        let http = reqwest::Client::new();
        let created: Value = http
            .post(format!("{base}/_sim/pages"))
            .json(&json!({"title": "Root", "body": "<p>r</p>"}))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let root = created["id"].as_str().expect("id").to_owned();
        let child = sim.create_page("Child", Some(&root), "<p>c</p>");
        let resp = http
            .put(format!("{base}/_sim/pages/{child}"))
            .json(&json!({"title": "Child v2"}))
            .send()
            .await
            .expect("send");
        assert!(resp.status().is_success());
        let listed: Vec<SimPage> = http
            .get(format!("{base}/_sim/pages"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[1].title.as_str(), listed[1].version), ("Child v2", 2));
        assert_eq!(listed[1].parent_id.as_deref(), Some(root.as_str()));
        let resp = http
            .delete(format!("{base}/_sim/pages/{root}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204);
        assert_eq!(sim.pages()[0].parent_id, None);
        http.get(format!("{base}/wiki/api/v2/pages?id={child}"))
            .send()
            .await
            .expect("send");
        let stats: Value = http
            .get(format!("{base}/_sim/stats"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(stats["total"], 1);
        assert_eq!(stats["by_endpoint"]["GET /wiki/api/v2/pages"], 1);
        http.post(format!("{base}/_sim/stats/reset"))
            .send()
            .await
            .expect("send");
        assert_eq!(sim.total_calls(), 0);
    }
}
