//! Confluence Cloud connector: one space's pages, listed through REST v2 and
//! searched for changes through REST v1 CQL.
//!
//! What it owns:
//! - [`ConfluenceSettings`]: the `settings` table of a `kind = "confluence"` source;
//! - [`Confluence`]: the [`Source`] that walks the change feed and fetches page bodies.
//!
//! Invariants:
//! - Every time this connector reasons about ("what changed since when?") comes
//!   from the *source's* clock: the `Date` header of the feed's first response,
//!   or page modification times. Our local clock is never used, so a skewed
//!   server clock cannot make us skip changes. The rules live in [`clock`]
//!   ([`clock::Watermark`], [`clock::cql_minute_literal`]).
//! - A feed reports `complete_listing` only after following every v2 listing
//!   page to the end; CQL feeds never claim completeness.
//! - Requests only ever go to the configured `base_url`: pagination links are
//!   taken as paths and joined to it, so a response cannot redirect our
//!   credentials elsewhere.
//! - Every HTTP attempt, retries included, is counted in `api_calls` (by
//!   [`client::RetryingClient`]; which statuses are retried is decided here).

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use reqwest::header::{ACCEPT, HeaderMap, LINK};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use url::Url;

use super::client::{self, Body, RetryingClient, Verdict};
use super::clock::{self, Watermark};
use super::{
    ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, FeedEnd, FeedPage, Fetched, FetchedDoc, Held, Observation, Source,
};
use crate::types::{DocumentId, SourceId, SyncMode};

/// The largest `limit` the v2 page endpoints accept.
pub const MAX_PAGE_LIMIT: u32 = 250;
/// Ids per batched v2 `GET /pages?id=...` call (the endpoint's documented maximum).
const FETCH_BATCH: usize = 250;
/// Results per v1 CQL search page; Confluence may lower it, we follow `next` either way.
const SEARCH_LIMIT: u32 = 100;
/// `Checkpoint.scope` key caching the numeric space id.
pub const SCOPE_SPACE_ID: &str = "space_id";
/// `Checkpoint.scope` key recording which space key the cached id belongs to.
pub const SCOPE_SPACE_KEY: &str = "space_key";

fn default_timezone() -> String {
    "UTC".to_owned()
}
fn default_overlap_secs() -> u64 {
    120
}
fn default_page_limit() -> u32 {
    MAX_PAGE_LIMIT
}
fn default_sweep_every() -> u32 {
    1
}

/// Settings of one Confluence Cloud space source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfluenceSettings {
    /// Site root, e.g. `https://example.atlassian.net` (required; no `/wiki`, the
    /// connector adds it).
    pub base_url: Url,
    /// Space key, e.g. `ENG` (required).
    pub space_key: String,
    /// Atlassian account e-mail for HTTP Basic auth (default: none, anonymous).
    #[serde(default)]
    pub email: Option<String>,
    /// Name of the environment variable holding the API token (default: none).
    #[serde(default)]
    pub api_token_env: Option<String>,
    /// File holding the API token; surrounding whitespace is ignored (default: none).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// IANA zone in which Confluence interprets CQL date literals (default `"UTC"`).
    /// Documented as the user's profile zone; CONFCLOUD-70966 reports the site's
    /// default zone is used instead. If unsure, raise `overlap_secs` above the
    /// largest possible offset difference.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Seconds re-read before the watermark on CQL runs (default 120), covering
    /// changes committed out of order and search-index lag.
    #[serde(default = "default_overlap_secs")]
    pub overlap_secs: u64,
    /// Pages per v2 listing call, 1..=250 (default 250).
    #[serde(default = "default_page_limit")]
    pub page_limit: u32,
    /// Incremental runs per complete listing (default 1: every run lists everything;
    /// N > 1: only every Nth incremental run lists, the others use CQL, and
    /// deletions are noticed only on listing runs).
    #[serde(default = "default_sweep_every")]
    pub sweep_every: u32,
    /// Retries of one request after 429, 5xx or a network failure (default 5).
    #[serde(default = "client::default_max_retries")]
    pub max_retries: u32,
    /// Per-request timeout in seconds (default 30).
    #[serde(default = "client::default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

