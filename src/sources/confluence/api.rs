//! Confluence Cloud's REST APIs as this connector speaks them: the [`Client`]
//! (auth, URLs under the site root, pagination links, the space lookup), the v1
//! and v2 wire types, Atlassian error bodies ([`error_detail`]), `Link` headers
//! ([`link_next`]) and [`classify`]: which answers are retried.
//!
//! Invariants:
//! - Requests only ever go to the configured `base_url`: pagination links are
//!   taken as paths and joined to it, and an absolute link to another origin is
//!   refused, so a response cannot redirect our credentials elsewhere.
//! - A pagination link that repeats the request is an error, not a loop.
//! - Every HTTP attempt, retries included, is counted in `api_calls` (by
//!   [`client::RetryingClient`]); 429 and 5xx are retried, other non-2xx
//!   statuses are `Error::Permanent` with Atlassian's reason.
//! - Zoneless timestamps are read in the configured zone, never assumed UTC.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use reqwest::header::{ACCEPT, HeaderMap, LINK};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use url::Url;

use super::settings::ConfluenceSettings;
use crate::sources::client::{self, Body, RetryingClient, Verdict};
use crate::sources::clock;
use crate::sources::{ApiCalls, DocMeta, Error};
use crate::types::DocumentId;

/// Results per v1 CQL search page; Confluence may lower it, we follow `next` either way.
pub(super) const SEARCH_LIMIT: u32 = 100;

/// Everything a request needs; shared by the source and its feeds.
pub(super) struct Client {
    pub(super) settings: ConfluenceSettings,
    /// Sends, counts and retries every request; knows the source id.
    pub(super) http: RetryingClient,
    pub(super) tz: Tz,
    pub(super) auth: Option<(String, String)>,
    /// `base_url` with a trailing '/'.
    pub(super) base: Url,
}

/// A decoded successful response with the headers the connector uses.
pub(super) struct Reply<T> {
    pub(super) body: T,
    /// The `Date` header: the source's clock when it answered.
    pub(super) date: Option<DateTime<Utc>>,
    /// `Link: <...>; rel="next"`, when present.
    pub(super) link_next: Option<String>,
}

impl Client {
    /// A timestamp from a response: zoned ones as they are, zoneless ones read in
    /// the configured zone (the API sends `Z`, but a proxy or an older server may not).
    pub(super) fn timestamp(&self, text: Option<&str>, url: &Url) -> Result<Option<DateTime<Utc>>, Error> {
        text.map(|t| {
            clock::parse_in_zone(t, self.tz).map_err(|e| {
                self.http
                    .permanent(format_args!("GET {}: timestamp {t:?}: {e}", url.path()))
            })
        })
        .transpose()
    }

    /// The site's web root (`https://site/wiki`) that `webui` links are under:
    /// the response's `_links.base`, else our own site's `/wiki`.
    pub(super) fn web_root(&self, base: Option<&str>) -> String {
        base.map_or_else(|| format!("{}wiki", self.base), str::to_owned)
    }

