//! Google Drive connector: one folder tree (in My Drive or a shared drive),
//! listed through Drive API v3 `files.list` and followed through `changes.list`
//! page tokens.
//!
//! What it owns:
//! - [`GdriveSettings`]: the `settings` table of a `kind = "gdrive"` source;
//! - [`Gdrive`]: the [`Source`] that walks the change feed and downloads file content.
//!
//! | Capability            | Support                                                                                  |
//! |-----------------------|------------------------------------------------------------------------------------------|
//! | Change detection      | yes: `changes.list` from the saved page token; a no-op run is one call                    |
//! | Deletions             | yes: `removed: true` (permanent delete, lost access) and `trashed: true`                  |
//! | Moves                 | yes: a file or folder moved out of the tree is deleted, moved in is listed and created   |
//! | Folder subtrees       | yes: a folder leaving the tree deletes every document under it; one arriving is listed   |
//! | Shared drives         | yes: `drive_id` sends `driveId`, `corpora=drive`, `supportsAllDrives`, `includeItems...` |
//! | Expired/invalid token | yes: `Error::CursorExpired`; the coordinator falls back to a full listing               |
//! | Periodic sweep        | optional: `sweep_every_hours` forces a full listing (deletions by id comparison)         |
//! | Content               | every file but a folder is a document: Docs and Slides exported as `text/plain`,      |
//! |                       | Sheets as `text/csv`; stored files (PDF, Office, text, HTML, CSV...) downloaded with  |
//! |                       | `alt=media` and read by `extract`; images, forms, shortcuts and files over            |
//! |                       | `max_file_bytes` kept as metadata with a `content_note`                              |
//! | Not documents         | folders (their names are the breadcrumbs)                                                |
//! | Cannot detect         | changes to a shortcut's target; items the token's user cannot see; a file kept in two    |
//! |                       | folders (Drive stopped allowing it in 2020; only `parents[0]` is used)                    |
//!
//! Invariants:
//! - A full listing asks for `changes.getStartPageToken` *before* listing, so
//!   anything changed during the listing is in the next incremental run.
//! - The folder tree in scope (folder id -> parent id, name) is connector
//!   state, saved in `Checkpoint.scope` (`folders`; compact JSON): an
//!   incremental run decides scope with no extra call. The documents under a
//!   folder that left the tree come from the state's children index
//!   ([`crate::sources::HeldVersions::children_of`]), and whether a removed
//!   file was ours from one lookup per change page: nothing here grows with
//!   the number of documents.
//! - Changes are applied against the tree as it is at the *end* of the change
//!   list (each change carries the file's *current* resource), so the order in
//!   which a folder move and a change inside that folder are reported does not
//!   matter, nor does a file appearing more than once.
//! - `fetch` returns the feed's metadata with the content as downloaded: a file
//!   edited in between is stored with newer content under the older version, and
//!   the next run (whose change list holds that edit) rewrites it.
//! - A feed claims `complete_listing` only for a full walk of the tree.
//! - Every HTTP attempt, retries included, is counted in `api_calls` (by
//!   [`client::RetryingClient`](crate::sources::client::RetryingClient); the 403 rate-limit rule is decided here).
//! - `DocMeta.version` is `<kind>:<version>` (e.g. `gdoc:12`, `text:3`): Drive's
//!   `version` plus how to read the file. `fetch` only gets `DocMeta`, and a
//!   file's type never changes, so the tag costs nothing in de-duplication and
//!   saves a metadata call per download.
//!
//! Not done here: refreshing OAuth tokens. The bearer token is re-read from
//! `access_token_env` / `access_token_file` for every request, so a sidecar
//! (or `gcloud auth print-access-token` in a cron) that rewrites the file keeps
//! it fresh; minting service-account tokens is out of scope.
//!
//! Where things are:
//! - `settings.rs`: [`GdriveSettings`], its defaults and validation;
//! - `api.rs`: the Drive API client (auth, `files.list`, `changes.list`,
//!   downloads), its wire types, [`GoogleError`] and which answers are retried;
//! - `tree.rs`: the folder tree in scope, reachability, and its encoding in `Checkpoint.scope`;
//! - `feed.rs`: one run's change feed (change list, then folder listings);
//! - `channels.rs`: push channels (`changes.watch`, `channels.stop`);
//! - `mod.rs` (this file): [`Gdrive`], the [`Source`] that chooses the feed and downloads content.

