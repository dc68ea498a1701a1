//! HTTP connector: a set of web pages (listed in the settings and/or a sitemap),
//! kept in sync with conditional requests.
//!
//! What it owns:
//! - [`HttpSettings`]: the `settings` table of a `kind = "http"` source;
//! - [`HttpSource`]: the [`Source`] that probes pages with conditional `HEAD`s and `GET`s their bodies;
//! - [`page_title`] and [`page_links`]: the little HTML reading it needs (in `html.rs`).
//!
//! Identity and versions:
//! - document id = the page URL without its fragment (as `url` serialises it);
//! - title = the page's `<title>` (entities decoded, whitespace collapsed), else the URL path;
//! - version = `"{validator}\n{title}"`, where the validator is `etag:<ETag>` or
//!   `lm:<Last-Modified as HTTP-date>` from the server, `sha256:<16 hex of the body>`
//!   when the server sends neither, or `unvalidated` in a feed that could not tell.
//!   The title rides along because a `304` carries no body: echoing the held
//!   version gives the coordinator the held title too, so its version+title
//!   comparison drops the page as unchanged. A header value cannot contain a
//!   newline, so the first line is always the validator.
//!
//! Invariants:
//! - Every feed is a complete listing of the configured set (the `urls` plus the
//!   sitemap's, read afresh each run). A page is left out of it only when the
//!   server said `404`/`410`; other 4xx keep the held version (counted in the
//!   note); a URL that fails (network error, redirect loop, 5xx/429 once retries
//!   run out) fails alone, as a document, while the rest syncs; a server that
//!   answers nothing fails the run, so an unreachable server deletes nothing.
//! - A page is read as a browser reads it: `Content-Encoding` (gzip, brotli,
//!   deflate) decoded by the HTTP client, the charset from `Content-Type` or
//!   `<meta>`, `content` the readable text ([`crate::extract`]), links resolved
//!   against the URL the redirects ended at; other types (PDF, Office, text)
//!   through the same extractors; bodies over `max_page_bytes` are not read whole.
//! - Versions come from the server (`ETag`, `Last-Modified`) or the body, never from our clock.
//! - Every HTTP attempt, retries included, is counted in `api_calls` (by
//!   [`client::RetryingClient`]; what 304/404/410 mean is decided here).
//!   HTTP-dates are read and written by [`clock`].
//! - At most `concurrency` requests of one feed page or one fetch are in flight.
//!
//! | capability        | how                                                                          |
//! |-------------------|------------------------------------------------------------------------------|
//! | change detection  | conditional `HEAD` (`If-None-Match` / `If-Modified-Since`); 304 = unchanged   |
//! | deletions         | `404`/`410`, or a URL dropped from the sitemap (complete listing)             |
//! | moves / renames   | no: a new URL is a create, the old one a deletion                             |
//! | links             | `<a href>` targets on the page's own site (relative to the page or its `<base>`); a target tidemark does not hold (outside the set, 404) gets title `None` |
//!
//! What it cannot detect: changes a server hides behind an unchanged validator
//! (a weak ETag or a Last-Modified that does not move; a `Full` run re-reads and
//! the worker's content hash still catches those); pages served without any
//! validator are always fetched and decided by the content hash. Gzipped sitemap
//! files (`.xml.gz`, as opposed to gzip transfer encoding) are not read.
//! Redirects are followed; the id stays the configured URL.
//!
//! Where things are:
//! - `settings.rs`: [`HttpSettings`], its defaults and validation;
//! - `html.rs`: reading pages and sitemaps (titles, links, `<loc>`s, entities);
//! - `feed.rs`: one run's feed, conditional probes of the configured set, a page at a time;
//! - `mod.rs` (this file): [`HttpSource`], the request client (probes, page
//!   downloads, the sitemap walk) and the version format.

mod feed;
mod html;
mod settings;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{Method, StatusCode};
use url::Url;

use self::feed::HttpFeed;
use self::html::sitemap_locs;
use super::client::{self, Body, RetryingClient, Verdict};
use super::clock;
use super::{ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, Fetched, FetchedDoc, Held, Source};
use crate::extract::{self, Format};
use crate::gate::Gates;
use crate::sources;
use crate::types::{DocumentId, SourceId, SyncMode};

pub use self::html::{page_links, page_title};
pub use self::settings::{HttpSettings, MAX_CONCURRENCY};

/// The validator of a feed observation that must be fetched to be judged.
const UNVALIDATED: &str = "unvalidated";

/// Web pages as a [`Source`].
pub struct HttpSource {
    client: Arc<Client>,
}