    /// `path` (without leading '/') under the site root.
    pub(super) fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(path)
            .map_err(|e| self.http.permanent(format_args!("cannot build URL for {path}: {e}")))
    }

    /// Resolves a pagination link that is a path on our site (v2 `_links.next`,
    /// `Link` header). Absolute URLs are accepted only on our own origin. A
    /// host-absolute path (`/wiki/...`) is put under `base_url`'s own path
    /// when it is not already: behind a proxy at `/confluence`, Confluence still
    /// answers `/wiki/...`.
    pub(super) fn resolve_site_path(&self, link: &str, current: &Url) -> Result<Url, Error> {
        let prefix = self.base.path().trim_end_matches('/');
        let link = match link.strip_prefix('/') {
            Some(rest) if !prefix.is_empty() && !link.starts_with(&format!("{prefix}/")) => {
                format!("{prefix}/{rest}")
            }
            _ => link.to_owned(),
        };
        let link = link.as_str();
        let url = self.base.join(link).map_err(|e| {
            self.http
                .permanent(format_args!("GET {}: bad next link {link:?}: {e}", current.path()))
        })?;
        if url.origin() != self.base.origin() {
            return Err(self.http.permanent(format_args!(
                "GET {}: next link {link:?} leaves {}",
                current.path(),
                self.base
            )));
        }
        if &url == current {
            return Err(self.http.permanent(format_args!(
                "GET {}: pagination did not advance (next link repeats the request)",
                current.path()
            )));
        }
        Ok(url)
    }

    /// The next page of a v2 listing: its `_links.next`, else the `Link`
    /// header's, resolved on our site (`None` on the last page).
    pub(super) fn v2_next(
        &self,
        links: Option<V2Links>,
        link_next: Option<String>,
        url: &Url,
    ) -> Result<Option<Url>, Error> {
        links
            .and_then(|l| l.next)
            .or(link_next)
            .map(|next| self.resolve_site_path(&next, url))
            .transpose()
    }

    /// GETs `url` with auth, retrying 429/5xx/network failures, and decodes the JSON body.
    /// `calls` is incremented for every attempt.
    pub(super) async fn get_json<T: DeserializeOwned>(&self, url: &Url, calls: &ApiCalls) -> Result<Reply<T>, Error> {
        self.get_json_as(url, calls, classify)
            .await?
            .ok_or_else(|| self.http.permanent(format_args!("GET {}: HTTP 404", url.path())))
    }

    /// [`Client::get_json`] where a 404 is an answer (the content is gone): `None`.
    pub(super) async fn get_json_unless_gone<T: DeserializeOwned>(
        &self,
        url: &Url,
        calls: &ApiCalls,
    ) -> Result<Option<Reply<T>>, Error> {
        let accept_gone = |reply: &client::Reply| match reply.status.as_u16() {
            404 => Verdict::Accept,
            _ => classify(reply),
        };
        self.get_json_as(url, calls, accept_gone).await
    }

    /// A GET of JSON whose replies `verdict` judges; `None` for an accepted 404.
    async fn get_json_as<T: DeserializeOwned>(
        &self,
        url: &Url,
        calls: &ApiCalls,
        verdict: impl Fn(&client::Reply) -> Verdict,
    ) -> Result<Option<Reply<T>>, Error> {
        let label = format!("GET {}", url.path());
        let build = move || async move {
            let req = self.http.http().get(url.clone()).header(ACCEPT, "application/json");
            Ok(match &self.auth {
                Some((user, token)) => req.basic_auth(user, Some(token)),
                None => req,
            })
        };
        let reply = self.http.send(&label, build, Body::Always, verdict, calls).await?;
        if reply.status.as_u16() == 404 {
            return Ok(None);
        }
        Ok(Some(Reply {
            body: self.http.decode_json(&label, &reply.body)?,
            date: reply.date,
            link_next: link_next(&reply.headers),
        }))
    }

    /// Downloads attachment `attachment` of page `page` through the v1 download
    /// endpoint, which redirects to the file (followed; one call): at most
    /// `cap` bytes (`truncated` beyond), or `None` if Confluence no longer has
    /// it there (404).
    pub(super) async fn download_attachment(
        &self,
        page: &str,
        attachment: &str,
        cap: u64,
        calls: &ApiCalls,
    ) -> Result<Option<client::Reply>, Error> {
        let url = self.url(&format!(
            "wiki/rest/api/content/{page}/child/attachment/{attachment}/download"
        ))?;
        let label = format!("GET {}", url.path());
        let build = || async {
            let req = self.http.http().get(url.clone());
            Ok(match &self.auth {
                Some((user, token)) => req.basic_auth(user, Some(token)),
                None => req,
            })
        };
        // A 404 is an answer here (the attachment or its page went), not a failure.
        let accept_gone = |reply: &client::Reply| match reply.status.as_u16() {
            404 => Verdict::Accept,
            _ => classify(reply),
        };
        let reply = self
            .http
            .send(&label, build, Body::OnSuccessUpTo(cap), accept_gone, calls)
            .await?;
        Ok((reply.status.as_u16() != 404).then_some(reply))
    }

    /// Finds the numeric id of the configured space (call 1). Returns the id and the `Date`.
    pub(super) async fn lookup_space(&self, calls: &ApiCalls) -> Result<(String, Option<DateTime<Utc>>), Error> {
        let mut url = self.url("wiki/api/v2/spaces")?;
        url.query_pairs_mut().append_pair("keys", &self.settings.space_key);
        let reply: Reply<V2List<V2Space>> = self.get_json(&url, calls).await?;
        let space = reply
            .body
            .results
            .into_iter()
            .find(|s| s.key == self.settings.space_key)
            .ok_or_else(|| {
                self.http.permanent(format_args!(
                    "space key {:?} not found (or not visible to these credentials)",
                    self.settings.space_key
                ))
            })?;
        if !is_numeric_id(&space.id) {
            return Err(self.http.permanent(format_args!(
                "GET {}: space id {:?} is not numeric",
                url.path(),
                space.id
            )));
        }
        Ok((space.id, reply.date))
    }
}

