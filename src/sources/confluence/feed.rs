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

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use url::Url;

use super::SCOPE_RESTRICTIONS;
use super::access::AccessMap;
use super::api::{Client, Reply, V1Search, V2List, V2Page, is_attachment_id, is_numeric_id};
use crate::sources::clock::Watermark;
use crate::sources::{ApiCalls, ChangeFeed, Checkpoint, Error, FeedEnd, FeedPage, Held, Observation};
use crate::types::DocumentId;

/// Pages whose permissions one feed page announces (with their held attachments).
const GRANT_BATCH: usize = 1000;

/// One stretch of a feed, walked in order.
pub(super) enum Stage {
    /// v1 search of every page with its ancestors and read restriction: the
    /// [`AccessMap`] every later stage reads permissions from (no observations).
    Scan(Url),
    /// Every scanned page's permissions, and its held attachments', as
    /// [`Observation::Access`]: restriction changes move nothing else.
    Grants,
    /// v2 `GET /spaces/{id}/pages`: every page, complete.
    Listing(Url),
    /// v1 CQL search: changes only (or, in a complete listing, the attachments).
    Search(Url),
    /// v2 `GET /spaces/{id}/pages?status=trashed`: deleted pages not yet purged.
    Trash(Url),
}

/// One run's change feed; pages are requested lazily, one per `next_page`.
pub(super) struct ConfluenceFeed {
    pub(super) client: Arc<Client>,
    /// What is left to walk, the current stretch first.
    pub(super) stages: VecDeque<Stage>,
    /// Who may read what, as this run's scan found it.
    pub(super) access: AccessMap,
    /// The next page of the map that [`Stage::Grants`] announces.
    pub(super) granted: usize,
    /// What we hold (for each page's attachments).
    pub(super) held: Held,
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

/// A v1 `_links.next` (relative to `_links.base`, site + context "/wiki")
/// rebuilt on our own base URL.
fn v1_next(c: &Client, links: Option<super::api::V1Links>, url: &Url) -> Result<Option<Url>, Error> {
    let Some(links) = links else { return Ok(None) };
    let Some(next) = links.next else { return Ok(None) };
    let next = if next.starts_with("http://") || next.starts_with("https://") {
        next
    } else {
        let context = links.context.unwrap_or_else(|| "/wiki".to_owned());
        format!("{}{}", context.trim_end_matches('/'), next)
    };
    c.resolve_site_path(&next, url).map(Some)
}

/// A numeric page id as a number (ids beyond u64 are malformed).
fn page_number(c: &Client, id: &str, url: &Url) -> Result<u64, Error> {
    id.parse().map_err(|_| {
        c.http
            .permanent(format_args!("GET {}: page id {id:?} is not a number", url.path()))
    })
}

impl ConfluenceFeed {
    /// A listing or search page: `next` is the rest of its stage.
    fn go_on(&mut self, next: Option<Url>, stage: fn(Url) -> Stage) {
        if let Some(url) = next {
            self.stages.push_front(stage(url));
        }
    }