impl ConfluenceSettings {
    /// Settings for `space_key` at `base_url` with every optional field at its default.
    pub fn new(base_url: Url, space_key: impl Into<String>) -> Self {
        Self {
            base_url,
            space_key: space_key.into(),
            email: None,
            api_token_env: None,
            api_token_file: None,
            timezone: default_timezone(),
            overlap_secs: default_overlap_secs(),
            page_limit: default_page_limit(),
            sweep_every: default_sweep_every(),
            max_retries: client::default_max_retries(),
            request_timeout_secs: client::default_request_timeout_secs(),
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        let url = &self.base_url;
        // `Url` adds a '/' to bare origins; show the URL as it was most likely written.
        let shown = url.as_str().strip_suffix('/').unwrap_or(url.as_str());
        if !matches!(url.scheme(), "http" | "https") {
            problems.push(format!("{key}.base_url: {shown:?} is not an http(s) URL"));
        } else if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            // The connector appends `/wiki/...` itself and v2 pagination links are
            // host-absolute paths, so anything but the site root would be lost or doubled.
            problems.push(format!(
                "{key}.base_url: {shown:?} must be the site root (e.g. https://example.atlassian.net), without /wiki, a path or a query"
            ));
        }
        if self.space_key.trim().is_empty() {
            problems.push(format!("{key}.space_key: must not be empty"));
        }
        if Tz::from_str(&self.timezone).is_err() {
            problems.push(format!(
                "{key}.timezone: {:?} is not an IANA time zone (e.g. \"Europe/Paris\")",
                self.timezone
            ));
        }
        if !(1..=MAX_PAGE_LIMIT).contains(&self.page_limit) {
            problems.push(format!(
                "{key}.page_limit: {} is outside 1..={MAX_PAGE_LIMIT}",
                self.page_limit
            ));
        }
        if self.sweep_every == 0 {
            problems.push(format!(
                "{key}.sweep_every: must be at least 1 (1 = every incremental run lists everything)"
            ));
        }
        if self.request_timeout_secs == 0 {
            problems.push(format!("{key}.request_timeout_secs: must be at least 1"));
        }
        if self.api_token_env.is_some() && self.api_token_file.is_some() {
            problems.push(format!(
                "{key}.api_token_env: set only one of api_token_env and api_token_file"
            ));
        }
        let token_configured = self.api_token_env.is_some() || self.api_token_file.is_some();
        if token_configured && self.email.is_none() {
            problems.push(format!(
                "{key}.email: an API token is configured but no email (Basic auth needs both)"
            ));
        }
        if self.email.is_some() && !token_configured {
            problems.push(format!(
                "{key}.email: set but neither api_token_env nor api_token_file is"
            ));
        }
        if let Some(var) = &self.api_token_env
            && std::env::var_os(var).is_none()
        {
            problems.push(format!("{key}.api_token_env: environment variable {var:?} is not set"));
        }
        if let Some(path) = &self.api_token_file
            && let Err(e) = std::fs::metadata(path)
        {
            problems.push(format!("{key}.api_token_file: cannot read {}: {e}", path.display()));
        }
    }

    /// Reads the API token from the configured place, if any.
    fn read_token(&self) -> Result<Option<String>, String> {
        if let Some(var) = &self.api_token_env {
            let token = std::env::var(var).map_err(|e| format!("api_token_env {var:?}: {e}"))?;
            return Ok(Some(token.trim().to_owned()));
        }
        if let Some(path) = &self.api_token_file {
            let token = std::fs::read_to_string(path).map_err(|e| format!("api_token_file {}: {e}", path.display()))?;
            return Ok(Some(token.trim().to_owned()));
        }
        Ok(None)
    }
}

/// A Confluence Cloud space as a [`Source`].
pub struct Confluence {
    client: Arc<Client>,
}

impl Confluence {
    /// Builds the connector; fails if the time zone is unknown or the token unreadable.
    pub fn new(id: SourceId, settings: ConfluenceSettings, http: reqwest::Client) -> Result<Self, Error> {
        let tz = Tz::from_str(&settings.timezone).map_err(|_| Error::Permanent {
            context: format!("source {id}: timezone {:?} is not an IANA time zone", settings.timezone),
        })?;
        let token = settings.read_token().map_err(|e| Error::Permanent {
            context: format!("source {id}: {e}"),
        })?;
        let auth = match (&settings.email, token) {
            (Some(email), Some(token)) => Some((email.clone(), token)),
            _ => None,
        };
        let mut base = settings.base_url.clone();
        // `Url::join` replaces the last path segment unless the path ends in '/'.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = RetryingClient::new(
            http,
            id,
            Duration::from_secs(settings.request_timeout_secs),
            settings.max_retries,
        );
        Ok(Self {
            client: Arc::new(Client {
                settings,
                http,
                tz,
                auth,
                base,
            }),
        })
    }
}

/// Everything a request needs; shared by the source and its feeds.
struct Client {
    settings: ConfluenceSettings,
    /// Sends, counts and retries every request; knows the source id.
    http: RetryingClient,
    tz: Tz,
    auth: Option<(String, String)>,
    /// `base_url` with a trailing '/'.
    base: Url,
}

