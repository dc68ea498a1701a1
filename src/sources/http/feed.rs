//! One run's feed: the configured set (urls plus the sitemap's), probed with
//! conditional requests, [`FEED_PAGE`] URLs per page.
//!
//! Invariants:
//! - Every feed is a complete listing of the configured set. A page is left
//!   out only when the server said `404`/`410`; another 4xx keeps the held
//!   version (counted in the note). A URL whose probe fails (network error,
//!   redirect loop, 5xx/429 once retries run out) is reported unvalidated, so
//!   the worker fetches it and records the failure as that document's own while
//!   the rest syncs; when every probe of a page fails the server is down and the
//!   run fails, so an unreachable server deletes nothing.
//! - At most `concurrency` probes of one page are in flight.
//! - What we hold is looked up a page at a time (one batch per [`FEED_PAGE`]
//!   URLs), never loaded whole; the sitemap is read a child sitemap at a time
//!   ([`Listing`]), so memory is bounded by one child's URLs, not the set.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use url::Url;

use super::settings::MAX_CONCURRENCY;
use super::{Client, Probe};
use crate::sources::{ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, FeedEnd, FeedPage, Held, Observation};
use crate::types::DocumentId;

/// URLs probed per feed page.
const FEED_PAGE: usize = 100;

/// What a feed saw, for its note.
#[derive(Debug, Default)]
struct Counts {
    not_modified: u64,
    changed: u64,
    gone: u64,
    failed: u64,
    refused: u64,
    refused_status: Vec<u16>,
}

/// The configured set as a run reads it: the `urls`, then the sitemap's, one
/// child sitemap at a time, so at most one child's URLs (the protocol allows
/// 50,000) wait in memory, never the whole set. De-duplicated against the
/// `urls` and within each sitemap; a URL listed by two child sitemaps is
/// probed twice (harmless: the coordinator merges what a listing repeats).
pub(super) struct Listing {
    /// URLs read and not yet probed, in order.
    pending: VecDeque<Url>,
    /// Child sitemaps of an index not yet read.
    children: VecDeque<Url>,
    /// The configured `urls`, so a sitemap naming one again does not repeat it.
    configured: HashSet<String>,
    sitemap: Option<Url>,
    /// URLs the sitemap named, child sitemaps it had, `<loc>`s that were not http(s) URLs.
    found: usize,
    child_sitemaps: usize,
    skipped: usize,
    /// URLs handed out for probing.
    listed: usize,
}

impl Listing {
    /// Starts the listing: the configured `urls`, and the sitemap itself read
    /// (its URLs, or the child sitemaps of an index, read as probing reaches them).
    pub(super) async fn open(client: &Client, calls: &ApiCalls) -> Result<Self, Error> {
        let mut listing = Self {
            pending: client.configured.iter().cloned().collect(),
            children: VecDeque::new(),
            configured: client.configured.iter().map(|u| u.as_str().to_owned()).collect(),
            sitemap: client.settings.sitemap.clone(),
            found: 0,
            child_sitemaps: 0,
            skipped: 0,
            listed: 0,
        };
        if let Some(sitemap) = listing.sitemap.clone() {
            let (is_index, locs, skipped) = client.read_sitemap(&sitemap, calls).await?;
            listing.skipped += skipped;
            if is_index {
                listing.child_sitemaps = locs.len();
                listing.children = locs.into();
            } else {
                listing.add(locs);
            }
        }
        Ok(listing)
    }

    fn add(&mut self, urls: Vec<Url>) {
        self.found += urls.len();
        let mut this_sitemap: HashSet<String> = HashSet::new();
        for url in urls {
            if !self.configured.contains(url.as_str()) && this_sitemap.insert(url.as_str().to_owned()) {
                self.pending.push_back(url);
            }
        }
    }

    /// The next `n` URLs to probe (fewer only at the end), reading child sitemaps as needed.
    async fn next_batch(&mut self, client: &Client, calls: &ApiCalls, n: usize) -> Result<Vec<Url>, Error> {
        while self.pending.len() < n
            && let Some(child) = self.children.pop_front()
        {
            let (nested, locs, skipped) = client.read_sitemap(&child, calls).await?;
            self.skipped += skipped;
            if nested {
                tracing::warn!(source = %client.http.source(), sitemap = %child, "nested sitemap index not followed");
                continue;
            }
            self.add(locs);
        }
        let take = n.min(self.pending.len());
        self.listed += take;
        Ok(self.pending.drain(..take).collect())
    }

    /// What the sitemap contributed, for the run note.
    fn note(&self) -> Option<String> {
        let sitemap = self.sitemap.as_ref()?;
        let mut n = format!("sitemap {sitemap}: {} URL(s)", self.found);
        if self.child_sitemaps > 0 {
            n.push_str(&format!(" from {} child sitemap(s)", self.child_sitemaps));
        }
        if self.skipped > 0 {
            n.push_str(&format!(", {} <loc> entries skipped (not http(s) URLs)", self.skipped));
        }
        Some(n)
    }
}

