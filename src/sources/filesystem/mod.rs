//! Filesystem connector: the files under one local directory, one document per file.
//!
//! What it owns:
//! - [`FilesystemSettings`]: the `settings` table of a `kind = "filesystem"` source;
//! - [`Filesystem`]: the [`Source`] that walks the tree and reads files.
//!
//! Identity and shape:
//! - document id = the path relative to `root`, `/`-separated (`guides/install.md`);
//! - title = the file name; parent = the relative directory (`guides`), none at the root.
//!   Directories are not documents: the feed reports them as [`Folder`]s, so the
//!   coordinator's breadcrumbs become the directory names (`["guides"]`).
//! - version = `"{size}:{mtime_ns}:{sha256 of the bytes, first 16 hex}"`.
//!
//! Invariants:
//! - Every feed is a complete listing. A file we cannot see must therefore never
//!   look deleted: an unreadable directory or file that we hold is reported with
//!   the version we hold (kept as is, counted in the run note), and a missing or
//!   unreadable `root` fails the feed instead of listing nothing.
//! - Content is read only when size or mtime differ from the held version. A
//!   file whose mtime changed but whose bytes did not ("touched") is reported
//!   with the held version verbatim, so the coordinator drops it as unchanged.
//!   The price: until its content changes, that file is re-hashed on each run
//!   (its held version keeps the old mtime).
//! - All file I/O runs on `spawn_blocking`; nothing here blocks the runtime.
//! - Memory is bounded by a page of files, the directories and the new files
//!   kept for move pairing (at most `walk::MAX_MOVE_CANDIDATES`), never by the
//!   source: what we hold is looked up a page at a time.
//! - No API: `api_calls` stays 0 for this source.
//!
//! | capability        | how                                                                  |
//! |-------------------|----------------------------------------------------------------------|
//! | change detection  | size + mtime against the held version; content hash when they differ |
//! | deletions         | complete listing: held ids not found are deleted by the coordinator  |
//! | moves / renames   | a new path whose content hash equals that of a vanished held path     |
//! | links             | none (files are plain text to us)                                    |
//!
//! What it cannot detect: a change that keeps size *and* mtime (e.g. a tool that
//! restores the mtime; a `Full` run still reads and compares everything via the
//! worker's content hash); moves of files whose content also changed (seen as a
//! delete plus a create); which of several vanished identical files moved where
//! (any of them is paired, with the same end result). File names that are not
//! UTF-8 are skipped and counted in the run note. Content is decoded as UTF-8
//! lossily: invalid bytes become U+FFFD (the hash and version use the raw bytes).
//!
//! Where things are:
//! - `settings.rs`: [`FilesystemSettings`], its defaults and validation;
//! - `walk.rs`: the blocking walk of the tree, the version format, move
//!   detection and reading files;
//! - `mod.rs` (this file): [`Filesystem`], the [`Source`] whose feed runs the
//!   walk off the async runtime a page at a time.

mod access;
mod settings;
mod walk;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use self::walk::{Counts, ReadFailure, Walk, Walker};
use super::{ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, FeedEnd, FeedPage, Fetched, Folder, Held, Source};
use crate::types::{DocumentId, SourceId, SyncMode};

pub use self::settings::FilesystemSettings;

/// Files per feed page: walked, looked up (one batch) and versioned together.
const FEED_PAGE: usize = 500;

/// A local directory as a [`Source`].
pub struct Filesystem {
    id: SourceId,
    cfg: Arc<Walker>,
}

impl Filesystem {
    /// Builds the connector. The root is checked by validation and again by every feed.
    pub fn new(id: SourceId, settings: FilesystemSettings) -> Self {
        Self {
            id,
            cfg: Arc::new(Walker::new(settings)),
        }
    }
}

#[async_trait]
impl Source for Filesystem {
    fn id(&self) -> &SourceId {
        &self.id
    }