mod api;
mod channels;
mod feed;
mod settings;
mod sharing;
mod tree;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use self::api::Client;
use self::feed::GdriveFeed;
use self::tree::Tree;
use super::{ApiCalls, ChangeFeed, Channel, Checkpoint, DocMeta, Error, Fetched, FetchedDoc, Held, Source};
use crate::gate::Gates;
use crate::types::{DocumentId, SourceId, SyncMode};

pub use self::api::{GoogleError, Kind, MAX_PAGE_SIZE, content_version, is_token_refusal, version_string};
pub use self::channels::MAX_CHANNEL_SECS;
pub use self::settings::GdriveSettings;
pub use self::tree::{
    SCOPE_DOCS, SCOPE_DRIVE_ID, SCOPE_FOLDER_ID, SCOPE_FOLDER_NAME, SCOPE_FOLDERS, SCOPE_SWEPT_AT, scope_folders,
};

/// Downloads in flight per `fetch` (Drive has no batch download: one call per file).
const FETCH_CONCURRENCY: usize = 4;

/// A Google Drive folder tree as a [`Source`].
pub struct Gdrive {
    client: Arc<Client>,
}

impl Gdrive {
    /// Builds the connector; fails if the token source is unreadable now.
    pub fn new(id: SourceId, settings: GdriveSettings, http: reqwest::Client, gates: &Gates) -> Result<Self, Error> {
        // Drive rarely sends Retry-After: its rate-limit 403s raise the fleet's
        // shared, jittered backoff (see crate::gate).
        let http = settings.client().build(http, id, gates)?;
        let client = Client { settings, http };
        client.token_blocking()?;
        Ok(Self {
            client: Arc::new(client),
        })
    }
}

#[async_trait]
impl Source for Gdrive {
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
        let drive = s.drive_id.clone().unwrap_or_default();
        let same_scope = checkpoint.scope.get(SCOPE_FOLDER_ID) == Some(&s.folder_id)
            && checkpoint.scope.get(SCOPE_DRIVE_ID).map_or("", String::as_str) == drive;
        let tree = Tree::load(&checkpoint.scope);
        let sweep_due = s.sweep_every_hours.is_some_and(|h| {
            let swept = checkpoint
                .scope
                .get(SCOPE_SWEPT_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            let hours = i64::try_from(h).unwrap_or(i64::MAX);
            swept.is_none_or(|t| Utc::now() - t.with_timezone(&Utc) >= chrono::Duration::hours(hours.min(1_000_000)))
        });
        let reason = match (&checkpoint.cursor, &tree) {
            _ if mode == SyncMode::Full => Some("full run"),
            (None, _) => Some("no change token yet"),
            _ if !same_scope => Some("synced folder or drive changed"),
            (_, None) => Some("saved folder map missing or unreadable"),
            _ if sweep_due => Some("periodic reconciliation due"),
            _ => None,
        };
        let mut scope = checkpoint.scope.clone();
        scope.insert(SCOPE_FOLDER_ID.to_owned(), s.folder_id.clone());
        scope.insert(SCOPE_DRIVE_ID.to_owned(), drive);
        let feed = match (reason, &checkpoint.cursor, tree) {
            (None, Some(token), Some(tree)) => {
                GdriveFeed::changes(Arc::clone(&self.client), calls, held, checkpoint, token, tree, scope)
            }
            (reason, _, tree) => {
                // Before listing: whatever changes while we list is in the next run.
                let token = c.start_page_token(&calls).await?;
                let synced = c.synced_folder(&s.folder_id, &calls).await?;
                scope.insert(SCOPE_SWEPT_AT.to_owned(), Utc::now().to_rfc3339());
                let reason = reason.unwrap_or("no change token yet");
                let prior = tree.filter(|_| same_scope);
                GdriveFeed::listing(
                    Arc::clone(&self.client),
                    calls,
                    held,
                    checkpoint,
                    token,
                    synced.name.clone(),
                    prior,
                    scope,
                    reason,
                    feed::access_of(&synced),
                )
            }
        };
        Ok(Box::new(feed))
    }

