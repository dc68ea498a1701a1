//! Confluence Cloud connector: one space's pages and their attachments, listed
//! through REST v2 and searched for changes through REST v1 CQL.
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
//!   [`client::RetryingClient`](crate::sources::client::RetryingClient); which statuses are retried is decided here).
//!
//! Where things are:
//! - `settings.rs`: [`ConfluenceSettings`], its defaults and validation;
//! - `api.rs`: the REST client (auth, pagination links kept on our site), the v1
//!   and v2 wire types, Atlassian error bodies and which answers are retried;
//! - `feed.rs`: one run's change feed (a v2 listing or a v1 CQL search);
//! - `attachments.rs`: page attachments as documents (download, extraction, size cap);
//! - `mod.rs` (this file): [`Confluence`], the [`Source`] that chooses the feed and fetches
//!   page bodies, and [`page_links`].

mod access;
mod api;
mod attachments;
mod feed;
mod settings;

use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use url::Url;

use self::access::AccessMap;
use self::api::{Client, Reply, SEARCH_LIMIT, V2List, V2Page, cql_escape, is_attachment_id, is_numeric_id};
use self::feed::{ConfluenceFeed, Stage};
use super::clock::{self, Watermark};
use super::{ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, Fetched, FetchedDoc, Held, Source};
use crate::gate::Gates;
use crate::types::{DocumentId, SourceId, SyncMode};

pub use self::settings::{ConfluenceSettings, MAX_PAGE_LIMIT};

/// Ids per batched v2 `GET /pages?id=...` call (the endpoint's documented maximum).
const FETCH_BATCH: usize = 250;
/// What a v1 search expands to read each page's own read restriction.
pub(super) const RESTRICTIONS_EXPAND: &str = "restrictions.read.restrictions.user,restrictions.read.restrictions.group";
/// `Checkpoint.scope` key caching the numeric space id.
pub const SCOPE_SPACE_ID: &str = "space_id";
/// `Checkpoint.scope` key recording which space key the cached id belongs to.
pub const SCOPE_SPACE_KEY: &str = "space_key";
/// `Checkpoint.scope` key: the restricted pages the last restriction scan
/// saw, as JSON (`{"page id": ["principal", ...]}`), for the runs until the next.
pub const SCOPE_RESTRICTIONS: &str = "restrictions";
/// `Checkpoint.scope` key: incremental runs since the last restriction scan.
pub const SCOPE_RUNS_SINCE_SCAN: &str = "runs_since_restriction_scan";
/// `Checkpoint.scope` key: when the last complete listing started (our clock, RFC 3339).
pub const SCOPE_SWEPT_AT: &str = "swept_at";

/// A Confluence Cloud space as a [`Source`].
pub struct Confluence {
    client: Arc<Client>,
}