    async fn open_feed(
        &self,
        checkpoint: &Checkpoint,
        _mode: SyncMode,
        held: Held,
        _calls: ApiCalls,
    ) -> Result<Box<dyn ChangeFeed>, Error> {
        let cfg = Arc::clone(&self.cfg);
        let id = self.id.clone();
        let walk = tokio::task::spawn_blocking(move || cfg.start())
            .await
            .map_err(|e| Error::Permanent {
                context: format!("source {id}: directory walk panicked: {e}"),
            })?
            .map_err(|e| Error::Retryable {
                // Unmounted volumes come back; until then nothing is listed, so nothing is deleted.
                context: format!("source {}: cannot list root {}: {e}", self.id, self.cfg.root.display()),
                after: None,
            })?;
        // Every run lists everything: no cursor or watermark; other fields (some kept
        // by the coordinator) carry over.
        let mut next_checkpoint = checkpoint.clone();
        next_checkpoint.cursor = None;
        next_checkpoint.watermark = None;
        next_checkpoint.runs_since_sweep = 0;
        Ok(Box::new(FsFeed {
            walker: Arc::clone(&self.cfg),
            source: self.id.clone(),
            listing: Some(Listing {
                walk,
                counts: Counts::default(),
            }),
            held,
            phase: Phase::Files,
            checkpoint: next_checkpoint,
        }))
    }

    async fn fetch(&self, docs: &[DocMeta], _calls: &ApiCalls) -> Result<Fetched, Error> {
        let cfg = Arc::clone(&self.cfg);
        let ids: Vec<String> = docs.iter().map(|d| d.id.0.clone()).collect();
        let source = self.id.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Fetched::default();
            let mut seen = HashSet::new();
            for id in ids {
                if !seen.insert(id.clone()) {
                    continue;
                }
                match cfg.read(&id) {
                    Ok(Some(doc)) => out.docs.push(doc),
                    Ok(None) => out.missing.push(DocumentId(id)),
                    // One unreadable file fails alone (permissions may be fixed: retryable).
                    Err(ReadFailure::Io(e)) => {
                        let context = format!("source {source}: reading {}: {e}", cfg.root.join(&id).display());
                        out.failed
                            .push((DocumentId(id), Error::Retryable { context, after: None }));
                    }
                    // Bytes that are not what they claim to be: fixed only by a new version.
                    Err(ReadFailure::Unreadable(e)) => {
                        let context = format!("source {source}: {}: {e}", cfg.root.join(&id).display());
                        out.failed.push((DocumentId(id), Error::Permanent { context }));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Permanent {
            context: format!("source {}: file read panicked: {e}", self.id),
        })?
    }

    /// A file's parent is its directory, and the directory's path is part of
    /// the file's id: a directory renamed or moved moves each file under it to
    /// a new id, so nothing is ever looked up by parent.
    fn needs_children_index(&self) -> bool {
        false
    }
}

/// A walk in progress and what it counted, moved into each blocking step and back.
struct Listing {
    walk: Walk,
    counts: Counts,
}

/// Where a feed is: walking files, then going through the held documents it did not list.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Files,
    /// The `unlisted` cursor to continue from.
    Unlisted(u64),
    Done,
}

/// One run's feed: [`FEED_PAGE`] files per page, walked, looked up and
/// versioned page by page; then the held documents not listed, a batch per page.
struct FsFeed {
    walker: Arc<Walker>,
    source: SourceId,
    /// `None` only while a blocking step has it.
    listing: Option<Listing>,
    held: Held,
    phase: Phase,
    checkpoint: Checkpoint,
}

impl FsFeed {
    /// Runs `step` on the listing off the async runtime.
    async fn blocking<T: Send + 'static>(
        &mut self,
        step: impl FnOnce(&Walker, &mut Listing) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let mut listing = self.listing.take().ok_or_else(|| Error::Permanent {
            context: format!(
                "source {}: a feed page failed earlier; the feed cannot go on",
                self.source
            ),
        })?;
        let walker = Arc::clone(&self.walker);
        let (listing, out) = tokio::task::spawn_blocking(move || {
            let out = step(&walker, &mut listing);
            (listing, out)
        })
        .await
        .map_err(|e| Error::Permanent {
            context: format!("source {}: directory walk panicked: {e}", self.source),
        })?;
        self.listing = Some(listing);
        Ok(out)
    }
}

