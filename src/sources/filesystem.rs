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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{
    ApiCalls, ChangeFeed, Checkpoint, DocMeta, Error, FeedEnd, FeedPage, Fetched, FetchedDoc, Folder, Held,
    Observation, Source,
};
use crate::types::{DocumentId, SourceId, SyncMode};

/// Observations per feed page (the whole tree is walked up front; pages only bound job planning).
const FEED_PAGE: usize = 500;
/// Hex characters of the SHA-256 kept in versions: 64 bits, plenty to tell edits apart.
const HASH_HEX: usize = 16;

/// Settings of one directory source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSettings {
    /// The directory to sync (required; must exist and be a directory).
    pub root: PathBuf,
    /// Include files and directories whose name starts with '.' (default false).
    #[serde(default)]
    pub include_hidden: bool,
    /// File extensions to include, with or without the dot, case-insensitive
    /// (default empty: every file).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Follow symbolic links to files and directories (default false: links are
    /// skipped). Directory cycles are detected and walked once.
    #[serde(default)]
    pub follow_symlinks: bool,
}

impl FilesystemSettings {
    /// Settings for `root` with every optional field at its default.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            include_hidden: false,
            extensions: Vec::new(),
            follow_symlinks: false,
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => problems.push(format!("{key}.root: {} is not a directory", self.root.display())),
            Err(e) => problems.push(format!("{key}.root: cannot read {}: {e}", self.root.display())),
        }
        for (i, ext) in self.extensions.iter().enumerate() {
            let bare = ext.trim_start_matches('.');
            if bare.is_empty() || bare.contains(['/', '\\']) || bare.trim() != bare {
                problems.push(format!(
                    "{key}.extensions[{i}]: {ext:?} is not a file extension (e.g. \"md\")"
                ));
            }
        }
    }

    /// Extensions without the dot, lowercased.
    fn normalized_extensions(&self) -> HashSet<String> {
        self.extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_lowercase())
            .collect()
    }
}

/// A local directory as a [`Source`].
pub struct Filesystem {
    id: SourceId,
    cfg: Arc<Walker>,
}

/// What the blocking walk needs; cloned into `spawn_blocking`.
struct Walker {
    root: PathBuf,
    include_hidden: bool,
    extensions: HashSet<String>,
    follow_symlinks: bool,
}

impl Filesystem {
    /// Builds the connector. The root is checked by validation and again by every feed.
    pub fn new(id: SourceId, settings: FilesystemSettings) -> Self {
        let cfg = Walker {
            extensions: settings.normalized_extensions(),
            root: settings.root,
            include_hidden: settings.include_hidden,
            follow_symlinks: settings.follow_symlinks,
        };
        Self { id, cfg: Arc::new(cfg) }
    }
}

/// A parsed `size:mtime_ns:hash` version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    size: u64,
    mtime_ns: i128,
    hash: String,
}

impl Version {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let size = parts.next()?.parse().ok()?;
        let mtime_ns = parts.next()?.parse().ok()?;
        let hash = parts.next()?.to_owned();
        (!hash.is_empty()).then_some(Self { size, mtime_ns, hash })
    }

    fn render(&self) -> String {
        format!("{}:{}:{}", self.size, self.mtime_ns, self.hash)
    }
}

/// Nanoseconds since the epoch (negative before it); mtimes are the file system's clock.
fn mtime_ns(meta: &std::fs::Metadata) -> std::io::Result<i128> {
    let modified = meta.modified()?;
    Ok(match modified.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    })
}

fn modified_at(mtime_ns: i128) -> Option<DateTime<Utc>> {
    let ns = i64::try_from(mtime_ns).ok()?;
    Some(DateTime::from_timestamp_nanos(ns))
}

fn hash_prefix(bytes: &[u8]) -> String {
    let mut h = hex::encode(Sha256::digest(bytes));
    h.truncate(HASH_HEX);
    h
}

/// Title and parent of a relative id: the last segment, and everything before it.
fn title_and_parent(id: &str) -> (String, Option<DocumentId>) {
    match id.rsplit_once('/') {
        Some((dir, name)) => (name.to_owned(), Some(DocumentId(dir.to_owned()))),
        None => (id.to_owned(), None),
    }
}

fn meta_for(id: &str, version: String, mtime: Option<i128>) -> DocMeta {
    let (title, parent) = title_and_parent(id);
    DocMeta {
        id: DocumentId(id.to_owned()),
        version,
        title,
        parent,
        modified_at: mtime.and_then(modified_at),
    }
}

/// A file found by the walk.
struct Found {
    rel: String,
    abs: PathBuf,
    size: u64,
    mtime_ns: i128,
}