/// Atlassian's answers: 429 and 503 are throttles (Retry-After comes on 429 and
/// some 503s), other 5xx transient; any other non-2xx status is final and its body says why.
fn classify(reply: &client::Reply) -> Verdict {
    if reply.status.is_success() {
        return Verdict::Accept;
    }
    let detail = format!("HTTP {}: {}", reply.status.as_u16(), error_detail(&reply.text()));
    if client::is_transient(reply.status) {
        client::transient_verdict(reply, detail)
    } else {
        Verdict::Refuse { detail }
    }
}

/// Whether `id` names an attachment (`att` and digits, as both REST APIs show them).
pub(super) fn is_attachment_id(id: &str) -> bool {
    id.strip_prefix("att").is_some_and(is_numeric_id)
}

/// Escapes a value for a double-quoted CQL string.
pub(super) fn cql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub(super) fn is_numeric_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The `rel="next"` target of a `Link` header. URLs may contain commas
/// (`id=1,2,3`), so entries are split on `<`, which cannot appear unescaped in a URL.
fn link_next(headers: &HeaderMap) -> Option<String> {
    let text = headers.get(LINK)?.to_str().ok()?;
    text.split('<').skip(1).find_map(|part| {
        let (target, params) = part.split_once('>')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim().trim_end_matches(',').trim(), "rel=\"next\"" | "rel=next"));
        is_next.then(|| target.to_owned())
    })
}