/// One run's feed: probes the next [`FEED_PAGE`] URLs per page.
pub(super) struct HttpFeed {
    client: Arc<Client>,
    listing: Listing,
    held: Held,
    calls: ApiCalls,
    counts: Counts,
    /// The checkpoint the run started from.
    checkpoint: Checkpoint,
}

impl HttpFeed {
    /// A feed over the configured set as `listing` reads it, starting from
    /// `checkpoint`; `held` gives each probe its condition.
    pub(super) fn new(
        client: Arc<Client>,
        listing: Listing,
        held: Held,
        calls: ApiCalls,
        checkpoint: &Checkpoint,
    ) -> Self {
        Self {
            client,
            listing,
            held,
            calls,
            counts: Counts::default(),
            checkpoint: checkpoint.clone(),
        }
    }
}

#[async_trait]
impl ChangeFeed for HttpFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        let batch = self.listing.next_batch(&self.client, &self.calls, FEED_PAGE).await?;
        if batch.is_empty() {
            return Ok(None);
        }
        // What we hold for this page's URLs, looked up at once: each probe's condition.
        let ids: Vec<DocumentId> = batch.iter().map(|url| DocumentId(url.as_str().to_owned())).collect();
        let versions = self.held.versions_of(&ids).await?;
        let probes = batch
            .iter()
            .cloned()
            .zip(versions.iter().cloned())
            .map(|(url, version)| {
                let c = Arc::clone(&self.client);
                let calls = self.calls.clone();
                async move { c.probe(&url, version.as_deref(), &calls).await }
            });
        let probes: Vec<Result<Probe, Error>> = futures::stream::iter(probes)
            .buffered(self.client.settings.concurrency.clamp(1, MAX_CONCURRENCY))
            .collect()
            .await;
        let mut observations = Vec::new();
        // A server that answers nothing at all is down: fail the run, delete nothing.
        // One URL that fails (a timeout, a redirect loop, a 5xx after retries)
        // fails alone: it is reported unvalidated, so the worker fetches it and
        // records its error as the document's own, and the rest of the source syncs.
        if let Some(first) = probes.iter().find_map(|p| p.as_ref().err())
            && probes.iter().all(Result::is_err)
        {
            return Err(first.clone());
        }
        for ((url, probe), version) in batch.into_iter().zip(probes).zip(versions) {
            let probe = match probe {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(source = %self.client.http.source(), %url, error = %e, "probe failed; the page is fetched to record its error");
                    self.counts.failed += 1;
                    let id = DocumentId(url.as_str().to_owned());
                    let title = version
                        .as_deref()
                        .and_then(|v| super::split_version(v).1.map(str::to_owned))
                        .unwrap_or_else(|| super::path_title(&url));
                    observations.push(Observation::Present(DocMeta {
                        version: super::join_version(super::UNVALIDATED, &title),
                        id,
                        title,
                        ..DocMeta::default()
                    }));
                    continue;
                }
            };
            match probe {
                Probe::Present { meta, unchanged } => {
                    if unchanged {
                        self.counts.not_modified += 1;
                    } else {
                        self.counts.changed += 1;
                    }
                    observations.push(Observation::Present(meta));
                }
                // Not reported: the listing is complete, so the coordinator deletes it.
                Probe::Gone => self.counts.gone += 1,
                Probe::Refused { status, kept } => {
                    self.counts.refused += 1;
                    if !self.counts.refused_status.contains(&status) {
                        self.counts.refused_status.push(status);
                    }
                    observations.extend(kept.map(Observation::Present));
                }
            }
        }
        let mut page = FeedPage { observations };
        page.grant(&self.client.settings.permissions());
        Ok(Some(page))
    }

    fn end(&self) -> FeedEnd {
        let k = &self.counts;
        let mut note = format!(
            "complete listing of {} URL(s): {} not modified, {} changed or new, {} gone (404/410)",
            self.listing.listed, k.not_modified, k.changed, k.gone
        );
        if k.refused > 0 {
            let statuses: Vec<String> = k.refused_status.iter().map(u16::to_string).collect();
            note.push_str(&format!(
                ", {} refused (HTTP {}; held versions kept)",
                k.refused,
                statuses.join("/")
            ));
        }
        if k.failed > 0 {
            note.push_str(&format!(
                ", {} failed to answer (fetched to record their errors)",
                k.failed
            ));
        }
        if let Some(s) = self.listing.note() {
            note = format!("{s}; {note}");
        }
        FeedEnd {
            checkpoint: listing_checkpoint(&self.checkpoint),
            complete_listing: true,
            note: Some(note),
        }
    }
}

/// The checkpoint after a complete listing: no cursor or watermark to keep (every
/// run lists everything); other fields, including ones the coordinator keeps, carry over.
fn listing_checkpoint(previous: &Checkpoint) -> Checkpoint {
    let mut next = previous.clone();
    next.cursor = None;
    next.watermark = None;
    next.runs_since_sweep = 0;
    next
}