impl Confluence {
    /// Builds the connector; fails if the time zone is unknown or the token unreadable.
    pub fn new(
        id: SourceId,
        settings: ConfluenceSettings,
        http: reqwest::Client,
        gates: &Gates,
    ) -> Result<Self, Error> {
        let tz = Tz::from_str(&settings.timezone).map_err(|_| Error::Permanent {
            context: format!("source {id}: timezone {:?} is not an IANA time zone", settings.timezone),
        })?;
        let token = match settings.api_token() {
            Some(secret) => Some(secret.read("api_token").map_err(|e| Error::Permanent {
                context: format!("source {id}: {e}"),
            })?),
            None => None,
        };
        let auth = match (&settings.email, token) {
            (Some(email), Some(token)) => Some((email.clone(), token)),
            _ => None,
        };
        let base = crate::sources::settings::api_root(&settings.base_url);
        let http = settings.client().build(http, id, gates)?;
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

#[async_trait]
impl Source for Confluence {
    fn id(&self) -> &SourceId {
        self.client.http.source()
    }

    async fn open_feed(
        &self,
        checkpoint: &Checkpoint,
        mode: SyncMode,
        held: Held,
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

        let runs_due = s
            .sweep_every
            .is_some_and(|n| checkpoint.runs_since_sweep.saturating_add(1) >= n);
        // Our clock, as for Drive: it only schedules the sweep, it never decides what changed.
        let hours = i64::try_from(s.sweep_every_hours).unwrap_or(i64::MAX).min(1_000_000);
        let time_due = checkpoint
            .scope
            .get(SCOPE_SWEPT_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .is_none_or(|t| Utc::now() - t.with_timezone(&Utc) >= chrono::Duration::hours(hours));
        let listing_reason = match (mode, checkpoint.watermark) {
            (SyncMode::Full, _) => Some("full run"),
            (_, None) => Some("no watermark yet"),
            (_, Some(_)) if runs_due || time_due => Some("deletion sweep due"),
            _ => None,
        };
        let page_limit = s.page_limit.clamp(1, MAX_PAGE_LIMIT).to_string();
        let space_pages = |status: &str| -> Result<Url, Error> {
            let mut url = c.url(&format!("wiki/api/v2/spaces/{space_id}/pages"))?;
            url.query_pairs_mut()
                .append_pair("limit", &page_limit)
                .append_pair("status", status);
            Ok(url)
        };
        // Attachments come from the same search as pages: their page is their `container`.
        let types = if s.attachments {
            "type in (page, attachment)"
        } else {
            "type = page"
        };
        let search = |clauses: &str, expand: &str| -> Result<Url, Error> {
            let cql = format!("space = \"{}\" and {clauses}", cql_escape(&s.space_key));
            let mut url = c.url("wiki/rest/api/content/search")?;
            url.query_pairs_mut()
                .append_pair("cql", &cql)
                .append_pair("limit", &SEARCH_LIMIT.to_string())
                .append_pair("expand", expand);
            Ok(url)
        };
        // Who may read: the space's holders now, every page's restriction
        // by the scan (the feed's first stage), before anything is reported;
        // between scans (`restriction_scan_every`), the restrictions the last
        // scan kept in the scope, under each reported page's own ancestors.
        let space = c.space_readers(&space_id, &calls).await?;
        let runs_since_scan: u32 = checkpoint
            .scope
            .get(SCOPE_RUNS_SINCE_SCAN)
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX);
        let cached = match (listing_reason, checkpoint.scope.get(SCOPE_RESTRICTIONS)) {
            // Only a search of changes skips the scan: a listing reads every page's from it.
            (None, Some(cache))
                if clock.query_from().is_some() && runs_since_scan.saturating_add(1) < s.restriction_scan_every =>
            {
                AccessMap::from_cache(space.clone(), cache)
            }
            _ => None,
        };
        let scanning = cached.is_none();
        let access = cached.unwrap_or_else(|| AccessMap::new(space));
        let runs_since_scan = if scanning { 0 } else { runs_since_scan.saturating_add(1) };
        scope.insert(SCOPE_RUNS_SINCE_SCAN.to_owned(), runs_since_scan.to_string());
        let scan = Stage::Scan(search("type = page", &format!("ancestors,{RESTRICTIONS_EXPAND}"))?);
        let changes_expand = format!("version,ancestors,container,{RESTRICTIONS_EXPAND}");
        let feed = match (listing_reason, clock.query_from()) {
            (None, Some(since)) => {
                let literal = clock::cql_minute_literal(since, c.tz);
                let search = search(&format!("{types} and lastmodified >= \"{literal}\""), &changes_expand)?;
                ConfluenceFeed {
                    client: Arc::clone(&self.client),
                    // A restriction changed moves nothing the search can find:
                    // every page's permissions are announced, the plan keeps
                    // the ones that changed. Deleted pages sit in the space's
                    // trash until purged; search never returns them, so each
                    // such run also reads the trash.
                    stages: if scanning {
                        [
                            scan,
                            Stage::Grants,
                            Stage::Search(search),
                            Stage::Trash(space_pages("trashed")?),
                        ]
                        .into()
                    } else {
                        [Stage::Search(search), Stage::Trash(space_pages("trashed")?)].into()
                    },
                    access,
                    granted: 0,
                    held,
                    calls,
                    clock,
                    scope,
                    complete: false,
                    runs_since_sweep: checkpoint.runs_since_sweep.saturating_add(1),
                    note: format!("CQL changes since {literal} ({}) and the trash", c.tz),
                }
            }
            (reason, _) => {
                scope.insert(SCOPE_SWEPT_AT.to_owned(), Utc::now().to_rfc3339());
                // Only live pages: the default also includes archived ones, which
                // CQL search and our fetch do not return.
                let mut stages: std::collections::VecDeque<Stage> =
                    [scan, Stage::Listing(space_pages("current")?)].into();
                if s.attachments {
                    // Every attachment of the space: v2 lists them per page only.
                    stages.push_back(Stage::Search(search("type = attachment", &changes_expand)?));
                }
                ConfluenceFeed {
                    client: Arc::clone(&self.client),
                    stages,
                    access,
                    granted: 0,
                    held,
                    calls,
                    clock,
                    scope,
                    complete: true,
                    runs_since_sweep: 0,
                    note: format!("complete listing ({})", reason.unwrap_or("no watermark yet")),
                }
            }
        };
        Ok(Box::new(feed))
    }

    fn dies_with_parent(&self, id: &DocumentId) -> bool {
        is_attachment_id(&id.0)
    }

    async fn fetch(&self, docs: &[DocMeta], calls: &ApiCalls) -> Result<Fetched, Error> {
        let c = &self.client;
        let mut out = Fetched::default();
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        let mut attachments = Vec::new();
        for doc in docs {
            if !seen.insert(doc.id.0.as_str()) {
                continue;
            }
            if is_numeric_id(&doc.id.0) {
                wanted.push(doc.id.0.as_str());
            } else if is_attachment_id(&doc.id.0) {
                attachments.push(doc);
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
                let web_root = c.web_root(reply.body.links.as_ref().and_then(|l| l.base.as_deref()));
                for page in reply.body.results {
                    if !requested.contains(page.id.as_str()) || !found.insert(page.id.clone()) {
                        continue;
                    }
                    // One corrupt page fails alone; the rest of the batch is applied.
                    let id = DocumentId(page.id.clone());
                    let meta = match page.meta(c, &url) {
                        Ok(meta) => meta,
                        Err(e) => {
                            out.failed.push((id, e));
                            continue;
                        }
                    };
                    let Some(content) = page.body.and_then(|b| b.storage).map(|s| s.value) else {
                        let e =
                            c.http
                                .permanent(format_args!("GET {}: page {} has no body.storage", url.path(), meta.id));
                        out.failed.push((id, e));
                        continue;
                    };
                    let links = page_links(&content);
                    let url = page
                        .links
                        .as_ref()
                        .and_then(|l| l.webui.as_deref())
                        .map(|webui| format!("{}{webui}", web_root.trim_end_matches('/')));
                    let meta = DocMeta {
                        url,
                        mime_type: Some("text/html".to_owned()),
                        size: Some(content.len() as u64),
                        ..meta
                    };
                    out.docs.push(FetchedDoc {
                        meta,
                        source_sha256: Some(crate::sources::sha256_hex(content.as_bytes())),
                        content: crate::extract::storage_text(&content),
                        links,
                        content_note: None,
                        raw_html: None,
                    });
                }
                match c.v2_next(reply.body.links, reply.link_next, &url)? {
                    Some(next) => url = next,
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
        for meta in attachments {
            match c.fetch_attachment(meta, calls).await {
                Ok(attachments::Fetch::Doc(doc)) => out.docs.push(*doc),
                Ok(attachments::Fetch::Missing) => out.missing.push(meta.id.clone()),
                // A passing failure retries the whole page; a lasting one fails this file alone.
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => out.failed.push((meta.id.clone(), e)),
            }
        }
        // Who may read what no feed announced (an attachment: its page's).
        let announced: HashSet<&DocumentId> = docs.iter().filter(|d| d.permissions.is_some()).map(|d| &d.id).collect();
        let page_of = |d: &FetchedDoc| -> Option<u64> {
            match is_attachment_id(&d.meta.id.0) {
                true => d.meta.parent.as_ref()?.0.parse().ok(),
                false => d.meta.id.0.parse().ok(),
            }
        };
        let mut unknown: Vec<u64> = out
            .docs
            .iter()
            .filter(|d| d.meta.permissions.is_none() && !announced.contains(&d.meta.id))
            .filter_map(page_of)
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        let found = c.permissions_of(&unknown, calls).await?;
        for doc in &mut out.docs {
            if doc.meta.permissions.is_none() && !announced.contains(&doc.meta.id) {
                doc.meta.permissions = page_of(doc).and_then(|p| found.get(&p).cloned());
            }
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
    const MARKERS: [&str; 2] = ["/pages/", "ri:content-id=\""];
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut rest = storage;
    // Whichever marker comes first, so links keep the order they appear in.
    while let Some((at, marker)) = MARKERS
        .iter()
        .filter_map(|m| rest.find(m).map(|at| (at, *m)))
        .min_by_key(|(at, _)| *at)
    {
        rest = &rest[at + marker.len()..];
        let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !id.is_empty() && seen.insert(id.clone()) {
            out.push(DocumentId(id));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The simulator harness every test of the connector shares, and the tests of
    //! `fetch` and [`page_links`].

    use url::Url;

    use super::*;
    use crate::simulators::confluence::{ConfluenceSim, SimConfig};
    use crate::sources::{FeedEnd, FeedPage, Observation};

    pub(super) async fn start(cfg: SimConfig) -> (ConfluenceSim, Url) {
        let sim = ConfluenceSim::new(cfg);
        let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
        (sim, Url::parse(&format!("http://{addr}")).expect("url"))
    }

    pub(super) fn connector(base: Url, tweak: impl FnOnce(&mut ConfluenceSettings)) -> Confluence {
        let mut s = ConfluenceSettings::new(base, "ENG");
        tweak(&mut s);
        Confluence::new(
            SourceId::new("confluence-eng").expect("id"),
            s,
            reqwest::Client::new(),
            &Gates::local(),
        )
        .expect("connector")
    }

    pub(super) async fn drain(feed: &mut Box<dyn ChangeFeed>) -> Result<(Vec<FeedPage>, FeedEnd), Error> {
        let mut pages = Vec::new();
        while let Some(p) = feed.next_page().await? {
            pages.push(p);
        }
        Ok((pages, feed.end()))
    }

    /// Opens a feed at `checkpoint` and reads it to the end: its pages, its end
    /// and the API calls it made.
    pub(super) async fn read_feed(
        src: &Confluence,
        checkpoint: &Checkpoint,
        mode: SyncMode,
    ) -> (Vec<FeedPage>, FeedEnd, u64) {
        let meter = ApiCalls::default();
        let mut feed = src
            .open_feed(checkpoint, mode, crate::sources::nothing_held(), meter.clone())
            .await
            .expect("open");
        let (pages, end) = drain(&mut feed).await.expect("feed");
        (pages, end, meter.get())
    }

    pub(super) fn metas(pages: &[FeedPage]) -> Vec<DocMeta> {
        pages
            .iter()
            .flat_map(|p| &p.observations)
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m.clone()),
                Observation::Deleted(_) | Observation::Moved { .. } | Observation::Access { .. } => None,
            })
            .collect()
    }

    /// `meta` carries the readers the simulator's space permissions and
    /// restrictions give (by the references' rules, `ConfluenceSim::reader_lists`).
    pub(super) fn assert_readers(meta: &DocMeta, sim: &ConfluenceSim) {
        let want = sim.expected_permissions(&meta.id.0).expect("a page the simulator has");
        let got = meta.permissions.as_ref().expect("readers announced");
        assert_eq!(
            (&got.readers, &got.also_required),
            (&want.readers, &want.also_required),
            "{}",
            meta.id
        );
    }

    pub(super) fn permanent_context(e: Error) -> String {
        match e {
            Error::Permanent { context } => context,
            other => panic!("expected Permanent, got {other:?}"),
        }
    }

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
        let id_first = r#"<ac:link><ri:page ri:content-id="7" /></ac:link> <a href="/wiki/spaces/E/pages/3/T">t</a>"#;
        assert_eq!(
            page_links(id_first),
            vec![DocumentId("7".into()), DocumentId("3".into())]
        );
        assert!(page_links("<p>no links</p>").is_empty());
    }

    /// An attachment named by its id alone, with no page (a failed document
    /// retried, or an unsettled one redone, while the state did not hold it),
    /// is looked up first (`GET content/{id}`): fetched under its page, with
    /// its title, version, type and text; one deleted since is missing. (It
    /// failed as "no page to download it from", every run, in a chaos run.)
    #[tokio::test]
    async fn an_attachment_named_without_its_page_is_looked_up() {
        let (sim, base) = start(SimConfig {
            pages: 30,
            attachments: true,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let seeded = sim.attachments();
        let (kept, gone) = (&seeded[0], &seeded[1]);
        assert!(sim.delete_attachment(&gone.id));
        let named = |id: &str| DocMeta {
            id: DocumentId(id.to_owned()),
            ..DocMeta::default()
        };
        sim.reset_calls();
        let meter = ApiCalls::default();
        let got = src
            .fetch(&[named(&kept.id), named(&gone.id)], &meter)
            .await
            .expect("fetch");
        assert_eq!(got.missing, vec![DocumentId(gone.id.clone())]);
        assert!(got.failed.is_empty(), "{:?}", got.failed);
        let [doc] = got.docs.as_slice() else {
            panic!("one attachment fetched: {:?}", got.docs);
        };
        assert_eq!(doc.meta.parent, Some(DocumentId(kept.page_id.clone())));
        assert_eq!(
            (doc.meta.title.as_str(), doc.meta.version.as_str()),
            (kept.title.as_str(), kept.version.to_string().as_str())
        );
        assert_eq!(doc.meta.mime_type.as_deref(), Some(kept.media_type.as_str()));
        assert_eq!(doc.source_sha256.as_deref(), Some(kept.sha256.as_str()));
        assert!(
            doc.meta.url.as_deref().is_some_and(|u| u.contains("preview=")),
            "{doc:?}"
        );
        assert_eq!(
            sim.calls().get("GET /wiki/rest/api/content/{id}"),
            Some(&2),
            "each named attachment looked up once"
        );
        assert_eq!(
            meter.get(),
            3 + 4,
            "two lookups, one download; who may read: the space, its permissions, the page and its ancestors"
        );
        assert_readers(&doc.meta, &sim);
    }

    /// Fetch asks for all ids in one batched call, reports deleted ids as
    /// missing, and hands over each page's text, web UI link and fingerprint;
    /// pages no feed announced readers for get them from four more calls (the
    /// space, its permissions, the pages' restrictions and ancestors, the
    /// ancestors' restrictions), the others from the feed, at no call.
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
                ..DocMeta::default()
            })
            .collect();
        sim.reset_calls();
        let meter = ApiCalls::default();
        let got = src.fetch(&wanted, &meter).await.expect("fetch");
        assert_eq!(meter.get(), 1 + 4, "{:?}", sim.calls());
        assert_eq!(sim.calls().get("GET /wiki/api/v2/pages"), Some(&1));
        for doc in &got.docs {
            assert_readers(&doc.meta, &sim);
        }
        let announced: Vec<DocMeta> = wanted
            .iter()
            .map(|m| DocMeta {
                permissions: Some(crate::permissions::Permissions::public(serde_json::Value::Null)),
                ..m.clone()
            })
            .collect();
        let meter = ApiCalls::default();
        let again = src.fetch(&announced, &meter).await.expect("fetch");
        assert_eq!(meter.get(), 1, "the feed said who may read");
        assert!(again.docs.iter().all(|d| d.meta.permissions.is_none()));
        assert_eq!(got.missing, vec![DocumentId(gone.clone())]);
        assert_eq!(got.docs.len(), 5);
        let now = sim.pages();
        for doc in &got.docs {
            let p = now.iter().find(|p| p.id == doc.meta.id.0).expect("known page");
            assert_eq!(doc.content, crate::extract::storage_text(&p.body));
            assert!(!doc.content.contains('<'), "text, not markup: {:?}", doc.content);
            assert_eq!(
                doc.source_sha256.as_deref(),
                Some(crate::sources::sha256_hex(p.body.as_bytes()).as_str())
            );
            // Atlassian's page link: the collection's `_links.base` (the site's /wiki) plus the page's `webui`.
            let url = doc.meta.url.as_deref().expect("url");
            assert!(
                url.starts_with("http://") && url.contains(&format!("/wiki/spaces/ENG/pages/{}/", p.id)),
                "{url}"
            );
            assert_eq!(doc.meta.version, p.version.to_string());
            assert_eq!(doc.meta.parent.as_ref().map(|d| d.0.clone()), p.parent_id);
        }
    }
}