    async fn scan(&mut self, url: Url) -> Result<Vec<Observation>, Error> {
        let c = Arc::clone(&self.client);
        let reply: Reply<V1Search> = c.get_json(&url, &self.calls).await?;
        self.clock.observe_date(reply.date);
        for item in &reply.body.results {
            let current = item.status.as_deref().is_none_or(|st| st == "current");
            if !current || item.kind.as_deref().is_some_and(|k| k != "page") {
                continue;
            }
            let id = page_number(&c, &item.id, &url)?;
            let parent = match item.ancestors.last() {
                Some(a) => Some(page_number(&c, &a.id, &url)?),
                None => None,
            };
            let restriction = c
                .restriction(&item.id, item.restrictions.as_ref(), &self.calls)
                .await?
                .ok_or_else(|| {
                    c.http.permanent(format_args!(
                        "GET {}: page {} lacks restrictions.read (expand=restrictions.read.restrictions.user)",
                        url.path(),
                        item.id
                    ))
                })?;
            self.access.insert(id, parent, restriction);
        }
        match v1_next(&c, reply.body.links, &url)? {
            Some(next) => self.stages.push_front(Stage::Scan(next)),
            None => {
                self.access.seal();
                // For the runs until the next scan, if any run goes without
                // one (else the checkpoint would carry it for nothing); too
                // large to keep, they scan.
                let cache = (self.client.settings.restriction_scan_every > 1)
                    .then(|| self.access.cache())
                    .flatten();
                match cache {
                    Some(cache) => self.scope.insert(SCOPE_RESTRICTIONS.to_owned(), cache),
                    None => self.scope.remove(SCOPE_RESTRICTIONS),
                };
            }
        }
        Ok(Vec::new())
    }

    async fn grants(&mut self) -> Result<Vec<Observation>, Error> {
        let pages: Vec<u64> = self.access.pages().skip(self.granted).take(GRANT_BATCH).collect();
        self.granted += pages.len();
        if self.granted < self.access.len() {
            self.stages.push_front(Stage::Grants);
        }
        let ids: Vec<DocumentId> = pages.iter().map(|p| DocumentId(p.to_string())).collect();
        let children = self.held.children_each(&ids).await?;
        let mut observations = Vec::new();
        for ((page, id), kids) in pages.iter().zip(ids).zip(children) {
            let Some(permissions) = self.access.of_page(*page) else {
                continue;
            };
            for kid in kids.into_iter().filter(|k| is_attachment_id(&k.0)) {
                observations.push(Observation::Access {
                    id: kid,
                    permissions: permissions.clone(),
                });
            }
            observations.push(Observation::Access { id, permissions });
        }
        Ok(observations)
    }

    async fn listing(&mut self, url: Url) -> Result<Vec<Observation>, Error> {
        let c = Arc::clone(&self.client);
        let reply: Reply<V2List<V2Page>> = c.get_json(&url, &self.calls).await?;
        self.clock.observe_date(reply.date);
        let mut observations = Vec::new();
        for page in &reply.body.results {
            if page.status.as_deref().is_some_and(|st| st != "current") {
                continue;
            }
            let mut meta = page.meta(&c, &url)?;
            self.clock.observe_modified(meta.modified_at);
            meta.permissions = page.id.parse().ok().and_then(|n| self.access.of_page(n));
            observations.push(Observation::Present(meta));
        }
        let next = c.v2_next(reply.body.links, reply.link_next, &url)?;
        self.go_on(next, Stage::Listing);
        Ok(observations)
    }

    async fn trash(&mut self, url: Url) -> Result<Vec<Observation>, Error> {
        let c = Arc::clone(&self.client);
        let reply: Reply<V2List<V2Page>> = c.get_json(&url, &self.calls).await?;
        self.clock.observe_date(reply.date);
        let mut observations = Vec::new();
        for page in &reply.body.results {
            // The listing asked for the trash only; anything else it holds is not a deletion.
            if page.status.as_deref().is_none_or(|st| st == "trashed") && is_numeric_id(&page.id) {
                observations.push(Observation::Deleted(DocumentId(page.id.clone())));
            }
        }
        let next = c.v2_next(reply.body.links, reply.link_next, &url)?;
        self.go_on(next, Stage::Trash);
        Ok(observations)
    }