/// A short human reason from an Atlassian error body (v2 `errors[]`, v1 `message`).
fn error_detail(body: &str) -> String {
    #[derive(Deserialize)]
    struct V2Errors {
        errors: Vec<V2Error>,
    }
    #[derive(Deserialize)]
    struct V2Error {
        code: Option<String>,
        title: Option<String>,
        detail: Option<String>,
    }
    #[derive(Deserialize)]
    struct V1Error {
        message: Option<String>,
    }
    if let Ok(v2) = serde_json::from_str::<V2Errors>(body)
        && !v2.errors.is_empty()
    {
        return v2
            .errors
            .iter()
            .map(|e| {
                [e.code.as_deref(), e.title.as_deref(), e.detail.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    if let Ok(V1Error { message: Some(m) }) = serde_json::from_str::<V1Error>(body) {
        return m;
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        "(empty body)".to_owned()
    } else {
        trimmed.chars().take(200).collect()
    }
}

/// Ids arrive as strings in v2/v1 JSON; accept numbers too, in case.
fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        S(String),
        N(u64),
    }
    Ok(match Repr::deserialize(d)? {
        Repr::S(s) => s,
        Repr::N(n) => n.to_string(),
    })
}

fn de_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "de_id")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// A v2 collection page (`results` + `_links`).
#[derive(Deserialize)]
pub(super) struct V2List<T> {
    #[serde(default = "Vec::new")]
    pub(super) results: Vec<T>,
    #[serde(default, rename = "_links")]
    pub(super) links: Option<V2Links>,
}

#[derive(Deserialize)]
pub(super) struct V2Links {
    pub(super) next: Option<String>,
    /// The site's web root (`https://example.atlassian.net/wiki`), what `webui` links are under.
    #[serde(default)]
    pub(super) base: Option<String>,
}

/// A v2 page's own `_links`.
#[derive(Deserialize)]
pub(super) struct V2PageLinks {
    /// The page in the web UI, under the collection's `_links.base` (`/spaces/KEY/pages/123/Title`).
    pub(super) webui: Option<String>,
}

#[derive(Deserialize)]
struct V2Space {
    #[serde(deserialize_with = "de_id")]
    id: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct V2Page {
    #[serde(deserialize_with = "de_id")]
    pub(super) id: String,
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) title: String,
    #[serde(default, deserialize_with = "de_opt_id")]
    pub(super) parent_id: Option<String>,
    pub(super) version: Option<V2Version>,
    pub(super) body: Option<V2Body>,
    #[serde(default, rename = "_links")]
    pub(super) links: Option<V2PageLinks>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct V2Version {
    pub(super) number: u64,
    /// As sent: read in the source's zone when it carries none ([`Client::timestamp`]).
    #[serde(default)]
    pub(super) created_at: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct V2Body {
    pub(super) storage: Option<V2Storage>,
}

#[derive(Deserialize)]
pub(super) struct V2Storage {
    pub(super) value: String,
}

impl V2Page {
    /// Metadata as reported; a page without a version cannot be de-duplicated, so
    /// that is a malformed response.
    pub(super) fn meta(&self, c: &Client, url: &Url) -> Result<DocMeta, Error> {
        let version = self.version.as_ref().ok_or_else(|| {
            c.http
                .permanent(format_args!("GET {}: page {} has no version", url.path(), self.id))
        })?;
        Ok(DocMeta {
            id: DocumentId(self.id.clone()),
            version: version.number.to_string(),
            title: self.title.clone(),
            parent: self.parent_id.clone().map(DocumentId),
            modified_at: c.timestamp(version.created_at.as_deref(), url)?,
            ..DocMeta::default()
        })
    }
}

/// A v1 `content/search` page.
#[derive(Deserialize)]
pub(super) struct V1Search {
    #[serde(default)]
    pub(super) results: Vec<V1Content>,
    #[serde(default, rename = "_links")]
    pub(super) links: Option<V1Links>,
}

#[derive(Deserialize)]
pub(super) struct V1Links {
    pub(super) next: Option<String>,
    pub(super) context: Option<String>,
    /// The site's web root (`https://site/wiki`).
    pub(super) base: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct V1Content {
    #[serde(deserialize_with = "de_id")]
    pub(super) id: String,
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) title: String,
    pub(super) version: Option<V1Version>,
    #[serde(default)]
    pub(super) ancestors: Vec<V1Ancestor>,
    /// An attachment's page (`expand=container`).
    pub(super) container: Option<V1Ancestor>,
    /// An attachment's media type and size.
    pub(super) extensions: Option<V1Extensions>,
    /// Its own restrictions (`expand=restrictions.read.restrictions.user,...group`).
    pub(super) restrictions: Option<super::access::V1Restrictions>,
    #[serde(default, rename = "_links")]
    pub(super) links: Option<V1ContentLinks>,
}

#[derive(Deserialize)]
pub(super) struct V1Extensions {
    #[serde(rename = "mediaType")]
    pub(super) media_type: Option<String>,
    #[serde(rename = "fileSize")]
    pub(super) file_size: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct V1ContentLinks {
    /// The page (or, for an attachment, its preview) under the site's `/wiki`.
    pub(super) webui: Option<String>,
    /// The site's web root, in a reply of one content (`GET content/{id}`).
    pub(super) base: Option<String>,
}

impl V1Content {
    /// Id, version, title, parent (the last ancestor) and time, as reported;
    /// no version is a malformed response (`expand=version` asks for it).
    pub(super) fn meta(&self, c: &Client, url: &Url) -> Result<DocMeta, Error> {
        let version = self.version.as_ref().ok_or_else(|| {
            c.http.permanent(format_args!(
                "GET {}: result {} lacks version (expand=version)",
                url.path(),
                self.id
            ))
        })?;
        Ok(DocMeta {
            id: DocumentId(self.id.clone()),
            version: version.number.to_string(),
            title: self.title.clone(),
            // Ancestors run from the space root down to the direct parent.
            parent: self.ancestors.last().map(|a| DocumentId(a.id.clone())),
            modified_at: c.timestamp(version.when.as_deref(), url)?,
            ..DocMeta::default()
        })
    }

    /// `meta` of this attachment completed: under its page (its breadcrumb
    /// runs through it; no page, `expand=container` missing, is malformed),
    /// with its web link, media type and size.
    pub(super) fn attachment_meta(
        &self,
        meta: DocMeta,
        c: &Client,
        url: &Url,
        web_root: &str,
    ) -> Result<DocMeta, Error> {
        let page = self.container.as_ref().ok_or_else(|| {
            c.http.permanent(format_args!(
                "GET {}: attachment {} lacks its page (expand=container)",
                url.path(),
                self.id
            ))
        })?;
        let extensions = self.extensions.as_ref();
        Ok(DocMeta {
            parent: Some(DocumentId(page.id.clone())),
            url: self
                .links
                .as_ref()
                .and_then(|l| l.webui.as_deref())
                .map(|w| format!("{}{w}", web_root.trim_end_matches('/'))),
            mime_type: extensions.and_then(|e| e.media_type.clone()),
            size: extensions.and_then(|e| e.file_size),
            ..meta
        })
    }
}

#[derive(Deserialize)]
pub(super) struct V1Version {
    pub(super) number: u64,
    /// As sent: read in the source's zone when it carries none ([`Client::timestamp`]).
    #[serde(default)]
    pub(super) when: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct V1Ancestor {
    #[serde(deserialize_with = "de_id")]
    pub(super) id: String,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{connector, metas, permanent_context, read_feed, start};
    use super::super::{SCOPE_SPACE_ID, SCOPE_SPACE_KEY};
    use super::*;
    use crate::simulators::confluence::SimConfig;
    use crate::sources::{Checkpoint, Source};
    use crate::types::SyncMode;

    /// Zoned timestamps are taken as they are; zoneless ones are read in the
    /// configured zone and kept in UTC; garbage is a permanent error naming it.
    #[test]
    fn timestamps_read_in_the_configured_zone() {
        let base = Url::parse("https://example.atlassian.net").expect("url");
        let c = connector(base.clone(), |s| s.timezone = "America/New_York".into());
        let t = |text: &str| c.client.timestamp(Some(text), &base);
        let utc = |s: &str| Some(DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&Utc));
        assert_eq!(
            t("2024-01-20T10:00:00.000Z").expect("zoned"),
            utc("2024-01-20T10:00:00Z")
        );
        assert_eq!(t("2024-01-20T10:00:00").expect("zoneless"), utc("2024-01-20T15:00:00Z"));
        assert!(t("yesterday").expect_err("garbage").to_string().contains("yesterday"));
        assert_eq!(c.client.timestamp(None, &base).expect("absent"), None);
    }

    /// A 429 with Retry-After is retried (each attempt counted) and then succeeds.
    #[tokio::test]
    async fn rate_limited_call_is_retried() {
        let (sim, base) = start(SimConfig {
            pages: 3,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        sim.fail_next(1, 429);
        let (pages, _, calls) = read_feed(&src, &Checkpoint::default(), SyncMode::Full).await;
        assert_eq!(metas(&pages).len(), 3);
        assert_eq!(
            calls, 6,
            "429 + retried lookup + space permissions + restriction scan + listing + attachment search"
        );
        assert_eq!(sim.total_calls(), 6);
    }

    /// Retries that run out give Retryable, carrying the source's Retry-After.
    #[tokio::test]
    async fn exhausted_retries_are_retryable() {
        let meter = ApiCalls::default();
        let (sim, base) = start(SimConfig {
            pages: 3,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base.clone(), |s| s.max_retries = 2);
        sim.fail_next(10, 500);
        let err = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                crate::sources::nothing_held(),
                meter.clone(),
            )
            .await
            .err()
            .expect("error");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(sim.total_calls(), 3, "first try + 2 retries");

        let src = connector(base, |s| s.max_retries = 0);
        sim.fail_next(1, 429);
        match src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                crate::sources::nothing_held(),
                meter.clone(),
            )
            .await
            .err()
        {
            Some(Error::Retryable { context, after }) => {
                assert_eq!(after, Some(Duration::from_secs(1)));
                assert!(context.contains("HTTP 429"), "{context}");
            }
            other => panic!("expected Retryable, got {other:?}"),
        }
    }

    /// 401, 404 and an unknown space key are Permanent and name source, endpoint and status.
    #[tokio::test]
    async fn auth_and_not_found_are_permanent() {
        let meter = ApiCalls::default();
        let (sim, base) = start(SimConfig {
            pages: 3,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base.clone(), |_| {});
        sim.fail_next(1, 401);
        let err = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                crate::sources::nothing_held(),
                meter.clone(),
            )
            .await
            .err()
            .expect("401");
        let ctx = permanent_context(err);
        assert!(
            ctx.starts_with("source confluence-eng: GET /wiki/api/v2/spaces: HTTP 401"),
            "{ctx}"
        );

        let mut stale = Checkpoint::default();
        stale.scope.insert(SCOPE_SPACE_ID.to_owned(), "999".to_owned());
        stale.scope.insert(SCOPE_SPACE_KEY.to_owned(), "ENG".to_owned());
        let ctx = permanent_context(
            src.open_feed(&stale, SyncMode::Full, crate::sources::nothing_held(), meter.clone())
                .await
                .err()
                .expect("404"),
        );
        assert!(
            ctx.contains("GET /wiki/api/v2/spaces/999/permissions: HTTP 404"),
            "{ctx}"
        );

        let other = connector(base, |s| s.space_key = "NOPE".to_owned());
        let ctx = permanent_context(
            other
                .open_feed(
                    &Checkpoint::default(),
                    SyncMode::Full,
                    crate::sources::nothing_held(),
                    meter.clone(),
                )
                .await
                .err()
                .expect("missing"),
        );
        assert!(ctx.contains("\"NOPE\" not found"), "{ctx}");
    }

    /// Link headers are split on '<', so commas inside URLs (id=1,2) survive.
    #[test]
    fn link_header_next() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            "</wiki/api/v2/pages?id=1,2&cursor=abc>; rel=\"next\", <https://x.atlassian.net/wiki>; rel=\"base\""
                .parse()
                .expect("header"),
        );
        assert_eq!(link_next(&h).as_deref(), Some("/wiki/api/v2/pages?id=1,2&cursor=abc"));
        assert_eq!(
            error_detail(r#"{"errors":[{"status":401,"code":"UNAUTHORIZED","title":"Unauthorized","detail":null}]}"#),
            "UNAUTHORIZED: Unauthorized"
        );
        assert_eq!(
            error_detail(r#"{"statusCode":400,"message":"Could not parse cql"}"#),
            "Could not parse cql"
        );
    }
}
