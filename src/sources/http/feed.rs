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

/// One run's feed: probes the next [`FEED_PAGE`] URLs per page.
pub(super) struct HttpFeed {
    client: Arc<Client>,
    urls: Vec<Url>,
    next: usize,
    held: Held,
    calls: ApiCalls,
    counts: Counts,
    sitemap_note: Option<String>,
    /// The checkpoint the run started from.
    checkpoint: Checkpoint,
}

impl HttpFeed {
    /// A feed over `urls` (the configured set as listed for this run), starting
    /// from `checkpoint`; `held` gives each probe its condition.
    pub(super) fn new(
        client: Arc<Client>,
        urls: Vec<Url>,
        held: Held,
        calls: ApiCalls,
        sitemap_note: Option<String>,
        checkpoint: &Checkpoint,
    ) -> Self {
        Self {
            client,
            urls,
            next: 0,
            held,
            calls,
            counts: Counts::default(),
            sitemap_note,
            checkpoint: checkpoint.clone(),
        }
    }
}

#[async_trait]
impl ChangeFeed for HttpFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        if self.next >= self.urls.len() {
            return Ok(None);
        }
        let end = (self.next + FEED_PAGE).min(self.urls.len());
        // Owned per-probe data: the boxed future of this method must not hold
        // borrows with higher-ranked lifetimes across the stream.
        let probes = self.urls[self.next..end].iter().cloned().map(|url| {
            let c = Arc::clone(&self.client);
            let held = Arc::clone(&self.held);
            let calls = self.calls.clone();
            async move {
                let version = held.get(&DocumentId(url.as_str().to_owned())).cloned();
                c.probe(&url, version.as_deref(), &calls).await
            }
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
        let batch: Vec<Url> = self.urls[self.next..end].to_vec();
        for (url, probe) in batch.into_iter().zip(probes) {
            let probe = match probe {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(source = %self.client.http.source(), %url, error = %e, "probe failed; the page is fetched to record its error");
                    self.counts.failed += 1;
                    let id = DocumentId(url.as_str().to_owned());
                    let title = self
                        .held
                        .get(&id)
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
        self.next = end;
        Ok(Some(FeedPage { observations }))
    }

    fn end(&self) -> FeedEnd {
        let k = &self.counts;
        let mut note = format!(
            "complete listing of {} URL(s): {} not modified, {} changed or new, {} gone (404/410)",
            self.urls.len(),
            k.not_modified,
            k.changed,
            k.gone
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
        if let Some(s) = &self.sitemap_note {
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