/// What one walk saw.
#[derive(Default)]
struct Scan {
    files: Vec<Found>,
    /// Relative directory paths walked (the root excluded).
    dirs: Vec<String>,
    /// Directories we could not list, relative (`""` never: the root fails the walk).
    unreadable_dirs: Vec<String>,
    /// Files we could not stat, relative.
    unreadable_files: Vec<String>,
    /// Entries skipped because their names are not UTF-8.
    non_utf8: u64,
}

impl Walker {
    fn wanted_name(&self, name: &str) -> bool {
        self.include_hidden || !name.starts_with('.')
    }

    fn wanted_file(&self, name: &str) -> bool {
        if self.extensions.is_empty() {
            return true;
        }
        match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => self.extensions.contains(&ext.to_lowercase()),
            _ => false,
        }
    }

    /// Walks the tree with `std::fs`, depth first. Only a failure at the root is an error.
    fn walk(&self) -> Result<Scan, std::io::Error> {
        let mut scan = Scan::default();
        let mut visited: HashSet<PathBuf> = HashSet::new();
        if self.follow_symlinks
            && let Ok(c) = std::fs::canonicalize(&self.root)
        {
            visited.insert(c);
        }
        // The root must be listable: an empty listing of an unmounted volume would delete everything.
        let root_entries = std::fs::read_dir(&self.root)?;
        let mut stack: Vec<(String, std::fs::ReadDir)> = vec![(String::new(), root_entries)];
        while let Some((rel_dir, entries)) = stack.pop() {
            for entry in entries {
                let entry = match entry {
                    Ok(e) => e,
                    Err(_) => {
                        // The directory became unreadable mid-listing: treat it as unreadable.
                        scan.unreadable_dirs.push(rel_dir.clone());
                        break;
                    }
                };
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    scan.non_utf8 += 1;
                    continue;
                };
                if !self.wanted_name(&name) {
                    continue;
                }
                let rel = if rel_dir.is_empty() {
                    name.clone()
                } else {
                    format!("{rel_dir}/{name}")
                };
                let abs = entry.path();
                let Ok(file_type) = entry.file_type() else {
                    scan.unreadable_files.push(rel);
                    continue;
                };
                let meta = if file_type.is_symlink() {
                    if !self.follow_symlinks {
                        continue;
                    }
                    match std::fs::metadata(&abs) {
                        Ok(m) => m,
                        // A dangling link points at nothing: nothing to sync.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(_) => {
                            scan.unreadable_files.push(rel);
                            continue;
                        }
                    }
                } else {
                    match entry.metadata() {
                        Ok(m) => m,
                        // Removed between listing and stat: it is gone.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(_) => {
                            scan.unreadable_files.push(rel);
                            continue;
                        }
                    }
                };
                if meta.is_dir() {
                    if self.follow_symlinks {
                        match std::fs::canonicalize(&abs) {
                            Ok(c) => {
                                if !visited.insert(c) {
                                    continue; // a cycle, or a second way into a walked directory
                                }
                            }
                            Err(_) => {
                                scan.unreadable_dirs.push(rel);
                                continue;
                            }
                        }
                    }
                    match std::fs::read_dir(&abs) {
                        Ok(sub) => {
                            scan.dirs.push(rel.clone());
                            stack.push((rel, sub));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(_) => scan.unreadable_dirs.push(rel),
                    }
                } else if meta.is_file() {
                    if !self.wanted_file(&name) {
                        continue;
                    }
                    let Ok(mtime_ns) = mtime_ns(&meta) else {
                        scan.unreadable_files.push(rel);
                        continue;
                    };
                    scan.files.push(Found {
                        rel,
                        abs,
                        size: meta.len(),
                        mtime_ns,
                    });
                }
                // Sockets, FIFOs, devices: not documents.
            }
        }
        Ok(scan)
    }

    /// Walks, versions every file (hashing only when size or mtime moved), and pairs moves.
    fn list(&self, held: &HashMap<DocumentId, String>) -> Result<Listing, std::io::Error> {
        let scan = self.walk()?;
        let mut out = Listing::default();
        let mut present: BTreeMap<String, DocMeta> = BTreeMap::new();
        let mut hashed = 0u64;
        let mut touched = 0u64;
        let mut kept = 0u64;

        for f in &scan.files {
            let held_version = held.get(&DocumentId(f.rel.clone()));
            let parsed = held_version.and_then(|v| Version::parse(v));
            if let (Some(text), Some(v)) = (held_version, &parsed)
                && v.size == f.size
                && v.mtime_ns == f.mtime_ns
            {
                present.insert(f.rel.clone(), meta_for(&f.rel, text.clone(), Some(f.mtime_ns)));
                continue;
            }
            let bytes = match std::fs::read(&f.abs) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    if let Some(text) = held_version {
                        // Cannot read it now: keep what we hold rather than delete it.
                        kept += 1;
                        present.insert(f.rel.clone(), meta_for(&f.rel, text.clone(), None));
                    } else {
                        out.unreadable += 1;
                    }
                    continue;
                }
            };
            hashed += 1;
            let version = Version {
                size: bytes.len() as u64,
                mtime_ns: f.mtime_ns,
                hash: hash_prefix(&bytes),
            };
            match (held_version, &parsed) {
                (Some(text), Some(v)) if v.hash == version.hash && v.size == version.size => {
                    touched += 1;
                    present.insert(f.rel.clone(), meta_for(&f.rel, text.clone(), Some(f.mtime_ns)));
                }
                _ => {
                    present.insert(f.rel.clone(), meta_for(&f.rel, version.render(), Some(f.mtime_ns)));
                }
            }
        }

        // Held documents we could not see: keep them as held, so they do not look deleted.
        let blind_dirs: Vec<String> = scan.unreadable_dirs.iter().map(|d| format!("{d}/")).collect();
        let blind_files: HashSet<&str> = scan.unreadable_files.iter().map(String::as_str).collect();
        for (id, version) in held {
            if present.contains_key(&id.0) {
                continue;
            }
            let hidden_dir = blind_dirs.iter().any(|d| d == "/" || id.0.starts_with(d.as_str()));
            if hidden_dir || blind_files.contains(id.0.as_str()) {
                kept += 1;
                present.insert(id.0.clone(), meta_for(&id.0, version.clone(), None));
            }
        }
        out.unreadable += (scan.unreadable_dirs.len() + scan.unreadable_files.len()) as u64;

        // Moves: a new path with the content hash of a held path that vanished.
        let mut vanished: HashMap<String, Vec<DocumentId>> = HashMap::new();
        let mut gone: Vec<&DocumentId> = held.keys().filter(|id| !present.contains_key(&id.0)).collect();
        gone.sort();
        for id in gone.into_iter().rev() {
            if let Some(v) = held.get(id).and_then(|v| Version::parse(v)) {
                vanished.entry(v.hash).or_default().push(id.clone());
            }
        }
        for (rel, meta) in present {
            let is_new = !held.contains_key(&meta.id);
            let from = is_new
                .then(|| Version::parse(&meta.version))
                .flatten()
                .and_then(|v| vanished.get_mut(&v.hash))
                .and_then(Vec::pop);
            match from {
                Some(from) => {
                    out.moves.push(format!("{} -> {rel}", from.0));
                    out.observations.push(Observation::Moved { from, to: meta });
                }
                None => out.observations.push(Observation::Present(meta)),
            }
        }

        out.folders = scan
            .dirs
            .iter()
            .map(|d| {
                let (title, parent) = title_and_parent(d);
                Folder {
                    id: DocumentId(d.clone()),
                    title,
                    parent,
                }
            })
            .collect();
        let mut note = format!(
            "complete listing of {}: {} file(s), {hashed} read and hashed",
            self.root.display(),
            scan.files.len()
        );
        if touched > 0 {
            note.push_str(&format!(", {touched} touched but unchanged"));
        }
        if !out.moves.is_empty() {
            note.push_str(&format!(", {} moved ({})", out.moves.len(), out.moves.join(", ")));
        }
        if out.unreadable > 0 {
            note.push_str(&format!(
                ", {} unreadable path(s) ({} held document(s) kept as they were)",
                out.unreadable, kept
            ));
        }
        if scan.non_utf8 > 0 {
            note.push_str(&format!(", {} non-UTF-8 name(s) skipped", scan.non_utf8));
        }
        out.note = note;
        Ok(out)
    }

    /// Resolves a document id to a path under the root, refusing anything that
    /// could leave it (ids come back to us through Redis).
    fn path_of(&self, id: &str) -> Option<PathBuf> {
        let rel = Path::new(id);
        if id.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return None;
        }
        Some(self.root.join(rel))
    }

    /// Whether any component of `id` under the root is a symbolic link.
    fn crosses_symlink(&self, id: &str) -> bool {
        let mut path = self.root.clone();
        id.split('/').any(|part| {
            path.push(part);
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
        })
    }

    /// Reads one file: `Ok(None)` when it is gone (or no longer a file we would list).
    fn read(&self, id: &str) -> std::io::Result<Option<FetchedDoc>> {
        let Some(path) = self.path_of(id) else {
            return Ok(None);
        };
        if !self.follow_symlinks && self.crosses_symlink(id) {
            return Ok(None);
        }
        let gone = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory | std::io::ErrorKind::IsADirectory
            )
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Stat the open handle, before reading: if the file changes while we read,
        // the old mtime makes the next run re-hash it rather than trust this version.
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        let mtime = mtime_ns(&meta)?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        match file.read_to_end(&mut bytes) {
            Ok(_) => {}
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
        let version = Version {
            size: bytes.len() as u64,
            mtime_ns: mtime,
            hash: hash_prefix(&bytes),
        };
        Ok(Some(FetchedDoc {
            meta: meta_for(id, version.render(), Some(mtime)),
            content: String::from_utf8_lossy(&bytes).into_owned(),
            links: Vec::new(),
        }))
    }
}