impl HttpSource {
    /// Builds the connector; fails only on a `user_agent` that cannot be a header.
    pub fn new(id: SourceId, settings: HttpSettings, http: reqwest::Client, gates: &Gates) -> Result<Self, Error> {
        // Detailed errors: a dead web server's "Connection refused" is the whole story.
        let http = settings.client().build(http, id, gates)?.with_detailed_errors();
        let mut configured = Vec::new();
        let mut seen = HashSet::new();
        for url in &settings.urls {
            let url = normalize(url);
            if seen.insert(url.as_str().to_owned()) {
                configured.push(url);
            }
        }
        Ok(Self {
            client: Arc::new(Client {
                settings,
                http,
                configured,
            }),
        })
    }
}

/// Everything a request needs; shared by the source and its feeds.
struct Client {
    settings: HttpSettings,
    /// Sends, counts and retries every request; knows the source id.
    http: RetryingClient,
    /// The configured `urls`, normalised and de-duplicated.
    configured: Vec<Url>,
}

/// A response whose status was final (not retried).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// The body bytes (after `Content-Encoding`), when asked for and the status was a success.
    body: Option<Vec<u8>>,
    /// The body was longer than `max_page_bytes` and was cut.
    truncated: bool,
    /// Where the answer came from, after redirects.
    url: Url,
}

/// The id form of a URL: no fragment.
fn normalize(url: &Url) -> Url {
    let mut u = url.clone();
    u.set_fragment(None);
    u
}

/// Splits a version into its validator and title.
fn split_version(version: &str) -> (&str, Option<&str>) {
    match version.split_once('\n') {
        Some((v, t)) => (v, Some(t)),
        None => (version, None),
    }
}

fn join_version(validator: &str, title: &str) -> String {
    format!("{validator}\n{title}")
}

/// The server's validator from a response: ETag preferred, else Last-Modified.
fn validator_of(headers: &HeaderMap) -> Option<String> {
    if let Some(etag) = headers.get(ETAG).and_then(|v| v.to_str().ok())
        && !etag.trim().is_empty()
    {
        return Some(format!("etag:{}", etag.trim()));
    }
    clock::header_date(headers, LAST_MODIFIED).map(|t| format!("lm:{}", clock::format_http_date(t)))
}

/// The conditional header to send for a held validator, if it is one we can send.
fn conditional(validator: &str) -> Option<(reqwest::header::HeaderName, String)> {
    if let Some(etag) = validator.strip_prefix("etag:") {
        return Some((IF_NONE_MATCH, etag.to_owned()));
    }
    let date = validator.strip_prefix("lm:")?;
    clock::parse_http_date(date)?;
    Some((IF_MODIFIED_SINCE, date.to_owned()))
}

/// The `modified_at` a validator implies (Last-Modified only).
fn validator_time(validator: &str) -> Option<DateTime<Utc>> {
    clock::parse_http_date(validator.strip_prefix("lm:")?)
}

/// The title a page has when we know nothing better: its path.
fn path_title(url: &Url) -> String {
    url.path().to_owned()
}

/// What one conditional probe found.
enum Probe {
    /// Present; `unchanged` when the server confirmed the held version.
    Present { meta: DocMeta, unchanged: bool },
    /// 404 or 410.
    Gone,
    /// Another 4xx: kept as held when held (`Some`), else left out.
    Refused { status: u16, kept: Option<DocMeta> },
}

