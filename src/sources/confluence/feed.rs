//! One run's change feed: a v2 listing of every page of the space, or a v1
//! CQL search for pages modified since the watermark followed by a v2 listing
//! of the space's trash; one response per `next_page`.
//!
//! Invariants:
//! - The new watermark comes from the *source's* clock: the `Date` header of the
//!   feed's first response, else the newest modification seen, else the old
//!   watermark; never our own clock ([`Watermark`]).
//! - A feed reports `complete_listing` only after following every v2 listing
//!   page to the end; CQL feeds never claim completeness.
//! - Only current pages are reported present (archived and other content types
//!   are skipped); every page in the trash is reported deleted (the coordinator
//!   ignores those it does not hold), after the search, so that a page edited
//!   and then trashed during the run ends deleted.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use url::Url;

use super::api::{Client, Reply, V1Search, V2List, V2Page, is_numeric_id};
use crate::sources::clock::Watermark;
use crate::sources::{ApiCalls, ChangeFeed, Checkpoint, Error, FeedEnd, FeedPage, Observation};
use crate::types::DocumentId;

/// Which endpoint a feed walks.
pub(super) enum FeedKind {
    /// v2 `GET /spaces/{id}/pages`: every page, complete.
    Listing,
    /// v1 CQL `lastmodified >=` search: changes only.
    Search,
    /// v2 `GET /spaces/{id}/pages?status=trashed`: deleted pages not yet purged.
    Trash,
}

/// One run's change feed; pages are requested lazily, one per `next_page`.
pub(super) struct ConfluenceFeed {
    pub(super) client: Arc<Client>,
    pub(super) kind: FeedKind,
    /// The next request; `None` once the last page was returned.
    pub(super) next: Option<Url>,
    /// The listing walked once `next` runs out (the trash, after a search).
    pub(super) then: Option<(FeedKind, Url)>,
    /// Counts every request of the run's feed.
    pub(super) calls: ApiCalls,
    /// The source's clock as this run read it: the `Date` of the feed's first
    /// response, else the newest modification seen; gives the new watermark.
    pub(super) clock: Watermark,
    pub(super) scope: BTreeMap<String, String>,
    pub(super) complete: bool,
    pub(super) runs_since_sweep: u32,
    pub(super) note: String,
}

