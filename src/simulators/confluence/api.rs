//! The Confluence REST endpoints themselves: the gate every API request passes
//! (counting, injected failures, rate limit, `Date` stamping), the handlers of
//! the v2 space/page listings and v1 CQL content search, their JSON rendering,
//! opaque cursors and pagination links, and Atlassian's error bodies.
//!
//! Invariants:
//! - Every API response, errors included, carries a `Date` header from the
//!   source clock (real UTC + `clock_skew`).
//! - Listings are ordered by page id; the opaque cursor encodes the last id
//!   returned, so a page created mid-listing with a larger id shows up later in
//!   the same listing. A next page is announced in `_links.next` (and, for v2,
//!   the `Link` header) only when one exists.
//! - Errors have Atlassian's shapes: v1 `{"statusCode","data","message"}` under
//!   `/wiki/rest/`, v2 `{"errors":[...]}` elsewhere.
//! - An empty rate bucket answers 429 with `Retry-After` and `X-RateLimit-*` headers.

use axum::Json;
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::ConfluenceSim;
use super::attachments;
use super::cql::{matches, matches_attachment, parse_cql};
use super::model::{Page, PageStatus, SimState};
use super::{restrictions, space_permissions};
use crate::simulators::http::{self, query_pairs, rfc3339_millis as ts};
use crate::simulators::traffic::Admission;

/// Largest `limit` of the v2 endpoints.
const V2_MAX_LIMIT: usize = 250;
/// Default `limit` of the v2 endpoints.
const V2_DEFAULT_LIMIT: usize = 25;
/// Largest `limit` honoured by v1 content search (Confluence caps it; clients follow `next`).
const V1_MAX_LIMIT: usize = 100;
/// Default `limit` of v1 content search.
const V1_DEFAULT_LIMIT: usize = 25;
/// The author every simulated page has.
pub(super) const AUTHOR_ID: &str = "557058:5e5a7d4b-sim-user";

/// The API routes, behind [`gate`].
pub(super) fn routes(sim: &ConfluenceSim) -> Router<ConfluenceSim> {
    Router::new()
        .route("/wiki/api/v2/spaces", get(api_spaces))
        .route("/wiki/api/v2/spaces/{id}/pages", get(api_space_pages))
        .route("/wiki/api/v2/pages", get(api_pages))
        .route("/wiki/rest/api/content/search", get(api_search))
        .route("/wiki/rest/api/content/{id}", get(api_content))
        .route(
            "/wiki/rest/api/content/{id}/restriction/byOperation/{operation}",
            get(restrictions::api_restriction_by_operation),
        )
        .route(
            "/wiki/api/v2/spaces/{id}/permissions",
            get(space_permissions::api_space_permissions),
        )
        .route(
            "/wiki/rest/api/content/{id}/child/attachment/{attachment_id}/download",
            get(attachments::api_download),
        )
        .route_layer(middleware::from_fn_with_state(sim.clone(), gate))
}