impl Client {
    /// Sends `method url` with `extra` headers, retrying network failures, 429 and
    /// 5xx (honouring `Retry-After`, capped) up to `max_retries` times. Every attempt
    /// is counted. Any other status is returned as is; the body is read only for
    /// successes when `want_body`.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        extra: &[(reqwest::header::HeaderName, String)],
        want_body: bool,
        calls: &ApiCalls,
    ) -> Result<Reply, Error> {
        let build = || {
            let mut req = self.http.http().request(method.clone(), url.clone());
            for (name, value) in extra {
                req = req.header(name.clone(), value.as_str());
            }
            std::future::ready(Ok(req))
        };
        let read = if want_body {
            Body::OnSuccessUpTo(self.settings.max_page_bytes)
        } else {
            Body::Never
        };
        let label = format!("{method} {url}");
        let reply = self.http.send(&label, build, read, classify, calls).await?;
        let ok = want_body && reply.status.is_success();
        Ok(Reply {
            status: reply.status,
            headers: reply.headers,
            truncated: reply.truncated,
            url: reply.url,
            body: ok.then_some(reply.body),
        })
    }

    /// GETs one sitemap: whether it is a `<sitemapindex>`, its `<loc>`s that
    /// are http(s) URLs (normalised), and how many were not.
    async fn read_sitemap(&self, sitemap: &Url, calls: &ApiCalls) -> Result<(bool, Vec<Url>, usize), Error> {
        let body = self.get_sitemap(sitemap, calls).await?;
        let (is_index, locs) = sitemap_locs(&body);
        let mut skipped = 0;
        let urls = locs
            .iter()
            .filter_map(|loc| match Url::parse(loc) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(normalize(&u)),
                _ => {
                    skipped += 1;
                    None
                }
            })
            .collect();
        Ok((is_index, urls, skipped))
    }

    async fn get_sitemap(&self, url: &Url, calls: &ApiCalls) -> Result<String, Error> {
        let reply = self.send(Method::GET, url, &[], true, calls).await?;
        match reply.body {
            Some(body) if !reply.truncated => Ok(String::from_utf8_lossy(&body).into_owned()),
            Some(_) => Err(self.http.permanent(format_args!(
                "GET {url}: the sitemap is over max_page_bytes ({})",
                self.settings.max_page_bytes
            ))),
            // Without the sitemap we cannot say what exists, so the run must not go on
            // (a complete listing without it would delete every page it names).
            None => Err(self.http.permanent(format_args!(
                "GET {url}: HTTP {}: cannot read the sitemap",
                reply.status.as_u16()
            ))),
        }
    }

    /// A conditional `HEAD` for one URL (a `GET` if the server refuses `HEAD`).
    async fn probe(&self, url: &Url, held: Option<&str>, calls: &ApiCalls) -> Result<Probe, Error> {
        let id = DocumentId(url.as_str().to_owned());
        let (held_validator, held_title) = held.map(split_version).unwrap_or(("", None));
        let title = held_title.map_or_else(|| path_title(url), str::to_owned);
        let condition: Vec<_> = conditional(held_validator).into_iter().collect();
        let mut reply = self.send(Method::HEAD, url, &condition, false, calls).await?;
        if matches!(reply.status.as_u16(), 405 | 501) {
            reply = self.send(Method::GET, url, &condition, false, calls).await?;
        }
        let status = reply.status.as_u16();
        let held_meta = |version: &str| DocMeta {
            id: id.clone(),
            version: version.to_owned(),
            title: title.clone(),
            parent: None,
            modified_at: validator_time(split_version(version).0),
            ..DocMeta::default()
        };
        if status == 304
            && let Some(held) = held
            && !condition.is_empty()
        {
            return Ok(Probe::Present {
                meta: held_meta(held),
                unchanged: true,
            });
        }
        if reply.status.is_success() || status == 304 {
            let validator = validator_of(&reply.headers);
            return Ok(match (validator, held) {
                // A server that ignores conditions but reports the same validator: unchanged too.
                (Some(v), Some(held)) if v == held_validator => Probe::Present {
                    meta: held_meta(held),
                    unchanged: true,
                },
                (v, _) => {
                    let v = v.unwrap_or_else(|| UNVALIDATED.to_owned());
                    Probe::Present {
                        meta: DocMeta {
                            id: id.clone(),
                            modified_at: validator_time(&v),
                            version: join_version(&v, &title),
                            title: title.clone(),
                            parent: None,
                            ..DocMeta::default()
                        },
                        unchanged: false,
                    }
                }
            });
        }
        if matches!(status, 404 | 410) {
            return Ok(Probe::Gone);
        }
        tracing::warn!(source = %self.http.source(), %url, status, "probe refused; keeping the held version");
        Ok(Probe::Refused {
            status,
            kept: held.map(held_meta),
        })
    }

    /// GETs one page: `None` when it is gone (404/410). An HTML page is read
    /// as a browser reads it (its charset, its links against the URL it was
    /// finally served from); any other type (PDF, Office, text) goes through
    /// the same extractors as Drive's files; a body over `max_page_bytes` is
    /// kept as metadata with a note.
    async fn get_page(&self, url: &Url, calls: &ApiCalls) -> Result<Option<FetchedDoc>, Error> {
        let reply = self.send(Method::GET, url, &[], true, calls).await?;
        let status = reply.status.as_u16();
        if matches!(status, 404 | 410) {
            return Ok(None);
        }
        let Some(body) = reply.body else {
            return Err(self.http.permanent(format_args!("GET {url}: HTTP {status}")));
        };
        let content_type = reply
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let charset = extract::charset_of_content_type(&content_type);
        let format = match Format::of_mime(&content_type) {
            Format::Unsupported => Format::sniff(&body),
            f => f,
        };
        let source_sha256 = sources::sha256_hex(&body);
        let validator = validator_of(&reply.headers).unwrap_or_else(|| format!("sha256:{}", &source_sha256[..16]));
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let mut meta = DocMeta {
            id: DocumentId(url.as_str().to_owned()),
            modified_at: clock::header_date(&reply.headers, LAST_MODIFIED),
            title: path_title(url),
            url: Some(url.as_str().to_owned()),
            mime_type: (!mime.is_empty()).then_some(mime),
            size: Some(body.len() as u64),
            ..DocMeta::default()
        };
        if reply.truncated {
            let cap = self.settings.max_page_bytes;
            meta.version = join_version(&validator, &meta.title);
            meta.size = None;
            return Ok(Some(FetchedDoc::metadata_only(
                meta,
                format!("not read: the page is over max_page_bytes ({cap})"),
            )));
        }
        let mut links = Vec::new();
        let mut raw_html = None;
        if format == Format::Html {
            let html = extract::decode_html(&body, charset.as_deref());
            if let Some(t) = extract::html_title(&html) {
                meta.title = t;
            }
            // Relative links resolve against where the page was served from, as a browser's do.
            links = page_links(&html, &reply.url);
            raw_html = self.settings.keep_raw_html.then_some(html);
        }
        meta.version = join_version(&validator, &meta.title);
        let final_url = reply.url;
        let text = tokio::task::spawn_blocking(move || extract::extract(&body, format, charset.as_deref()))
            .await
            .map_err(|e| self.http.permanent(format_args!("GET {url}: extraction stopped: {e}")))?
            .map_err(|e| self.http.permanent(format_args!("GET {final_url}: {e}")))?;
        let content_note = (format == Format::Unsupported).then(|| {
            let mime = meta.mime_type.as_deref().unwrap_or("this content type");
            format!("no text: {mime} has no text extractor")
        });
        Ok(Some(FetchedDoc {
            meta,
            content: text,
            links,
            source_sha256: Some(source_sha256),
            content_note,
            raw_html,
        }))
    }
}