    async fn search(&mut self, url: Url) -> Result<Vec<Observation>, Error> {
        let c = Arc::clone(&self.client);
        let reply: Reply<V1Search> = c.get_json(&url, &self.calls).await?;
        self.clock.observe_date(reply.date);
        let web_root = c.web_root(reply.body.links.as_ref().and_then(|l| l.base.as_deref()));
        let mut observations = Vec::new();
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
            let mut meta = if attachment {
                item.attachment_meta(meta, &c, &url, &web_root)?
            } else {
                meta
            };
            meta.permissions = if attachment {
                // As readable as its page.
                meta.parent
                    .as_ref()
                    .and_then(|p| p.0.parse().ok())
                    .and_then(|n| self.access.of_page(n))
            } else {
                self.page_permissions(item, &url).await?
            };
            observations.push(Observation::Present(meta));
        }
        let next = v1_next(&c, reply.body.links, &url)?;
        self.go_on(next, Stage::Search);
        Ok(observations)
    }

    /// A searched page's permissions: its own restriction as the reply has
    /// it (fresher than the scan's) under its reported ancestors; what the
    /// scan saw when the reply has no restriction; none when neither knows.
    async fn page_permissions(
        &self,
        item: &super::api::V1Content,
        url: &Url,
    ) -> Result<Option<crate::permissions::Permissions>, Error> {
        let c = &self.client;
        let Ok(id) = item.id.parse::<u64>() else {
            return Ok(None);
        };
        let own = c.restriction(&item.id, item.restrictions.as_ref(), &self.calls).await?;
        let ancestors: Result<Vec<u64>, Error> = item.ancestors.iter().map(|a| page_number(c, &a.id, url)).collect();
        Ok(match own {
            Some(own) => Some(self.access.of_reported(id, &ancestors?, Some(&own))),
            None => self.access.of_page(id),
        })
    }
}