/// An RFC 7231 `Date` header value.
fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
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
pub(super) fn error_response(status: u16, v1: bool, message: &str) -> Response {
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
async fn gate(State(sim): State<ConfluenceSim>, req: Request, next: Next) -> Response {
    let arrived = std::time::Instant::now();
    let label = http::endpoint_label(&req);
    let v1 = req.uri().path().starts_with("/wiki/rest/");
    let (latency, throttle_after) = {
        let st = sim.lock();
        (st.traffic.latency(), st.traffic.throttle_retry_after())
    };
    http::delay(latency).await;
    let mut resp = match sim.admit(&label, arrived) {
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
                let secs = sim.throttle_sent(status, throttle_after);
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
        Admission::Corrupt => http::truncated_json(r#"{"results":[{"id":"1","title":"trunc"#),
        Admission::Limited { per_sec, retry_after } => {
            let now = sim.now();
            let mut resp = error_response(429, v1, "Rate limit exceeded");
            sim.throttle_sent(429, std::time::Duration::from_secs(retry_after));
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

/// Any other path: Atlassian's v2 404.
pub(super) async fn not_found() -> Response {
    error_response(404, false, "Not Found")
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

pub(super) fn encode_cursor(last: u64) -> String {
    hex::encode(format!("sim-cursor:{last}"))
}

pub(super) fn decode_cursor(c: &str) -> Option<u64> {
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
pub(super) fn base_link(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/wiki")
}

/// `path?query` with `cursor` replaced.
pub(super) fn next_link(path: &str, pairs: &[(String, String)], cursor: &str) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "cursor") {
        ser.append_pair(k, v);
    }
    ser.append_pair("cursor", cursor);
    format!("{path}?{}", ser.finish())
}

/// A title as it appears at the end of a page's web UI path (form-encoded: spaces as `+`).
fn title_slug(title: &str) -> String {
    url::form_urlencoded::byte_serialize(title.as_bytes()).collect()
}

fn v2_page_json(st: &SimState, id: u64, p: &Page, with_body: bool) -> Value {
    let mut v = json!({
        "id": id.to_string(),
        "status": p.status.name(),
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
            "webui": format!("/spaces/{}/pages/{id}/{}", st.space_key, title_slug(&p.title)),
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
    // The reference: "By default, current and archived are used"; valid values
    // are current, archived, deleted and trashed (the simulator has no archived
    // or purged-but-listed pages).
    let statuses = list_param(pairs, "status").unwrap_or_else(|| vec!["current".into(), "archived".into()]);
    if let Some(bad) = statuses
        .iter()
        .find(|s| !["current", "archived", "deleted", "trashed"].contains(&s.as_str()))
    {
        return error_response(400, false, &format!("Invalid status: {bad:?}"));
    }
    let wanted = |id: &u64| {
        st.pages
            .get(id)
            .is_some_and(|p| statuses.iter().any(|s| s == p.status.name()))
    };
    let mut chosen: Vec<u64> = ids.filter(|id| *id > after && wanted(id)).take(limit + 1).collect();
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
    let pairs = query_pairs(q.as_deref());
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
            "homepageId": st.current().next().map(|(id, _)| id.to_string()),
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
    let pairs = query_pairs(q.as_deref());
    let st = sim.lock();
    if id != st.space_id {
        return error_response(404, false, &format!("Space {id} not found"));
    }
    let path = format!("/wiki/api/v2/spaces/{id}/pages");
    // From the cursor on, not from the first page: listing a million pages
    // 250 at a time must not walk the whole space for every page of results.
    let from = parse_cursor(&pairs).map_or(0, |after| after.saturating_add(1));
    let ids = st.pages.range(from..).map(|(id, _)| *id);
    v2_results(&st, &headers, &path, &pairs, ids)
}

async fn api_pages(State(sim): State<ConfluenceSim>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
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

async fn api_search(State(sim): State<ConfluenceSim>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
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
    // Search sees current content only (trashed pages are not indexed, nor
    // are the attachments of trashed pages); ids are one sequence for both.
    // Only the ids after the cursor are read, up to one past the limit of
    // each kind (a page costs what it returns, not what the space holds).
    let from = after.saturating_add(1);
    let pages = st
        .pages
        .range(from..)
        .filter(|(id, p)| p.status == super::model::PageStatus::Current && matches(&st, &clauses, **id, p))
        .map(|(id, _)| *id)
        .take(limit + 1);
    let files = st
        .attachments
        .range(from..)
        .filter(|(id, a)| st.attachment_visible(**id) && matches_attachment(&st, &clauses, **id, a))
        .map(|(id, _)| *id)
        .take(limit + 1);
    let mut chosen: Vec<u64> = pages.chain(files).collect();
    chosen.sort_unstable();
    chosen.truncate(limit + 1);
    let more = chosen.len() > limit;
    chosen.truncate(limit);
    // Where this page starts in the whole result: 0 first, then what the
    // previous page's `next` link says (Confluence's links carry `start` too).
    let start: usize = match after {
        0 => 0,
        _ => param(&pairs, "start").and_then(|s| s.parse().ok()).unwrap_or(0),
    };
    let results: Vec<Value> = chosen
        .iter()
        .filter_map(|id| match st.pages.get(id) {
            Some(p) => Some(v1_content(&st, *id, p, &expand)),
            None => st
                .attachments
                .get(id)
                .map(|a| attachments::v1_attachment(&st, *id, a, &expand)),
        })
        .collect();
    let base = base_link(&headers);
    let mut links = json!({
        "base": base,
        "context": "/wiki",
        "self": format!("{base}/rest/api/content/search"),
    });
    if more && let Some(last) = chosen.last() {
        let mut on: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "start").cloned().collect();
        on.push(("start".to_owned(), (start + chosen.len()).to_string()));
        links["next"] = json!(next_link("/rest/api/content/search", &on, &encode_cursor(*last)));
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

/// `GET /wiki/rest/api/content/{id}`, as Confluence Cloud's REST v1
/// reference describes "Get content by ID": a page or an attachment, with
/// `expand` as in search (`version`, `ancestors`, `container`); `status`
/// "filter[s] the results to a set of content based on their status. If set
/// to any, content with any status is returned", and without it only
/// current content is found. Anything else, an unknown id too, is a 404 in
/// the v1 error form. (An attachment counts as trashed when it or its page
/// is.) The `_links` carry `base` and `context`, as a single content's reply does.
async fn api_content(
    State(sim): State<ConfluenceSim>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let st = sim.lock();
    let pairs = query_pairs(q.as_deref());
    let expand: Vec<&str> = param(&pairs, "expand")
        .map(|e| e.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let statuses: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "status")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    let wanted = |status: PageStatus| {
        let name = status.name();
        if statuses.is_empty() {
            status == PageStatus::Current
        } else {
            statuses.iter().any(|s| *s == "any" || *s == name)
        }
    };
    let found = if let Some(n) = attachments::parse_id(&id) {
        st.attachments.get(&n).and_then(|a| {
            let status = if st.attachment_visible(n) {
                PageStatus::Current
            } else {
                PageStatus::Trashed
            };
            wanted(status).then(|| (status, attachments::v1_attachment(&st, n, a, &expand)))
        })
    } else {
        id.parse::<u64>()
            .ok()
            .and_then(|n| st.pages.get(&n).map(|p| (n, p)))
            .filter(|(_, p)| wanted(p.status))
            .map(|(n, p)| (p.status, v1_content(&st, n, p, &expand)))
    };
    let Some((status, mut v)) = found else {
        return error_response(404, true, &format!("No content found with id: ContentId{{id={id}}}"));
    };
    v["status"] = json!(status.name());
    let base = base_link(&headers);
    v["_links"]["base"] = json!(base);
    v["_links"]["context"] = json!("/wiki");
    Json(v).into_response()
}

fn v1_content(st: &SimState, id: u64, p: &Page, expand: &[&str]) -> Value {
    let mut v = json!({
        "id": id.to_string(),
        "type": "page",
        "status": "current",
        "title": p.title,
        "_links": {
            "webui": format!("/spaces/{}/pages/{id}/{}", st.space_key, title_slug(&p.title)),
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
    // Content's `_expandable` names `restrictions` until it is expanded.
    match restrictions::inline_restrictions(&id.to_string(), &st.read_restriction(id), expand) {
        Some(r) => v["restrictions"] = r,
        None => v["_expandable"]["restrictions"] = json!(format!("/rest/api/content/{id}/restriction/byOperation")),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulators::confluence::{SimConfig, start};

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

    /// A GET's status and JSON body.
    async fn get_json(url: String) -> (u16, Value) {
        let resp = reqwest::get(url).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("json"))
    }

    /// Content by id (v1 "Get content by ID"): current content by default,
    /// trashed content only when `status` asks for it (`trashed` or `any`),
    /// an unknown id a 404 in the v1 error form; attachments too.
    #[tokio::test]
    async fn content_by_id_follows_the_status_filter() {
        let (sim, base) = start(SimConfig {
            pages: 30,
            attachments: true,
            ..SimConfig::default()
        })
        .await;
        let attachment = sim.attachments().into_iter().next().expect("an attachment");
        let page = attachment.page_id.clone();
        let get = |path: String| get_json(format!("{base}/{path}"));
        let (code, body) = get(format!(
            "wiki/rest/api/content/{}?expand=version,container",
            attachment.id
        ))
        .await;
        assert_eq!(
            (code, body["type"].as_str(), body["status"].as_str()),
            (200, Some("attachment"), Some("current"))
        );
        assert_eq!(body["container"]["id"].as_str(), Some(page.as_str()), "{body}");
        assert!(body["_links"]["base"].is_string(), "{body}");

        assert!(sim.delete_page(&page));
        for path in [
            format!("wiki/rest/api/content/{page}"),
            format!("wiki/rest/api/content/{}", attachment.id),
        ] {
            let (code, body) = get(path.clone()).await;
            assert_eq!((code, body["statusCode"].as_u64()), (404, Some(404)), "{path}: {body}");
            let (code, body) = get(format!("{path}?status=any")).await;
            assert_eq!(
                (code, body["status"].as_str()),
                (200, Some("trashed")),
                "{path}: {body}"
            );
            let (code, _) = get(format!("{path}?status=current")).await;
            assert_eq!(code, 404, "{path}");
        }
        let (code, body) = get(format!("wiki/rest/api/content/{page}?status=trashed")).await;
        assert_eq!((code, body["id"].as_str()), (200, Some(page.as_str())));
        let (code, _) = get("wiki/rest/api/content/999999".to_owned()).await;
        assert_eq!(code, 404);
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
}