#[async_trait]
impl ChangeFeed for FsFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        loop {
            match self.phase {
                Phase::Files => {
                    let files = self.blocking(|w, l| w.next_files(&mut l.walk, FEED_PAGE)).await?;
                    if files.is_empty() {
                        self.phase = Phase::Unlisted(0);
                        continue;
                    }
                    let ids: Vec<DocumentId> = files.iter().map(|f| f.id()).collect();
                    let versions = self.held.versions_of(&ids).await?;
                    let observations = self
                        .blocking(move |w, l| w.version_files(files, versions, &mut l.counts))
                        .await?;
                    return Ok(Some(FeedPage { observations }));
                }
                Phase::Unlisted(cursor) => {
                    let (next, batch) = self.held.unlisted(cursor).await?;
                    self.phase = if next == 0 { Phase::Done } else { Phase::Unlisted(next) };
                    let observations = self
                        .blocking(move |w, l| w.unlisted_page(&l.walk, batch, &mut l.counts))
                        .await?;
                    return Ok(Some(FeedPage { observations }));
                }
                Phase::Done => return Ok(None),
            }
        }
    }

    fn end(&self) -> FeedEnd {
        FeedEnd {
            checkpoint: self.checkpoint.clone(),
            complete_listing: true,
            note: self.listing.as_ref().map(|l| self.walker.note(&l.walk, &l.counts)),
        }
    }

    fn folders(&self) -> Vec<Folder> {
        self.listing
            .as_ref()
            .map(|l| Walker::folders(&l.walk))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::walk::{HASH_HEX, Version, meta_for};
    use super::*;
    use crate::sources::{FetchedDoc, Observation, SourceSettings};

    fn source(root: &Path, tweak: impl FnOnce(&mut FilesystemSettings)) -> Filesystem {
        let mut s = FilesystemSettings::new(root);
        tweak(&mut s);
        Filesystem::new(SourceId::new("fs").expect("id"), s)
    }

    async fn observe(src: &Filesystem, held: &HashMap<DocumentId, String>) -> (Vec<Observation>, FeedEnd, Vec<Folder>) {
        let mut feed = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Incremental,
                Arc::new(crate::sources::HeldMap::from(held.clone())),
                ApiCalls::default(),
            )
            .await
            .expect("feed opens");
        let mut all = Vec::new();
        while let Some(p) = feed.next_page().await.expect("page") {
            all.extend(p.observations);
        }
        (all, feed.end(), feed.folders())
    }

    fn held_of(obs: &[Observation]) -> HashMap<DocumentId, String> {
        obs.iter()
            .map(|o| match o {
                Observation::Present(m) | Observation::Moved { to: m, .. } => (m.id.clone(), m.version.clone()),
                Observation::Deleted(id) | Observation::Access { id, .. } => {
                    panic!("no deletions or access changes expected, got {id}")
                }
            })
            .collect()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    /// Ids are relative `/` paths, titles file names, parents directories; hidden
    /// files and other extensions are left out; directories come back as folders.
    #[tokio::test]
    async fn ids_titles_parents_and_filters() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "top.md", "top");
        write(dir.path(), "guides/install/linux.MD", "linux");
        write(dir.path(), "guides/skip.png", "bin");
        write(dir.path(), ".git/config.md", "hidden dir");
        write(dir.path(), "guides/.draft.md", "hidden file");
        let src = source(dir.path(), |s| s.extensions = vec![".md".into()]);
        let (obs, end, folders) = observe(&src, &HashMap::new()).await;
        let metas: Vec<DocMeta> = obs
            .into_iter()
            .map(|o| match o {
                Observation::Present(m) => m,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let ids: Vec<&str> = metas.iter().map(|m| m.id.0.as_str()).collect();
        assert_eq!(ids, vec!["guides/install/linux.MD", "top.md"]);
        assert_eq!(metas[0].title, "linux.MD");
        assert_eq!(metas[0].parent, Some(DocumentId("guides/install".into())));
        assert_eq!(metas[1].parent, None);
        let v = Version::parse(&metas[1].version).expect("version parses");
        assert_eq!((v.size, v.hash.len()), (3, HASH_HEX));
        assert!(end.complete_listing);
        let mut f: Vec<(String, String, Option<String>)> = folders
            .into_iter()
            .map(|f| (f.id.0, f.title, f.parent.map(|p| p.0)))
            .collect();
        f.sort();
        assert_eq!(
            f,
            vec![
                ("guides".into(), "guides".into(), None),
                ("guides/install".into(), "install".into(), Some("guides".into())),
            ]
        );

        let with_hidden = source(dir.path(), |s| s.include_hidden = true);
        let (obs, _, _) = observe(&with_hidden, &HashMap::new()).await;
        assert_eq!(obs.len(), 5);
    }

    /// An unchanged file keeps its held version without being read; a touched one
    /// (new mtime, same bytes) is hashed and still reports the held version; an
    /// edited one gets a new version.
    #[tokio::test]
    async fn versions_reuse_touch_and_edit() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "a.txt", "alpha");
        write(dir.path(), "b.txt", "beta");
        let src = source(dir.path(), |_| {});
        let (first, _, _) = observe(&src, &HashMap::new()).await;
        let held = held_of(&first);

        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.txt"))
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        write(dir.path(), "b.txt", "beta!");
        let (second, end, _) = observe(&src, &held).await;
        let now = held_of(&second);
        assert_eq!(now[&DocumentId("a.txt".into())], held[&DocumentId("a.txt".into())]);
        assert_ne!(now[&DocumentId("b.txt".into())], held[&DocumentId("b.txt".into())]);
        let note = end.note.expect("note");
        assert!(
            note.contains("2 read and hashed") && note.contains("1 touched"),
            "{note}"
        );
    }

    /// A renamed file is reported as a move from its old id (after its new id
    /// was listed as present); a vanished file with no new twin is simply not
    /// listed; a copy of a file that is still there is not a move.
    #[tokio::test]
    async fn rename_is_a_move() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "old/name.md", "same bytes");
        write(dir.path(), "gone.md", "bye");
        write(dir.path(), "kept.md", "twin bytes");
        let src = source(dir.path(), |_| {});
        let (first, _, _) = observe(&src, &HashMap::new()).await;
        let held = held_of(&first);
        std::fs::create_dir_all(dir.path().join("new")).expect("mkdir");
        std::fs::rename(dir.path().join("old/name.md"), dir.path().join("new/renamed.md")).expect("rename");
        std::fs::remove_file(dir.path().join("gone.md")).expect("rm");
        write(dir.path(), "copy-of-kept.md", "twin bytes");
        let (obs, end, _) = observe(&src, &held).await;
        let present: Vec<&str> = obs
            .iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m.id.0.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(present, vec!["copy-of-kept.md", "kept.md", "new/renamed.md"], "{obs:?}");
        let moves: Vec<&Observation> = obs.iter().filter(|o| matches!(o, Observation::Moved { .. })).collect();
        assert_eq!(moves.len(), 1, "{obs:?}");
        match moves[0] {
            Observation::Moved { from, to } => {
                assert_eq!(from.0, "old/name.md");
                assert_eq!(to.id.0, "new/renamed.md");
                assert_eq!(to.parent, Some(DocumentId("new".into())));
            }
            other => panic!("expected a move, got {other:?}"),
        }
        assert!(end.note.expect("note").contains("old/name.md -> new/renamed.md"));
    }

    /// Fetch reads content (text that is not UTF-8 as windows-1252), reports
    /// vanished files as missing, refuses ids that leave the root, and counts no
    /// API calls. Files are recognised by their bytes: a real PDF and DOCX are
    /// read as text whatever their names, a binary file named `.txt` has no
    /// text (a note says so), and a "PDF" that is not one fails alone, for good.
    #[tokio::test]
    async fn fetch_reads_and_reports_missing() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "d/ok.txt", "hello");
        std::fs::write(dir.path().join("bad.txt"), b"a\xffb").expect("write");
        std::fs::write(
            dir.path().join("report.bin"),
            crate::simulators::files::pdf(&["Annual report"]),
        )
        .expect("w");
        std::fs::write(
            dir.path().join("guide.docx"),
            crate::simulators::files::docx(&["Guide"]),
        )
        .expect("w");
        std::fs::write(dir.path().join("photo.txt"), crate::simulators::files::PNG_1X1).expect("w");
        std::fs::write(dir.path().join("fake.pdf"), b"%PDF-1.4 not really").expect("w");
        let src = source(dir.path(), |_| {});
        let ids = [
            "d/ok.txt",
            "bad.txt",
            "report.bin",
            "guide.docx",
            "photo.txt",
            "fake.pdf",
            "nope.txt",
            "../etc/passwd",
            "/etc/passwd",
        ];
        let want: Vec<DocMeta> = ids.iter().map(|id| meta_for(id, String::new(), None)).collect();
        let calls = ApiCalls::default();
        let got = src.fetch(&want, &calls).await.expect("fetch");
        assert_eq!(calls.get(), 0);
        let by_id: HashMap<&str, &FetchedDoc> = got.docs.iter().map(|d| (d.meta.id.0.as_str(), d)).collect();
        assert_eq!(by_id.len(), 5);
        assert_eq!(by_id["d/ok.txt"].content, "hello");
        assert_eq!(by_id["d/ok.txt"].meta.title, "ok.txt");
        assert_eq!(by_id["d/ok.txt"].meta.mime_type.as_deref(), Some("text/plain"));
        assert!(
            by_id["d/ok.txt"]
                .meta
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("file:///") && u.ends_with("/d/ok.txt"))
        );
        assert_eq!(by_id["bad.txt"].content, "a\u{ff}b");
        assert_eq!(by_id["report.bin"].content, "Annual report");
        assert_eq!(by_id["report.bin"].meta.mime_type.as_deref(), Some("application/pdf"));
        assert_eq!(by_id["guide.docx"].content, "Guide");
        assert_eq!(by_id["photo.txt"].content, "");
        assert!(by_id["photo.txt"].content_note.is_some());
        assert_eq!(got.failed.len(), 1);
        assert_eq!(got.failed[0].0.0, "fake.pdf");
        assert!(!got.failed[0].1.is_retryable(), "{:?}", got.failed[0].1);
        let missing: Vec<&str> = got.missing.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(missing, vec!["nope.txt", "../etc/passwd", "/etc/passwd"]);
    }

    /// Symbolic links are skipped unless followed; a link cycle is walked once.
    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_skipped_or_followed_once() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "real/a.md", "a");
        std::os::unix::fs::symlink(dir.path().join("real/a.md"), dir.path().join("link.md")).expect("link");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("real/loop")).expect("loop");
        let (obs, _, _) = observe(&source(dir.path(), |_| {}), &HashMap::new()).await;
        assert_eq!(obs.len(), 1);
        let (obs, _, _) = observe(&source(dir.path(), |s| s.follow_symlinks = true), &HashMap::new()).await;
        let mut ids: Vec<String> = held_of(&obs).into_keys().map(|d| d.0).collect();
        ids.sort();
        assert_eq!(ids, vec!["link.md", "real/a.md"]);
    }

    /// A missing root fails the feed (so nothing is deleted) and fails validation.
    #[tokio::test]
    async fn missing_root_fails() {
        let dir = tempfile::tempdir().expect("tmp");
        let gone = dir.path().join("nope");
        let src = source(&gone, |_| {});
        let err = src
            .open_feed(
                &Checkpoint::default(),
                SyncMode::Full,
                crate::sources::nothing_held(),
                ApiCalls::default(),
            )
            .await
            .err()
            .expect("error");
        assert!(err.to_string().contains("cannot list root"), "{err}");

        let text = format!(
            "root = {:?}\nextensions = [\"\"]\ncolour = 1",
            gone.display().to_string()
        );
        let mut problems = Vec::new();
        assert!(
            SourceSettings::parse(
                "filesystem",
                toml::from_str(&text).expect("toml"),
                "sources[0]",
                &mut problems
            )
            .is_none()
        );
        assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
        let text = format!("root = {:?}\nextensions = [\"\"]", gone.display().to_string());
        let mut problems = Vec::new();
        SourceSettings::parse(
            "filesystem",
            toml::from_str(&text).expect("toml"),
            "sources[0]",
            &mut problems,
        );
        let all = problems.join("\n");
        assert!(all.contains("sources[0].settings.root: cannot read"), "{all}");
        assert!(all.contains("sources[0].settings.extensions[0]"), "{all}");
    }
}