#[async_trait]
impl Source for HttpSource {
    fn id(&self) -> &SourceId {
        self.client.http.source()
    }

    async fn open_feed(
        &self,
        checkpoint: &Checkpoint,
        _mode: SyncMode,
        held: Held,
        calls: ApiCalls,
    ) -> Result<Box<dyn ChangeFeed>, Error> {
        let listing = feed::Listing::open(&self.client, &calls).await?;
        Ok(Box::new(HttpFeed::new(
            Arc::clone(&self.client),
            listing,
            held,
            calls,
            checkpoint,
        )))
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
            match Url::parse(&doc.id.0) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => wanted.push(url),
                // Not a URL we could have listed: nothing to fetch.
                _ => out.missing.push(doc.id.clone()),
            }
        }
        let pages = wanted.into_iter().map(|url| {
            let c = Arc::clone(c);
            let calls = calls.clone();
            async move {
                let r = c.get_page(&url, &calls).await;
                (url, r)
            }
        });
        let results: Vec<(Url, Result<Option<FetchedDoc>, Error>)> = futures::stream::iter(pages)
            .buffered(c.settings.concurrency.clamp(1, MAX_CONCURRENCY))
            .collect()
            .await;
        let fetched_any = results.iter().any(|(_, r)| r.is_ok());
        let permissions = c.settings.permissions();
        for (url, result) in results {
            let id = DocumentId(url.as_str().to_owned());
            match result {
                Ok(Some(mut doc)) => {
                    doc.meta.permissions = Some(permissions.clone());
                    out.docs.push(doc);
                }
                Ok(None) => out.missing.push(id),
                // Throttled or down for every page: the job as a whole waits and retries.
                Err(e) if e.is_retryable() && !fetched_any => return Err(e),
                Err(e) => out.failed.push((id, e)),
            }
        }
        Ok(out)
    }
}