#[async_trait]
impl ChangeFeed for ConfluenceFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        let Some(stage) = self.stages.pop_front() else {
            return Ok(None);
        };
        let observations = match stage {
            Stage::Scan(url) => self.scan(url).await?,
            Stage::Grants => self.grants().await?,
            Stage::Listing(url) => self.listing(url).await?,
            Stage::Search(url) => self.search(url).await?,
            Stage::Trash(url) => self.trash(url).await?,
        };
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
    use std::collections::HashMap;

    use super::super::tests::{assert_readers, connector, drain, metas, read_feed, start};
    use super::*;
    use crate::simulators::confluence::{
        SimConfig, SimSpacePermission, SimUser, group_confluence_users, group_engineering,
    };
    use crate::simulators::files::{self, Stored};
    use crate::sources::{DocMeta, HeldMap, Source};
    use crate::types::SyncMode;

    /// A full listing walks every cursor page, reports every page with its
    /// parent and its readers, and counts exactly one space lookup, one call
    /// for the space's permissions, one restriction-scan call per 100 pages,
    /// one listing call per 250 pages and one search for the space's
    /// attachments; the space id is cached so the next run skips the lookup.
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
        assert_eq!(
            pages.len(),
            8,
            "five scan pages, two listing pages, then the (empty) attachment search"
        );
        assert_eq!(calls, 10);
        assert_eq!(sim.total_calls(), 10);
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"), Some(&2));
        assert_eq!(sim.calls().get("GET /wiki/rest/api/content/search"), Some(&6));
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces"), Some(&1));
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/permissions"), Some(&1));
        let seen = metas(&pages);
        let expected = sim.pages();
        assert_eq!(seen.len(), 500);
        for (m, p) in seen.iter().zip(&expected) {
            assert_eq!(m.id.0, p.id);
            assert_eq!(m.version, p.version.to_string());
            assert_eq!(m.title, p.title);
            assert_eq!(m.parent.as_ref().map(|d| d.0.clone()), p.parent_id);
            assert_eq!(m.modified_at, Some(p.modified_at));
            assert_readers(m, &sim);
        }
        let restricted = seen
            .iter()
            .filter(|m| {
                m.permissions
                    .as_ref()
                    .is_some_and(|p| !p.source["restrictions"].as_array().is_none_or(Vec::is_empty))
            })
            .count();
        assert!(
            restricted >= 3,
            "the seed's restricted subtree, nested page and pair: {restricted}"
        );
        assert!(expected.iter().any(|p| p.parent_id.is_some()) && expected.iter().any(|p| p.parent_id.is_none()));
        assert!(end.complete_listing);
        assert_eq!(end.checkpoint.runs_since_sweep, 0);
        assert!(
            !end.checkpoint.scope.contains_key(super::super::SCOPE_RESTRICTIONS),
            "every run scans: no restrictions kept for runs between scans"
        );
        assert_eq!(
            end.checkpoint.scope.get(SCOPE_SPACE_ID).map(String::as_str),
            Some("98304")
        );

        sim.reset_calls();
        let (_, _, calls) = read_feed(&src, &end.checkpoint, SyncMode::Full).await;
        assert_eq!(calls, 9, "cached space id skips the lookup");
        assert_eq!(sim.total_calls(), 9);
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
        let first = loop {
            let page = feed.next_page().await.expect("page").expect("some");
            if !page.observations.is_empty() {
                break page;
            }
        };
        assert_eq!(first.observations.len(), 250);
        let new_id = sim.create_page("Late", None, "<p>late</p>");
        let (rest, end) = drain(&mut feed).await.expect("rest");
        assert!(metas(&rest).iter().any(|m| m.id.0 == new_id));
        assert_eq!(metas(&rest).len(), 51);
        assert!(end.complete_listing);
    }

    /// Between sweeps an incremental run costs a CQL search and a trash
    /// listing, and reading who may read (the space's permissions, and a
    /// restriction scan of a call per 100 pages, since no restriction change
    /// shows in a search): edits and creations come from the search, pages
    /// deleted to the trash from the trash. A page deleted and purged at
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
        assert_eq!(calls, 2 + 1 + 6, "{:?}", sim.calls());
        assert_eq!(sim.calls().get("GET /wiki/rest/api/content/search"), Some(&(1 + 6)));
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"), Some(&1));
        assert_eq!(sim.calls().get("GET /wiki/api/v2/spaces/{id}/permissions"), Some(&1));
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
        assert_eq!(
            sim.calls().get("GET /wiki/rest/api/content/search"),
            Some(&2),
            "the restriction scan, the changes"
        );
        assert_eq!(
            sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"),
            Some(&1),
            "the trash"
        );
        assert_eq!(calls, 4);
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

    /// Held documents (every page, and `attachment` under its page) as a run that synced them holds them.
    fn held_pages(sim: &crate::simulators::confluence::ConfluenceSim, attachment: &(String, String)) -> HeldMap {
        let mut held = HeldMap::default();
        for p in sim.pages() {
            held.insert(
                DocumentId(p.id.clone()),
                p.version.to_string(),
                p.parent_id.map(DocumentId),
            );
        }
        held.insert(
            DocumentId(attachment.0.clone()),
            "1".to_owned(),
            Some(DocumentId(attachment.1.clone())),
        );
        held
    }

    /// A read restriction set on a page moves no version and no time, so no
    /// search finds it: the incremental feed announces every page's readers
    /// (and its held attachments') from the restriction scan, and the page,
    /// its children and its attachment carry the restriction; removed, they
    /// carry the space's readers again. Nothing is reported present.
    #[tokio::test]
    async fn a_restriction_reaches_the_subtree_and_attachments_without_a_change() {
        let (sim, base) = start(SimConfig {
            pages: 60,
            seed: 11,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        // A page with children that nothing restricts yet.
        let pages = sim.pages();
        let top = pages
            .iter()
            .find(|p| {
                pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str()))
                    && sim.ancestor_restrictions(&p.id).iter().all(|(_, r)| r.is_empty())
                    && sim.read_restriction(&p.id).is_some_and(|r| r.is_empty())
            })
            .expect("an unrestricted page with children")
            .id
            .clone();
        let attachment = sim
            .attach(&top, files::stored(Stored::Text, 1, "minutes"))
            .expect("attached");
        let (_, full, _) = read_feed(&src, &Checkpoint::default(), SyncMode::Full).await;
        let held: crate::sources::Held = Arc::new(held_pages(&sim, &(attachment.clone(), top.clone())));
        let engineering = group_engineering();
        assert!(sim.set_read_restriction(&top, Vec::new(), vec![engineering.clone()]));

        let read = |checkpoint: Checkpoint| {
            let (src, held) = (&src, held.clone());
            async move {
                let meter = ApiCalls::default();
                let mut feed = src
                    .open_feed(&checkpoint, SyncMode::Incremental, held, meter.clone())
                    .await
                    .expect("open");
                let (pages, end) = drain(&mut feed).await.expect("feed");
                let access: HashMap<String, crate::permissions::Permissions> = pages
                    .iter()
                    .flat_map(|p| &p.observations)
                    .filter_map(|o| match o {
                        Observation::Access { id, permissions } => Some((id.0.clone(), permissions.clone())),
                        _ => None,
                    })
                    .collect();
                (metas(&pages), access, end)
            }
        };
        let (present, access, end) = read(full.checkpoint.clone()).await;
        // The overlap window reports the attachment again: with its page's readers.
        assert!(present.iter().all(|m| m.id.0 == attachment), "{present:?}");
        for m in &present {
            assert_readers(m, &sim);
        }
        assert_eq!(access.len(), 61, "every page and the held attachment");
        let eng = format!("group:{}", engineering.id);
        let under: Vec<String> = pages
            .iter()
            .filter(|p| p.id == top || sim.ancestor_restrictions(&p.id).iter().any(|(a, _)| *a == top))
            .map(|p| p.id.clone())
            .collect();
        assert!(under.len() >= 2, "the page and its children");
        for id in under.iter().chain([&attachment]) {
            let p = &access[id];
            assert!(p.may_read(&[eng.as_str()]), "{id}: {p:?}");
            assert!(!p.may_read(&[format!("group:{}", group_confluence_users().id)]), "{id}");
            let meta = DocMeta {
                id: DocumentId(id.clone()),
                permissions: Some(p.clone()),
                ..DocMeta::default()
            };
            assert_readers(&meta, &sim);
        }
        assert!(
            access
                .iter()
                .filter(|(id, _)| !under.contains(id) && **id != attachment)
                .all(|(_, p)| !p.may_read(&[eng.as_str()])
                    || p.may_read(&[format!("group:{}", group_confluence_users().id)])
                    || !p.source["restrictions"].as_array().is_none_or(Vec::is_empty)),
            "pages elsewhere keep what they had"
        );

        assert!(sim.set_read_restriction(&top, Vec::new(), Vec::new()));
        let (present, access, _) = read(end.checkpoint).await;
        assert!(present.iter().all(|m| m.id.0 == attachment), "{present:?}");
        for id in under.iter().chain([&attachment]) {
            let meta = DocMeta {
                id: DocumentId(id.clone()),
                permissions: Some(access[id].clone()),
                ..DocMeta::default()
            };
            assert_readers(&meta, &sim);
            assert!(
                access[id].may_read(&[format!("group:{}", group_confluence_users().id)]),
                "{id}"
            );
        }
    }

    /// A restriction naming more users than one list page holds is read to
    /// the end through `byOperation/read`, and a space reader added is seen.
    #[tokio::test]
    async fn long_restrictions_are_paged_and_space_readers_follow() {
        let (sim, base) = start(SimConfig {
            pages: 12,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |_| {});
        let page = sim
            .pages()
            .into_iter()
            .find(|p| sim.reader_lists(&p.id).is_some_and(|l| l.len() == 1))
            .expect("a page nothing restricts")
            .id;
        let users: Vec<SimUser> = (0..230)
            .map(|i| SimUser::new(&format!("557058:{i:08}"), "", "", ""))
            .collect();
        assert!(sim.set_read_restriction(&page, users, Vec::new()));
        sim.add_space_permission(SimSpacePermission::new("group", "g-new", "read", "space"));
        let (pages, _, calls) = read_feed(&src, &Checkpoint::default(), SyncMode::Full).await;
        assert_eq!(
            sim.calls()
                .get("GET /wiki/rest/api/content/{id}/restriction/byOperation/{operation}"),
            Some(&2),
            "{:?}",
            sim.calls()
        );
        assert_eq!(calls, sim.total_calls());
        let metas = metas(&pages);
        let restricted = metas.iter().find(|m| m.id.0 == page).expect("listed");
        assert_readers(restricted, &sim);
        let p = restricted.permissions.as_ref().expect("readers");
        assert!(p.may_read(&["user:atlassian:557058:00000229", "group:g-new"]), "{p:?}");
        for m in &metas {
            assert_readers(m, &sim);
        }
    }

    /// With `restriction_scan_every = 3`, the two runs after a scan read no
    /// restrictions (the search and the trash, and the space's permissions):
    /// a page they report gets its ancestors' restrictions from what the
    /// last scan kept, and a restriction set meanwhile reaches the pages on
    /// the third run, which scans.
    #[tokio::test]
    async fn between_scans_the_last_scan_answers() {
        let (sim, base) = start(SimConfig {
            pages: 150,
            seed: 5,
            ..SimConfig::default()
        })
        .await;
        let src = connector(base, |s| s.restriction_scan_every = 3);
        let (_, full, _) = read_feed(&src, &Checkpoint::default(), SyncMode::Full).await;
        assert!(full.checkpoint.scope.contains_key(super::super::SCOPE_RESTRICTIONS));
        // A page under the seeded restricted subtree, edited: reported with its inherited restriction.
        let (top, _) = sim
            .read_restrictions()
            .into_iter()
            .find(|(_, r)| r.groups == vec![group_engineering()])
            .expect("the seeded subtree");
        let below = sim
            .pages()
            .into_iter()
            .find(|p| p.parent_id.as_deref() == Some(top.as_str()))
            .expect("a child")
            .id;
        assert!(sim.update_page(&below, None, Some("<p>edited</p>")));
        let lone = sim
            .pages()
            .into_iter()
            .find(|p| sim.reader_lists(&p.id).is_some_and(|l| l.len() == 1))
            .expect("an unrestricted page")
            .id;
        assert!(sim.set_read_restriction(&lone, Vec::new(), vec![group_engineering()]));
        sim.reset_calls();
        let (pages, second, calls) = read_feed(&src, &full.checkpoint, SyncMode::Incremental).await;
        assert_eq!(calls, 3, "space permissions, search, trash: {:?}", sim.calls());
        let reported = metas(&pages);
        let edited = reported.iter().find(|m| m.id.0 == below).expect("the edit");
        assert_readers(edited, &sim);
        assert!(
            pages
                .iter()
                .flat_map(|p| &p.observations)
                .all(|o| !matches!(o, Observation::Access { .. })),
            "nothing announced between scans"
        );
        let (_, third, calls) = read_feed(&src, &second.checkpoint, SyncMode::Incremental).await;
        assert_eq!(calls, 3);
        sim.reset_calls();
        let (pages, _, calls) = read_feed(&src, &third.checkpoint, SyncMode::Incremental).await;
        assert_eq!(calls, 3 + 2, "the third run scans: {:?}", sim.calls());
        let announced = pages
            .iter()
            .flat_map(|p| &p.observations)
            .find_map(|o| match o {
                Observation::Access { id, permissions } if id.0 == lone => Some(permissions.clone()),
                _ => None,
            })
            .expect("announced");
        assert_readers(
            &DocMeta {
                id: DocumentId(lone),
                permissions: Some(announced),
                ..DocMeta::default()
            },
            &sim,
        );
    }
}