/// A decoded successful response with the headers the connector uses.
struct Reply<T> {
    body: T,
    /// The `Date` header: the source's clock when it answered.
    date: Option<DateTime<Utc>>,
    /// `Link: <...>; rel="next"`, when present.
    link_next: Option<String>,
}

impl Client {
    /// A timestamp from a response: zoned ones as they are, zoneless ones read in
    /// the configured zone (the API sends `Z`, but a proxy or an older server may not).
    fn timestamp(&self, text: Option<&str>, url: &Url) -> Result<Option<DateTime<Utc>>, Error> {
        text.map(|t| {
            clock::parse_in_zone(t, self.tz).map_err(|e| {
                self.http
                    .permanent(format_args!("GET {}: timestamp {t:?}: {e}", url.path()))
            })
        })
        .transpose()
    }

    /// `path` (without leading '/') under the site root.
    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(path)
            .map_err(|e| self.http.permanent(format_args!("cannot build URL for {path}: {e}")))
    }

    /// Resolves a pagination link that is a path on our site (v2 `_links.next`,
    /// `Link` header). Absolute URLs are accepted only on our own origin.
    fn resolve_site_path(&self, link: &str, current: &Url) -> Result<Url, Error> {
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

    /// GETs `url` with auth, retrying 429/5xx/network failures, and decodes the JSON body.
    /// `calls` is incremented for every attempt.
    async fn get_json<T: DeserializeOwned>(&self, url: &Url, calls: &ApiCalls) -> Result<Reply<T>, Error> {
        let label = format!("GET {}", url.path());
        let build = move || async move {
            let req = self.http.http().get(url.clone()).header(ACCEPT, "application/json");
            Ok(match &self.auth {
                Some((user, token)) => req.basic_auth(user, Some(token)),
                None => req,
            })
        };
        let reply = self.http.send(&label, build, Body::Always, classify, calls).await?;
        Ok(Reply {
            body: self.http.decode_json(&label, &reply.body)?,
            date: reply.date,
            link_next: link_next(&reply.headers),
        })
    }

    /// Finds the numeric id of the configured space (call 1). Returns the id and the `Date`.
    async fn lookup_space(&self, calls: &ApiCalls) -> Result<(String, Option<DateTime<Utc>>), Error> {
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

#[async_trait]
impl Source for Confluence {
    fn id(&self) -> &SourceId {
        self.client.http.source()
    }

    async fn open_feed(
        &self,
        checkpoint: &Checkpoint,
        mode: SyncMode,
        _held: Held,
        calls: ApiCalls,
    ) -> Result<Box<dyn ChangeFeed>, Error> {
        let c = &self.client;
        let s = &c.settings;
        let mut clock = Watermark::new(checkpoint.watermark, Duration::from_secs(s.overlap_secs));
        // The cached id is trusted only for the space key it was looked up for.
        let cached = checkpoint
            .scope
            .get(SCOPE_SPACE_ID)
            .filter(|id| is_numeric_id(id))
            .filter(|_| checkpoint.scope.get(SCOPE_SPACE_KEY) == Some(&s.space_key));
        let space_id = match cached {
            Some(id) => id.clone(),
            None => {
                let (id, date) = c.lookup_space(&calls).await?;
                clock.observe_date(date);
                id
            }
        };
        let mut scope = checkpoint.scope.clone();
        scope.insert(SCOPE_SPACE_ID.to_owned(), space_id.clone());
        scope.insert(SCOPE_SPACE_KEY.to_owned(), s.space_key.clone());

        let sweep_due = checkpoint.runs_since_sweep.saturating_add(1) >= s.sweep_every;
        let listing_reason = match (mode, checkpoint.watermark) {
            (SyncMode::Full, _) => Some("full run"),
            (_, None) => Some("no watermark yet"),
            (_, Some(_)) if sweep_due => Some("deletion sweep due"),
            _ => None,
        };
        let (kind, first, note, complete, runs_since_sweep) = match (listing_reason, clock.query_from()) {
            (None, Some(since)) => {
                let literal = clock::cql_minute_literal(since, c.tz);
                let cql = format!(
                    "space = \"{}\" and type = page and lastmodified >= \"{literal}\"",
                    cql_escape(&s.space_key)
                );
                let mut url = c.url("wiki/rest/api/content/search")?;
                url.query_pairs_mut()
                    .append_pair("cql", &cql)
                    .append_pair("limit", &SEARCH_LIMIT.to_string())
                    .append_pair("expand", "version,ancestors");
                let note = format!("CQL changes since {literal} ({})", c.tz);
                let runs = checkpoint.runs_since_sweep.saturating_add(1);
                (FeedKind::Search, url, note, false, runs)
            }
            (reason, _) => {
                let mut url = c.url(&format!("wiki/api/v2/spaces/{space_id}/pages"))?;
                url.query_pairs_mut()
                    .append_pair("limit", &s.page_limit.clamp(1, MAX_PAGE_LIMIT).to_string())
                    // Only live pages: the default also includes archived ones, which CQL
                    // search and our fetch do not return.
                    .append_pair("status", "current");
                let note = format!("complete listing ({})", reason.unwrap_or("no watermark yet"));
                (FeedKind::Listing, url, note, true, 0)
            }
        };
        Ok(Box::new(ConfluenceFeed {
            client: Arc::clone(&self.client),
            kind,
            next: Some(first),
            calls,
            clock,
            scope,
            complete,
            runs_since_sweep,
            note,
        }))
    }

    fn wants_held_versions(&self) -> bool {
        // Versions come from the listing or CQL; the coordinator compares them.
        false
    }

    async fn fetch(&self, docs: &[DocMeta], calls: &ApiCalls) -> Result<Fetched, Error> {
        let c = &self.client;
        let mut out = Fetched::default();
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        for doc in docs {
            if !seen.insert(doc.id.0.as_str()) {
                continue;
            }
            if is_numeric_id(&doc.id.0) {
                wanted.push(doc.id.0.as_str());
            } else {
                // Confluence ids are numeric; such an id cannot exist there (and would make
                // the whole batch a 400).
                out.missing.push(doc.id.clone());
            }
        }
        for chunk in wanted.chunks(FETCH_BATCH) {
            let requested: BTreeSet<&str> = chunk.iter().copied().collect();
            let mut found = BTreeSet::new();
            let mut url = c.url("wiki/api/v2/pages")?;
            url.query_pairs_mut()
                .append_pair("id", &chunk.join(","))
                .append_pair("body-format", "storage")
                .append_pair("status", "current")
                .append_pair("limit", &FETCH_BATCH.to_string());
            loop {
                let reply: Reply<V2List<V2Page>> = c.get_json(&url, calls).await?;
                for page in reply.body.results {
                    if !requested.contains(page.id.as_str()) || !found.insert(page.id.clone()) {
                        continue;
                    }
                    let meta = page.meta(c, &url)?;
                    let content = page.body.and_then(|b| b.storage).map(|s| s.value).ok_or_else(|| {
                        c.http
                            .permanent(format_args!("GET {}: page {} has no body.storage", url.path(), meta.id))
                    })?;
                    let links = page_links(&content);
                    out.docs.push(FetchedDoc { meta, content, links });
                }
                match reply.body.links.and_then(|l| l.next).or(reply.link_next) {
                    Some(next) => url = c.resolve_site_path(&next, &url)?,
                    None => break,
                }
            }
            out.missing.extend(
                chunk
                    .iter()
                    .filter(|id| !found.contains(**id))
                    .map(|id| DocumentId((*id).to_owned())),
            );
        }
        Ok(out)
    }
}

/// Page ids this storage-format body links to, in order of first appearance.
///
/// Confluence Cloud writes links to pages either as URLs (`<a href=".../wiki/spaces/KEY/pages/123/Title">`,
/// smart links included) or as `<ri:page ri:content-id="123" .../>` resource identifiers.
/// Title-only links (`ri:content-title`) are not resolved here.
pub fn page_links(storage: &str) -> Vec<DocumentId> {
    fn digits_after(text: &str, marker: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !id.is_empty() {
                out.push(id);
            }
        }
        out
    }
    let mut seen = HashSet::new();
    digits_after(storage, "/pages/")
        .into_iter()
        .chain(digits_after(storage, "ri:content-id=\""))
        .filter(|id| seen.insert(id.clone()))
        .map(DocumentId)
        .collect()
}

/// Which endpoint a feed walks.
enum FeedKind {
    /// v2 `GET /spaces/{id}/pages`: every page, complete.
    Listing,
    /// v1 CQL `lastmodified >=` search: changes only.
    Search,
}

/// One run's change feed; pages are requested lazily, one per `next_page`.
struct ConfluenceFeed {
    client: Arc<Client>,
    kind: FeedKind,
    /// The next request; `None` once the last page was returned.
    next: Option<Url>,
    /// Counts every request of the run's feed.
    calls: ApiCalls,
    /// The source's clock as this run read it: the `Date` of the feed's first
    /// response, else the newest modification seen; gives the new watermark.
    clock: Watermark,
    scope: std::collections::BTreeMap<String, String>,
    complete: bool,
    runs_since_sweep: u32,
    note: String,
}

#[async_trait]
impl ChangeFeed for ConfluenceFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        let c = Arc::clone(&self.client);
        let calls = self.calls.clone();
        let mut observations = Vec::new();
        match self.kind {
            FeedKind::Listing => {
                let reply: Reply<V2List<V2Page>> = c.get_json(&url, &calls).await?;
                self.clock.observe_date(reply.date);
                for page in &reply.body.results {
                    if page.status.as_deref().is_some_and(|st| st != "current") {
                        continue;
                    }
                    let meta = page.meta(&c, &url)?;
                    self.clock.observe_modified(meta.modified_at);
                    observations.push(Observation::Present(meta));
                }
                if let Some(next) = reply.body.links.and_then(|l| l.next).or(reply.link_next) {
                    self.next = Some(c.resolve_site_path(&next, &url)?);
                }
            }
            FeedKind::Search => {
                let reply: Reply<V1Search> = c.get_json(&url, &calls).await?;
                self.clock.observe_date(reply.date);
                for item in &reply.body.results {
                    if item.kind.as_deref().is_some_and(|k| k != "page")
                        || item.status.as_deref().is_some_and(|st| st != "current")
                    {
                        continue;
                    }
                    let version = item.version.as_ref().ok_or_else(|| {
                        c.http.permanent(format_args!(
                            "GET {}: result {} lacks version (expand=version)",
                            url.path(),
                            item.id
                        ))
                    })?;
                    let when = c.timestamp(version.when.as_deref(), &url)?;
                    self.clock.observe_modified(when);
                    observations.push(Observation::Present(DocMeta {
                        id: DocumentId(item.id.clone()),
                        version: version.number.to_string(),
                        title: item.title.clone(),
                        // Ancestors run from the space root down to the direct parent.
                        parent: item.ancestors.last().map(|a| DocumentId(a.id.clone())),
                        modified_at: when,
                    }));
                }
                if let Some(links) = reply.body.links
                    && let Some(next) = links.next
                {
                    // v1 links are relative to `_links.base` (site + context, "/wiki");
                    // we rebuild it from our own base_url and the context path.
                    let next = if next.starts_with("http://") || next.starts_with("https://") {
                        next
                    } else {
                        let context = links.context.unwrap_or_else(|| "/wiki".to_owned());
                        format!("{}{}", context.trim_end_matches('/'), next)
                    };
                    self.next = Some(c.resolve_site_path(&next, &url)?);
                }
            }
        }
        Ok(Some(FeedPage { observations }))
    }

    fn end(&self) -> FeedEnd {
        // The first Date, else the newest modification minus the overlap, else the
        // old watermark: never one invented from our own clock (see `clock::Watermark`).
        FeedEnd {
            checkpoint: Checkpoint {
                cursor: None,
                watermark: self.clock.next(),
                runs_since_sweep: self.runs_since_sweep,
                scope: self.scope.clone(),
                ..Checkpoint::default()
            },
            complete_listing: self.complete,
            note: Some(self.note.clone()),
        }
    }
}