    async fn watch(
        &self,
        address: &url::Url,
        token: &str,
        expires: DateTime<Utc>,
        calls: &ApiCalls,
    ) -> Result<Option<Channel>, Error> {
        self.client.watch(address, token, expires, calls).await.map(Some)
    }

    async fn stop_channel(&self, channel: &Channel, calls: &ApiCalls) -> Result<(), Error> {
        self.client.stop_channel(channel, calls).await
    }

    async fn fetch(&self, docs: &[DocMeta], calls: &ApiCalls) -> Result<Fetched, Error> {
        let mut seen = HashSet::new();
        // Owned items and handles: the stream's futures must not borrow from the
        // closure (a higher-ranked lifetime the async-trait future cannot name).
        let unique: Vec<DocMeta> = docs.iter().filter(|d| seen.insert(d.id.clone())).cloned().collect();
        // Drive has no batch download: one call per file, a few in flight.
        let results: Vec<(DocumentId, Result<Option<FetchedDoc>, Error>)> = futures::stream::iter(unique)
            .map(|meta| {
                let client = Arc::clone(&self.client);
                let calls = calls.clone();
                async move {
                    let r = client.download(&meta, &calls).await;
                    (meta.id, r)
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let mut out = Fetched::default();
        let fetched_any = results.iter().any(|(_, r)| r.is_ok());
        for (id, r) in results {
            match r {
                Ok(Some(doc)) => out.docs.push(doc),
                Ok(None) => out.missing.push(id),
                // Throttled or down for every file: the page as a whole waits and retries.
                Err(e) if e.is_retryable() && !fetched_any => return Err(e),
                Err(e) => out.failed.push((id, e)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The simulator harness every test of the connector shares, and the tests of `fetch`.

    use std::collections::HashMap;

    use url::Url;

    use super::*;
    use crate::simulators::gdrive::{DOC_MIME, GdriveSim, SHEET_MIME, SimConfig};
    use crate::sources::{FeedEnd, HeldMap, Observation};

    pub(super) async fn start(cfg: SimConfig) -> (GdriveSim, Url) {
        let sim = GdriveSim::new(cfg);
        let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("serve");
        (sim, Url::parse(&format!("http://{addr}")).expect("url"))
    }

    pub(super) fn connector(base: Url, tweak: impl FnOnce(&mut GdriveSettings)) -> Gdrive {
        let mut s = GdriveSettings::new(base, "root-folder");
        tweak(&mut s);
        Gdrive::new(
            SourceId::new("gdrive-eng").expect("id"),
            s,
            reqwest::Client::new(),
            &Gates::local(),
        )
        .expect("connector")
    }

    pub(super) async fn drain(feed: &mut Box<dyn ChangeFeed>) -> Result<(Vec<Observation>, FeedEnd), Error> {
        let mut all = Vec::new();
        while let Some(p) = feed.next_page().await? {
            all.extend(p.observations);
        }
        Ok((all, feed.end()))
    }

    pub(super) async fn run(
        src: &Gdrive,
        cp: &Checkpoint,
        mode: SyncMode,
        held: &HeldMap,
        meter: &ApiCalls,
    ) -> Result<(Vec<Observation>, FeedEnd), Error> {
        let mut feed = src.open_feed(cp, mode, Arc::new(held.clone()), meter.clone()).await?;
        drain(&mut feed).await
    }

    /// A first full listing: from no checkpoint, holding nothing.
    pub(super) async fn first_listing(src: &Gdrive, meter: &ApiCalls) -> Result<(Vec<Observation>, FeedEnd), Error> {
        run(src, &Checkpoint::default(), SyncMode::Full, &HeldMap::default(), meter).await
    }

    /// What a sync that applied `obs` would hold.
    pub(super) fn apply(held: &mut HeldMap, obs: &[Observation]) {
        for o in obs {
            match o {
                Observation::Present(m) => {
                    held.insert(m.id.clone(), m.version.clone(), m.parent.clone());
                }
                Observation::Deleted(id) => {
                    held.remove(id);
                }
                Observation::Moved { from, to } => {
                    held.remove(from);
                    held.insert(to.id.clone(), to.version.clone(), to.parent.clone());
                }
                Observation::Access { .. } => {}
            }
        }
    }

    pub(super) fn present_ids(obs: &[Observation]) -> HashSet<String> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m.id.0.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn deleted_ids(obs: &[Observation]) -> HashSet<String> {
        obs.iter()
            .filter_map(|o| match o {
                Observation::Deleted(id) => Some(id.0.clone()),
                _ => None,
            })
            .collect()
    }

    /// Fetch exports Google Docs and Sheets, downloads text, reports 404 as missing.
    #[tokio::test]
    async fn fetch_by_kind_and_missing() {
        let (sim, base) = start(SimConfig::default()).await;
        let src = connector(base, |_| {});
        let doc = sim.create_file("D", "root-folder", DOC_MIME, "doc text").expect("doc");
        let sheet = sim
            .create_file("S", "root-folder", SHEET_MIME, "a,b\n1,2\n")
            .expect("sheet");
        let txt = sim
            .create_file("t.md", "root-folder", "text/markdown", "# t")
            .expect("txt");
        let gone = sim
            .create_file("g.txt", "root-folder", "text/plain", "g")
            .expect("gone");
        let meter = ApiCalls::default();
        let (obs, _) = first_listing(&src, &meter).await.expect("full");
        let metas: Vec<DocMeta> = obs
            .into_iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(sim.delete_file(&gone));
        sim.reset_calls();
        let meter = ApiCalls::default();
        let got = src.fetch(&metas, &meter).await.expect("fetch");
        assert_eq!(meter.get(), 4, "one call per file");
        assert_eq!(got.missing, vec![DocumentId(gone)]);
        let content: HashMap<String, String> = got
            .docs
            .iter()
            .map(|d| (d.meta.id.0.clone(), d.content.clone()))
            .collect();
        assert_eq!(content.get(&doc).map(String::as_str), Some("doc text"));
        // Content is tidied text: the export's final line break is not content.
        assert_eq!(content.get(&sheet).map(String::as_str), Some("a,b\n1,2"));
        let sheet_doc = got.docs.iter().find(|d| d.meta.id.0 == sheet).expect("sheet");
        assert_eq!(
            sheet_doc.source_sha256.as_deref(),
            Some(crate::sources::sha256_hex(b"a,b\n1,2\n").as_str()),
            "the fingerprint is of the exact bytes exported"
        );
        assert_eq!(
            sheet_doc.meta.url.as_deref(),
            Some(format!("https://docs.google.com/spreadsheets/d/{sheet}/edit?usp=drivesdk").as_str())
        );
        assert_eq!(content.get(&txt).map(String::as_str), Some("# t"));
        let calls = sim.calls();
        assert_eq!(calls.get("GET /drive/v3/files/{id}/export"), Some(&2));
        assert_eq!(calls.get("GET /drive/v3/files/{id}"), Some(&2));
    }
}