/// Web servers' answers: 429 and 5xx are transient; every other status (304,
/// 404/410, other 4xx) goes back to the probe or fetch that decides what it means.
fn classify(reply: &client::Reply) -> Verdict {
    if client::is_transient(reply.status) {
        client::transient_verdict(reply, format!("HTTP {}", reply.status.as_u16()))
    } else {
        Verdict::Accept
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::html::decode_entities;
    use super::*;
    use crate::sources::Observation;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    /// Versions carry the validator on the first line; only ETags and valid dates become conditions.
    #[test]
    fn versions_and_conditions() {
        let v = join_version("etag:\"abc\"", "Title");
        assert_eq!(split_version(&v), ("etag:\"abc\"", Some("Title")));
        assert_eq!(conditional("etag:\"abc\""), Some((IF_NONE_MATCH, "\"abc\"".into())));
        let lm = "lm:Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(
            conditional(lm).map(|(_, v)| v).as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );
        assert_eq!(
            validator_time(lm).map(|t| t.to_rfc3339()).as_deref(),
            Some("2015-10-21T07:28:00+00:00")
        );
        assert!(conditional("lm:yesterday").is_none());
        assert!(conditional("sha256:0123").is_none());
        assert!(conditional(UNVALIDATED).is_none());
        let mut h = HeaderMap::new();
        h.insert(LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("hv"));
        assert_eq!(validator_of(&h).as_deref(), Some(lm));
        h.insert(ETAG, "W/\"x\"".parse().expect("hv"));
        assert_eq!(validator_of(&h).as_deref(), Some("etag:W/\"x\""));
        assert_eq!(
            decode_entities("a &lt;b&gt; &#65;&#x42; &bogus; & x"),
            "a <b> AB &bogus; & x"
        );
    }

    /// A server answering 503 twice and then 200: every attempt is counted and the
    /// probe succeeds; with too few retries the error is Retryable, naming the URL and status.
    #[tokio::test]
    async fn server_errors_are_retried_then_reported() {
        let hits = Arc::new(AtomicU64::new(0));
        let h = Arc::clone(&hits);
        let app = Router::new().route(
            "/page",
            get(move || {
                let h = Arc::clone(&h);
                async move {
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    let mut headers = AxHeaders::new();
                    if n % 3 < 2 {
                        headers.insert("retry-after", "0".parse().expect("hv"));
                        (AxStatus::SERVICE_UNAVAILABLE, headers, "busy").into_response()
                    } else {
                        headers.insert("etag", "\"v1\"".parse().expect("hv"));
                        headers.insert("content-type", "text/html".parse().expect("hv"));
                        (AxStatus::OK, headers, "<title>Page</title>").into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let page = url(&format!("http://{addr}/page"));
        let src = HttpSource::new(
            SourceId::new("web").expect("id"),
            HttpSettings::new(vec![page.clone()]),
            reqwest::Client::new(),
            &Gates::local(),
        )
        .expect("source");

        let calls = ApiCalls::default();
        let mut feed = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                crate::sources::nothing_held(),
                calls.clone(),
            )
            .await
            .expect("open");
        let page_obs = feed.next_page().await.expect("retried to success").expect("a page");
        assert_eq!(calls.get(), 3, "two 503s and the success are all counted");
        match &page_obs.observations[..] {
            [Observation::Present(m)] => assert!(m.version.starts_with("etag:\"v1\"\n"), "{m:?}"),
            other => panic!("expected one present page, got {other:?}"),
        }

        let fetched = src.fetch(&[], &calls).await.expect("empty fetch");
        assert!(fetched.docs.is_empty());
        let got = src
            .fetch(
                &[DocMeta {
                    id: DocumentId(page.as_str().to_owned()),
                    version: String::new(),
                    title: String::new(),
                    parent: None,
                    modified_at: None,
                    ..DocMeta::default()
                }],
                &calls,
            )
            .await
            .expect("fetch retried to success");
        assert_eq!(got.docs[0].meta.title, "Page");
        assert_eq!(got.docs[0].meta.version, "etag:\"v1\"\nPage");

        let mut s = HttpSettings::new(vec![page.clone()]);
        s.max_retries = 1;
        let impatient = HttpSource::new(
            SourceId::new("web").expect("id"),
            s,
            reqwest::Client::new(),
            &Gates::local(),
        )
        .expect("source");
        let calls = ApiCalls::default();
        let mut feed = impatient
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                crate::sources::nothing_held(),
                calls.clone(),
            )
            .await
            .expect("open");
        match feed.next_page().await {
            Err(Error::Retryable { context, after }) => {
                assert!(
                    context.contains("HEAD") && context.contains("/page") && context.contains("HTTP 503"),
                    "{context}"
                );
                assert!(context.starts_with("source web: "), "{context}");
                assert_eq!(after, Some(Duration::ZERO));
            }
            other => panic!("expected Retryable, got {:?}", other.map(|p| p.map(|p| p.observations))),
        }
        assert_eq!(calls.get(), 2, "first try + 1 retry");
    }
}