/// Atlassian's answers: 429 and 5xx are transient (Retry-After comes on 429 and
/// some 503s); any other non-2xx status is final and its body says why.
fn classify(reply: &client::Reply) -> Verdict {
    if reply.status.is_success() {
        return Verdict::Accept;
    }
    let detail = format!("HTTP {}: {}", reply.status.as_u16(), error_detail(&reply.text()));
    if client::is_transient(reply.status) {
        Verdict::Retry {
            detail,
            after: client::retry_after(&reply.headers),
        }
    } else {
        Verdict::Refuse { detail }
    }
}

/// Escapes a value for a double-quoted CQL string.
fn cql_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn is_numeric_id(s: &str) -> bool {
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
struct V2List<T> {
    #[serde(default = "Vec::new")]
    results: Vec<T>,
    #[serde(default, rename = "_links")]
    links: Option<V2Links>,
}

#[derive(Deserialize)]
struct V2Links {
    next: Option<String>,
}

#[derive(Deserialize)]
struct V2Space {
    #[serde(deserialize_with = "de_id")]
    id: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V2Page {
    #[serde(deserialize_with = "de_id")]
    id: String,
    status: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(default, deserialize_with = "de_opt_id")]
    parent_id: Option<String>,
    version: Option<V2Version>,
    body: Option<V2Body>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct V2Version {
    number: u64,
    /// As sent: read in the source's zone when it carries none ([`Client::timestamp`]).
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct V2Body {
    storage: Option<V2Storage>,
}

#[derive(Deserialize)]
struct V2Storage {
    value: String,
}

impl V2Page {
    /// Metadata as reported; a page without a version cannot be de-duplicated, so
    /// that is a malformed response.
    fn meta(&self, c: &Client, url: &Url) -> Result<DocMeta, Error> {
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
        })
    }
}

/// A v1 `content/search` page.
#[derive(Deserialize)]
struct V1Search {
    #[serde(default)]
    results: Vec<V1Content>,
    #[serde(default, rename = "_links")]
    links: Option<V1Links>,
}

#[derive(Deserialize)]
struct V1Links {
    next: Option<String>,
    context: Option<String>,
}

#[derive(Deserialize)]
struct V1Content {
    #[serde(deserialize_with = "de_id")]
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    #[serde(default)]
    title: String,
    version: Option<V1Version>,
    #[serde(default)]
    ancestors: Vec<V1Ancestor>,
}

#[derive(Deserialize)]
struct V1Version {
    number: u64,
    /// As sent: read in the source's zone when it carries none ([`Client::timestamp`]).
    #[serde(default)]
    when: Option<String>,
}

#[derive(Deserialize)]
struct V1Ancestor {
    #[serde(deserialize_with = "de_id")]
    id: String,
}

#[cfg(test)]
mod tests {

    /// Links to pages are found in both URL and resource-identifier form, once each.
    #[test]
    fn page_links_in_storage_format() {
        let body = r#"<p>See <a href="https://x.atlassian.net/wiki/spaces/ENG/pages/100012/Install">install</a>,
            <ac:link><ri:page ri:content-id="100020" ri:space-key="ENG"/></ac:link> and
            <a href="/wiki/spaces/ENG/pages/100012">again</a>; <ri:page ri:content-title="Only a title"/></p>"#;
        assert_eq!(
            page_links(body),
            vec![DocumentId("100012".into()), DocumentId("100020".into())]
        );
        assert!(page_links("<p>no links</p>").is_empty());
    }
    use super::*;
    use crate::simulators::confluence::{ConfluenceSim, SimConfig};
    use crate::sources::SourceSettings;

    async fn start(cfg: SimConfig) -> (ConfluenceSim, Url) {
        let sim = ConfluenceSim::new(cfg);
        let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
        (sim, Url::parse(&format!("http://{addr}")).expect("url"))
    }

    fn connector(base: Url, tweak: impl FnOnce(&mut ConfluenceSettings)) -> Confluence {
        let mut s = ConfluenceSettings::new(base, "ENG");
        tweak(&mut s);
        Confluence::new(SourceId::new("confluence-eng").expect("id"), s, reqwest::Client::new()).expect("connector")
    }

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

    async fn drain(feed: &mut Box<dyn ChangeFeed>) -> Result<(Vec<FeedPage>, FeedEnd), Error> {
        let mut pages = Vec::new();
        while let Some(p) = feed.next_page().await? {
            pages.push(p);
        }
        Ok((pages, feed.end()))
    }

    fn metas(pages: &[FeedPage]) -> Vec<DocMeta> {
        pages
            .iter()
            .flat_map(|p| &p.observations)
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m.clone()),
                Observation::Deleted(_) | Observation::Moved { .. } => None,
            })
            .collect()
    }

    fn permanent_context(e: Error) -> String {
        match e {
            Error::Permanent { context } => context,
            other => panic!("expected Permanent, got {other:?}"),
        }
    }

    /// A full listing walks every cursor page, reports every page with its parent,
    /// and counts exactly one space lookup plus one call per 250 pages; the space id
    /// is cached so the next run skips the lookup.
    #[tokio::test]
    async fn full_listing_follows_cursors_and_counts_calls() {
        let meter = ApiCalls::default();
        let (sim, base) = start(SimConfig {
            pages: 500,
            seed: 7,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let mut feed = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                Default::default(),
                meter.clone(),
            )
            .await
            .expect("open");
        let (pages, end) = drain(&mut feed).await.expect("feed");
        assert_eq!(pages.len(), 2);
        assert_eq!(meter.get(), 3);
        assert_eq!(sim.total_calls(), 3);
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"), Some(&2));
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces"), Some(&1));
        let seen = metas(&pages);
        let expected = sim.pages();
        assert_eq!(seen.len(), 500);
        for (m, p) in seen.iter().zip(&expected) {
            assert_eq!(m.id.0, p.id);
            assert_eq!(m.version, p.version.to_string());
            assert_eq!(m.title, p.title);
            assert_eq!(m.parent.as_ref().map(|d| d.0.clone()), p.parent_id);
            assert_eq!(m.modified_at, Some(p.modified_at));
        }
        assert!(expected.iter().any(|p| p.parent_id.is_some()) && expected.iter().any(|p| p.parent_id.is_none()));
        assert!(end.complete_listing);
        assert_eq!(end.checkpoint.runs_since_sweep, 0);
        assert_eq!(
            end.checkpoint.scope.get(SCOPE_SPACE_ID).map(String::as_str),
            Some("98304")
        );

        sim.reset_calls();
        let meter = ApiCalls::default();
        let mut feed = src
            .open_feed(&end.checkpoint, SyncMode::Full, Default::default(), meter.clone())
            .await
            .expect("open");
        let (_pages, _) = drain(&mut feed).await.expect("feed");
        assert_eq!(meter.get(), 2, "cached space id skips the lookup");
        assert_eq!(sim.total_calls(), 2);
    }

    /// A page created mid-listing with an id beyond the cursor appears later in the
    /// same listing, as real cursor pagination would report it.
    #[tokio::test]
    async fn page_created_during_listing_appears_later() {
        let meter = ApiCalls::default();
        let (sim, base) = start(SimConfig {
            pages: 300,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let mut feed = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                Default::default(),
                meter.clone(),
            )
            .await
            .expect("open");
        let first = feed.next_page().await.expect("page").expect("some");
        assert_eq!(first.observations.len(), 250);
        let new_id = sim.create_page("Late", None, "<p>late</p>");
        let (rest, end) = drain(&mut feed).await.expect("rest");
        assert!(metas(&rest).iter().any(|m| m.id.0 == new_id));
        assert_eq!(metas(&rest).len(), 51);
        assert!(end.complete_listing);
    }

    /// Fetch asks for all ids in one batched call and reports deleted ids as missing.
    #[tokio::test]
    async fn fetch_batches_ids_and_reports_missing() {
        let (sim, base) = start(SimConfig {
            pages: 10,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let all = sim.pages();
        let gone = all[3].id.clone();
        assert!(sim.delete_page(&gone));
        let wanted: Vec<DocMeta> = all[..6]
            .iter()
            .map(|p| DocMeta {
                id: DocumentId(p.id.clone()),
                version: p.version.to_string(),
                title: p.title.clone(),
                parent: None,
                modified_at: None,
            })
            .collect();
        sim.reset_calls();
        let meter = ApiCalls::default();
        let got = src.fetch(&wanted, &meter).await.expect("fetch");
        assert_eq!(meter.get(), 1);
        assert_eq!(sim.calls().get("GET /wiki/api/v2/pages"), Some(&1));
        assert_eq!(got.missing, vec![DocumentId(gone.clone())]);
        assert_eq!(got.docs.len(), 5);
        let now = sim.pages();
        for doc in &got.docs {
            let p = now.iter().find(|p| p.id == doc.meta.id.0).expect("known page");
            assert_eq!(doc.content, p.body);
            assert_eq!(doc.meta.version, p.version.to_string());
            assert_eq!(doc.meta.parent.as_ref().map(|d| d.0.clone()), p.parent_id);
        }
    }

    /// With sweep_every = 5, the second incremental run uses CQL and finds a page
    /// edited after the watermark, although the source clock runs 3 minutes behind
    /// ours and its CQL literals are read in America/New_York; the watermark is the
    /// simulator's Date header. The fifth run is a complete listing again.
    #[tokio::test]
    async fn incremental_cql_uses_source_clock_and_timezone() {
        let meter = ApiCalls::default();
        let skew = chrono::Duration::minutes(-3);
        let (sim, base) = start(SimConfig {
            pages: 20,
            user_timezone: chrono_tz::America::New_York,
            clock_skew: skew,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |s| {
            s.timezone = "America/New_York".to_owned();
            s.sweep_every = 5;
        });
        let before = Utc::now() + skew;
        let mut feed = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Incremental,
                Default::default(),
                meter.clone(),
            )
            .await
            .expect("open");
        let (_, first) = drain(&mut feed).await.expect("feed");
        let after = Utc::now() + skew;
        assert!(first.complete_listing, "no watermark yet: complete listing");
        let wm = first.checkpoint.watermark.expect("watermark");
        // The Date header has whole seconds.
        assert!(
            wm >= before - chrono::Duration::seconds(1) && wm <= after,
            "{before} <= {wm} <= {after}"
        );

        let edited = sim.pages()[5].id.clone();
        assert!(sim.update_page(&edited, Some("Edited"), Some("<p>new</p>")));
        sim.reset_calls();
        let meter = ApiCalls::default();
        let mut feed = src
            .open_feed(
                &first.checkpoint,
                SyncMode::Incremental,
                Default::default(),
                meter.clone(),
            )
            .await
            .expect("open");
        let (pages, second) = drain(&mut feed).await.expect("feed");
        assert_eq!(sim.calls().get("GET /wiki/rest/api/content/search"), Some(&1));
        assert_eq!(meter.get(), 1);
        let seen = metas(&pages);
        assert_eq!(
            seen.len(),
            1,
            "only the edit is newer than the 30-day-old seed: {seen:?}"
        );
        assert_eq!(seen[0].id.0, edited);
        assert_eq!(seen[0].version, sim.pages()[5].version.to_string());
        assert_eq!(seen[0].title, "Edited");
        assert!(!second.complete_listing);
        assert_eq!(second.checkpoint.runs_since_sweep, 1);
        assert!(second.checkpoint.watermark.expect("wm") >= wm);
        assert!(second.note.as_deref().is_some_and(|n| n.contains("America/New_York")));

        let due = Checkpoint {
            runs_since_sweep: 4,
            ..second.checkpoint.clone()
        };
        let mut feed = src
            .open_feed(&due, SyncMode::Incremental, Default::default(), meter.clone())
            .await
            .expect("open");
        let (pages, third) = drain(&mut feed).await.expect("feed");
        assert!(third.complete_listing);
        assert_eq!(third.checkpoint.runs_since_sweep, 0);
        assert_eq!(metas(&pages).len(), 20);
    }

    /// A 429 with Retry-After is retried (each attempt counted) and then succeeds.
    #[tokio::test]
    async fn rate_limited_call_is_retried() {
        let meter = ApiCalls::default();
        let (sim, base) = start(SimConfig {
            pages: 3,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        sim.fail_next(1, 429);
        let mut feed = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                Default::default(),
                meter.clone(),
            )
            .await
            .expect("open");
        let (pages, _) = drain(&mut feed).await.expect("feed");
        assert_eq!(metas(&pages).len(), 3);
        assert_eq!(meter.get(), 3, "429 + retried lookup + listing");
        assert_eq!(sim.total_calls(), 3);
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
                Default::default(),
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
                Default::default(),
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
                Default::default(),
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
        let mut feed = src
            .open_feed(&stale, SyncMode::Full, Default::default(), meter.clone())
            .await
            .expect("open");
        let ctx = permanent_context(feed.next_page().await.expect_err("404"));
        assert!(ctx.contains("GET /wiki/api/v2/spaces/999/pages: HTTP 404"), "{ctx}");

        let other = connector(base, |s| s.space_key = "NOPE".to_owned());
        let ctx = permanent_context(
            other
                .open_feed(
                    &Checkpoint::default(),
                    SyncMode::Full,
                    Default::default(),
                    meter.clone(),
                )
                .await
                .err()
                .expect("missing"),
        );
        assert!(ctx.contains("\"NOPE\" not found"), "{ctx}");
    }

    /// Settings parse with documented defaults, and every bad value is reported by field.
    #[test]
    fn settings_defaults_and_validation() {
        let mut problems = Vec::new();
        let ok: toml::Value =
            toml::from_str("base_url = \"https://example.atlassian.net\"\nspace_key = \"ENG\"").expect("toml");
        let Some(SourceSettings::Confluence(s)) = SourceSettings::parse("confluence", ok, "sources[0]", &mut problems)
        else {
            panic!("parse failed: {problems:?}");
        };
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            (s.timezone.as_str(), s.overlap_secs, s.page_limit, s.sweep_every),
            ("UTC", 120, 250, 1)
        );
        assert_eq!((s.max_retries, s.request_timeout_secs), (5, 30));

        let bad: toml::Value = toml::from_str(
            "base_url = \"ftp://x\"\nspace_key = \"ENG\"\ntimezone = \"Mars/Olympus\"\npage_limit = 500\nsweep_every = 0\napi_token_env = \"TIDEMARK_TEST_SURELY_UNSET_VAR\"",
        )
        .expect("toml");
        let mut problems = Vec::new();
        SourceSettings::parse("confluence", bad, "sources[0]", &mut problems);
        let all = problems.join("\n");
        for needle in [
            "sources[0].settings.base_url: \"ftp://x\" is not an http(s) URL",
            "sources[0].settings.timezone: \"Mars/Olympus\"",
            "sources[0].settings.page_limit: 500 is outside 1..=250",
            "sources[0].settings.sweep_every",
            "sources[0].settings.api_token_env: environment variable \"TIDEMARK_TEST_SURELY_UNSET_VAR\" is not set",
            "sources[0].settings.email: an API token is configured but no email",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }

        let unknown: toml::Value =
            toml::from_str("base_url = \"https://x.net\"\nspace_key = \"E\"\ncolour = 1").expect("toml");
        let mut problems = Vec::new();
        assert!(SourceSettings::parse("confluence", unknown, "sources[1]", &mut problems).is_none());
        assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
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