/// The result of one walk, ready to page out.
#[derive(Default)]
struct Listing {
    observations: Vec<Observation>,
    folders: Vec<Folder>,
    moves: Vec<String>,
    unreadable: u64,
    note: String,
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
        let listing = tokio::task::spawn_blocking(move || cfg.list(&held))
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
        let mut pages: Vec<FeedPage> = Vec::new();
        let mut observations = listing.observations.into_iter().peekable();
        while observations.peek().is_some() {
            pages.push(FeedPage {
                observations: observations.by_ref().take(FEED_PAGE).collect(),
            });
        }
        pages.reverse();
        Ok(Box::new(FsFeed {
            pages,
            folders: listing.folders,
            end: FeedEnd {
                checkpoint: next_checkpoint,
                complete_listing: true,
                note: Some(listing.note),
            },
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
                    Err(e) => {
                        return Err(Error::Retryable {
                            context: format!("source {source}: reading {}: {e}", cfg.root.join(&id).display()),
                            after: None,
                        });
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
}

/// One run's feed: the walk is done; pages are handed out in order.
struct FsFeed {
    /// Remaining pages, last first (popped from the end).
    pages: Vec<FeedPage>,
    folders: Vec<Folder>,
    end: FeedEnd,
}

#[async_trait]
impl ChangeFeed for FsFeed {
    async fn next_page(&mut self) -> Result<Option<FeedPage>, Error> {
        Ok(self.pages.pop())
    }

    fn end(&self) -> FeedEnd {
        self.end.clone()
    }

    fn folders(&self) -> Vec<Folder> {
        self.folders.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceSettings;

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
                Arc::new(held.clone()),
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
                Observation::Deleted(id) => panic!("no deletions expected, got {id}"),
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

    /// A renamed file is reported as a move from its old id; a vanished file with no
    /// new twin is simply not listed.
    #[tokio::test]
    async fn rename_is_a_move() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "old/name.md", "same bytes");
        write(dir.path(), "gone.md", "bye");
        let src = source(dir.path(), |_| {});
        let (first, _, _) = observe(&src, &HashMap::new()).await;
        let held = held_of(&first);
        std::fs::create_dir_all(dir.path().join("new")).expect("mkdir");
        std::fs::rename(dir.path().join("old/name.md"), dir.path().join("new/renamed.md")).expect("rename");
        std::fs::remove_file(dir.path().join("gone.md")).expect("rm");
        let (obs, end, _) = observe(&src, &held).await;
        assert_eq!(obs.len(), 1, "{obs:?}");
        match &obs[0] {
            Observation::Moved { from, to } => {
                assert_eq!(from.0, "old/name.md");
                assert_eq!(to.id.0, "new/renamed.md");
                assert_eq!(to.parent, Some(DocumentId("new".into())));
            }
            other => panic!("expected a move, got {other:?}"),
        }
        assert!(end.note.expect("note").contains("old/name.md -> new/renamed.md"));
    }

    /// Fetch reads content (invalid UTF-8 replaced), reports vanished files as
    /// missing, refuses ids that leave the root, and counts no API calls.
    #[tokio::test]
    async fn fetch_reads_and_reports_missing() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "d/ok.txt", "hello");
        std::fs::write(dir.path().join("bad.txt"), b"a\xffb").expect("write");
        let src = source(dir.path(), |_| {});
        let want: Vec<DocMeta> = ["d/ok.txt", "bad.txt", "nope.txt", "../etc/passwd", "/etc/passwd"]
            .iter()
            .map(|id| meta_for(id, String::new(), None))
            .collect();
        let calls = ApiCalls::default();
        let got = src.fetch(&want, &calls).await.expect("fetch");
        assert_eq!(calls.get(), 0);
        assert_eq!(got.docs.len(), 2);
        assert_eq!(got.docs[0].content, "hello");
        assert_eq!(got.docs[0].meta.title, "ok.txt");
        assert_eq!(got.docs[1].content, "a\u{fffd}b");
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
                Default::default(),
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