#[async_trait]
impl ChangeFeed for ConfluenceFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        if self.next.is_none()
            && let Some((kind, url)) = self.then.take()
        {
            self.kind = kind;
            self.next = Some(url);
        }
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
            FeedKind::Trash => {
                let reply: Reply<V2List<V2Page>> = c.get_json(&url, &calls).await?;
                self.clock.observe_date(reply.date);
                for page in &reply.body.results {
                    // The listing asked for the trash only; anything else it holds is not a deletion.
                    if page.status.as_deref().is_none_or(|st| st == "trashed") && is_numeric_id(&page.id) {
                        observations.push(Observation::Deleted(DocumentId(page.id.clone())));
                    }
                }
                if let Some(next) = reply.body.links.and_then(|l| l.next).or(reply.link_next) {
                    self.next = Some(c.resolve_site_path(&next, &url)?);
                }
            }
            FeedKind::Search => {
                let reply: Reply<V1Search> = c.get_json(&url, &calls).await?;
                self.clock.observe_date(reply.date);
                let web_root = c.web_root(reply.body.links.as_ref().and_then(|l| l.base.as_deref()));
                for item in &reply.body.results {
                    if item.status.as_deref().is_some_and(|st| st != "current") {
                        continue;
                    }
                    let attachment = match item.kind.as_deref() {
                        None | Some("page") => false,
                        Some("attachment") => true,
                        Some(_) => continue,
                    };
                    let meta = item.meta(&c, &url)?;
                    self.clock.observe_modified(meta.modified_at);
                    observations.push(Observation::Present(if attachment {
                        item.attachment_meta(meta, &c, &url, &web_root)?
                    } else {
                        meta
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

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::super::SCOPE_SPACE_ID;
    use super::super::tests::{connector, drain, metas, read_feed, start};
    use crate::simulators::confluence::SimConfig;
    use crate::sources::Observation;
    use crate::sources::{ApiCalls, Checkpoint, Source};
    use crate::types::SyncMode;

    /// A full listing walks every cursor page, reports every page with its parent,
    /// and counts exactly one space lookup, one call per 250 pages and one search
    /// for the space's attachments; the space id is cached so the next run skips
    /// the lookup.
    #[tokio::test]
    async fn full_listing_follows_cursors_and_counts_calls() {
        let (sim, base) = start(SimConfig {
            pages: 500,
            seed: 7,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let (pages, end, calls) = read_feed(&src, &Checkpoint::default(), SyncMode::Full).await;
        assert_eq!(pages.len(), 3, "two listing pages, then the (empty) attachment search");
        assert_eq!(calls, 4);
        assert_eq!(sim.total_calls(), 4);
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"), Some(&2));
        assert_eq!(sim.calls().get("GET /wiki/rest/api/content/search"), Some(&1));
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
        let (_, _, calls) = read_feed(&src, &end.checkpoint, SyncMode::Full).await;
        assert_eq!(calls, 3, "cached space id skips the lookup");
        assert_eq!(sim.total_calls(), 3);
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
                crate::sources::nothing_held(),
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

    /// Between sweeps an incremental run costs a CQL search and a trash listing,
    /// whatever the size of the space: edits and creations come from the search,
    /// pages deleted to the trash from the trash. A page deleted and purged at
    /// once leaves no trace until the next complete listing, which the schedule
    /// (`sweep_every_hours`, from the saved `swept_at`) brings.
    #[tokio::test]
    async fn between_sweeps_search_and_trash_find_every_change_but_purges() {
        let (sim, base) = start(SimConfig {
            pages: 600,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let (_, full, _) = read_feed(&src, &Checkpoint::default(), SyncMode::Full).await;
        assert!(full.checkpoint.scope.contains_key(super::super::SCOPE_SWEPT_AT));

        let all = sim.pages();
        let (edited, trashed, purged) = (all[10].id.clone(), all[20].id.clone(), all[30].id.clone());
        assert!(sim.update_page(&edited, None, Some("<p>edited</p>")));
        let created = sim.create_page("New page", Some(&all[40].id), "<p>new</p>");
        assert!(sim.delete_page(&trashed));
        assert!(sim.delete_and_purge_page(&purged));
        assert_eq!(sim.trash().len(), 1);
        sim.reset_calls();
        let (pages, end, calls) = read_feed(&src, &full.checkpoint, SyncMode::Incremental).await;
        assert_eq!(calls, 2, "{:?}", sim.calls());
        assert_eq!(sim.calls().get("GET /wiki/rest/api/content/search"), Some(&1));
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"), Some(&1));
        assert!(!end.complete_listing);
        let mut present: Vec<String> = metas(&pages).into_iter().map(|m| m.id.0).collect();
        present.sort();
        assert_eq!(present, vec![edited.clone(), created.clone()]);
        let deleted: Vec<String> = pages
            .iter()
            .flat_map(|p| &p.observations)
            .filter_map(|o| match o {
                Observation::Deleted(d) => Some(d.0.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            vec![trashed.clone()],
            "the purged page leaves no trace in the trash"
        );

        // A day later (by the saved swept_at) the run is a complete listing, which
        // no longer lists the purged page: the coordinator deletes what it holds of it.
        let mut due = end.checkpoint.clone();
        due.scope.insert(
            super::super::SCOPE_SWEPT_AT.to_owned(),
            (Utc::now() - chrono::Duration::hours(25)).to_rfc3339(),
        );
        let (pages, swept, _) = read_feed(&src, &due, SyncMode::Incremental).await;
        assert!(swept.complete_listing);
        let listed: Vec<String> = metas(&pages).into_iter().map(|m| m.id.0).collect();
        assert_eq!(listed.len(), 599);
        assert!(!listed.contains(&purged) && !listed.contains(&trashed) && listed.contains(&created));
        assert!(
            swept.note.as_deref().is_some_and(|n| n.contains("sweep due")),
            "{:?}",
            swept.note
        );
    }

    /// With sweep_every = 5, the second incremental run uses CQL and finds a page
    /// edited after the watermark, although the source clock runs 3 minutes behind
    /// ours and its CQL literals are read in America/New_York; the watermark is the
    /// simulator's Date header. The fifth run is a complete listing again.
    #[tokio::test]
    async fn incremental_cql_uses_source_clock_and_timezone() {
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
            s.sweep_every = Some(5);
        });
        let before = Utc::now() + skew;
        let (_, first, _) = read_feed(&src, &Checkpoint::default(), SyncMode::Incremental).await;
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
        let (pages, second, calls) = read_feed(&src, &first.checkpoint, SyncMode::Incremental).await;
        assert_eq!(sim.calls().get("GET /wiki/rest/api/content/search"), Some(&1));
        assert_eq!(
            sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"),
            Some(&1),
            "the trash"
        );
        assert_eq!(calls, 2);
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
        let (pages, third, _) = read_feed(&src, &due, SyncMode::Incremental).await;
        assert!(third.complete_listing);
        assert_eq!(third.checkpoint.runs_since_sweep, 0);
        assert_eq!(metas(&pages).len(), 20);
    }
}
