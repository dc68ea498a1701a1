//! The blocking side of the connector: walking the tree under `root`, deciding
//! each file's version against the held one, recognising moves, and reading files.
//!
//! Invariants:
//! - A file we cannot see never looks deleted: an unreadable directory or file
//!   that we hold is reported with the version we hold; only a failure at the
//!   root fails the walk.
//! - Content is read only when size or mtime differ from the held version; a
//!   "touched" file (same bytes) is reported with the held version verbatim.
//! - The walk is paged: a batch of files at a time ([`Walker::next_files`]),
//!   versioned against what we hold for that batch alone; held documents the
//!   listing did not name come last, in batches ([`Walker::unlisted_page`]).
//!   Nothing here holds the whole tree's files or the whole held map.
//! - Versions are `"{size}:{mtime_ns}:{sha256 of the bytes, first 16 hex}"`.
//! - Everything here blocks: callers run it on `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::access::{DirectoryAccess, FileAccess};
use super::settings::FilesystemSettings;
use crate::extract::Format;
use crate::permissions::Permissions;
use crate::sources::{DocMeta, FetchedDoc, Folder, Observation};
use crate::types::DocumentId;

/// Hex characters of the SHA-256 kept in versions: 64 bits, plenty to tell edits apart.
pub(super) const HASH_HEX: usize = 16;

/// What the blocking walk needs; cloned into `spawn_blocking`.
pub(super) struct Walker {
    pub(super) root: PathBuf,
    include_hidden: bool,
    extensions: HashSet<String>,
    follow_symlinks: bool,
    access: FileAccess,
}

impl Walker {
    /// What a walk of `settings` needs.
    pub(super) fn new(settings: FilesystemSettings) -> Self {
        Self {
            extensions: settings.normalized_extensions(),
            root: settings.root,
            include_hidden: settings.include_hidden,
            follow_symlinks: settings.follow_symlinks,
            access: settings.permissions,
        }
    }
}

/// A parsed `size:mtime_ns:hash` version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Version {
    pub(super) size: u64,
    pub(super) mtime_ns: i128,
    pub(super) hash: String,
}

impl Version {
    pub(super) fn parse(text: &str) -> Option<Self> {
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

pub(super) fn meta_for(id: &str, version: String, mtime: Option<i128>) -> DocMeta {
    let (title, parent) = title_and_parent(id);
    DocMeta {
        id: DocumentId(id.to_owned()),
        version,
        title,
        parent,
        modified_at: mtime.and_then(modified_at),
        ..DocMeta::default()
    }
}

/// The id an observation is about (its new id, for a move).
fn observed_id(o: &Observation) -> &DocumentId {
    match o {
        Observation::Present(m) | Observation::Moved { to: m, .. } => &m.id,
        Observation::Deleted(id) | Observation::Access { id, .. } => id,
    }
}

/// A file found by the walk.
pub(super) struct Found {
    rel: String,
    abs: PathBuf,
    size: u64,
    mtime_ns: i128,
    permissions: Permissions,
}

impl Found {
    /// Its document id.
    pub(super) fn id(&self) -> DocumentId {
        DocumentId(self.rel.clone())
    }

    /// Its metadata with `version`, and who may read it.
    fn meta(&self, version: String, mtime: Option<i128>) -> DocMeta {
        DocMeta {
            permissions: Some(self.permissions.clone()),
            ..meta_for(&self.rel, version, mtime)
        }
    }
}

/// Files never seen before, by content hash, kept to pair them with held
/// files that vanished (moves). Capped: past [`MAX_MOVE_CANDIDATES`] new files
/// (a first sync, a mass import) further ones are not paired, only seen as
/// creations; a move among them is then a delete plus a create, still correct.
pub(super) const MAX_MOVE_CANDIDATES: usize = 100_000;

/// A walk in progress, depth first, a batch of files at a time: the open
/// directories and what was seen so far. Memory stays proportional to the
/// depth of the tree and the number of directories, not files.
pub(super) struct Walk {
    stack: Vec<(String, std::fs::ReadDir)>,
    visited: HashSet<PathBuf>,
    /// Relative directory paths walked (the root excluded).
    pub(super) dirs: Vec<String>,
    /// Directories we could not list, relative (`""` never: the root fails the walk).
    unreadable_dirs: Vec<String>,
    /// Files we could not stat, relative.
    unreadable_files: HashSet<String>,
    /// Entries skipped because their names are not UTF-8.
    non_utf8: u64,
    /// Who may enter each directory, read once per walk.
    access: DirectoryAccess,
}

/// What the listing has counted, for the run note.
#[derive(Debug, Default)]
pub(super) struct Counts {
    files: u64,
    hashed: u64,
    touched: u64,
    kept: u64,
    unreadable: u64,
    moves: Vec<String>,
    /// New files by content hash: (id, version, mtime) for [`Walker::unlisted_page`].
    new_files: HashMap<String, Vec<(String, String, i128)>>,
    new_file_count: usize,
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

    /// Opens the walk at the root. The root must be listable: an empty listing
    /// of an unmounted volume would delete everything.
    pub(super) fn start(&self) -> Result<Walk, std::io::Error> {
        let mut visited: HashSet<PathBuf> = HashSet::new();
        if self.follow_symlinks
            && let Ok(c) = std::fs::canonicalize(&self.root)
        {
            visited.insert(c);
        }
        let root_entries = std::fs::read_dir(&self.root)?;
        Ok(Walk {
            stack: vec![(String::new(), root_entries)],
            visited,
            dirs: Vec::new(),
            unreadable_dirs: Vec::new(),
            unreadable_files: HashSet::new(),
            non_utf8: 0,
            access: DirectoryAccess::default(),
        })
    }

    /// The next `n` files of the walk (fewer only when the walk is over).
    pub(super) fn next_files(&self, walk: &mut Walk, n: usize) -> Vec<Found> {
        let mut files = Vec::new();
        while files.len() < n {
            let Some((rel_dir, entries)) = walk.stack.last_mut() else {
                break;
            };
            let entry = match entries.next() {
                None => {
                    walk.stack.pop();
                    continue;
                }
                Some(Ok(e)) => e,
                Some(Err(_)) => {
                    // The directory became unreadable mid-listing: treat it as unreadable.
                    walk.unreadable_dirs.push(rel_dir.clone());
                    walk.stack.pop();
                    continue;
                }
            };
            let rel_dir = rel_dir.clone();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                walk.non_utf8 += 1;
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
                walk.unreadable_files.insert(rel);
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
                        walk.unreadable_files.insert(rel);
                        continue;
                    }
                }
            } else {
                match entry.metadata() {
                    Ok(m) => m,
                    // Removed between listing and stat: it is gone.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(_) => {
                        walk.unreadable_files.insert(rel);
                        continue;
                    }
                }
            };
            if meta.is_dir() {
                if self.follow_symlinks {
                    match std::fs::canonicalize(&abs) {
                        Ok(c) => {
                            if !walk.visited.insert(c) {
                                continue; // a cycle, or a second way into a walked directory
                            }
                        }
                        Err(_) => {
                            walk.unreadable_dirs.push(rel);
                            continue;
                        }
                    }
                }
                match std::fs::read_dir(&abs) {
                    Ok(sub) => {
                        walk.dirs.push(rel.clone());
                        walk.stack.push((rel, sub));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => walk.unreadable_dirs.push(rel),
                }
            } else if meta.is_file() {
                if !self.wanted_file(&name) {
                    continue;
                }
                let Ok(mtime_ns) = mtime_ns(&meta) else {
                    walk.unreadable_files.insert(rel);
                    continue;
                };
                let permissions = walk.access.of_file(&self.access, &self.root, &rel, &meta);
                files.push(Found {
                    rel,
                    abs,
                    size: meta.len(),
                    mtime_ns,
                    permissions,
                });
            }
            // Sockets, FIFOs, devices: not documents.
        }
        files
    }

    /// Versions a batch of files against what we hold for them (`held`, in the
    /// same order), reading and hashing only those whose size or mtime moved.
    pub(super) fn version_files(
        &self,
        files: Vec<Found>,
        held: Vec<Option<String>>,
        counts: &mut Counts,
    ) -> Vec<Observation> {
        let mut out = Vec::with_capacity(files.len());
        counts.files += files.len() as u64;
        for (f, held_version) in files.into_iter().zip(held) {
            let parsed = held_version.as_deref().and_then(Version::parse);
            if let (Some(text), Some(v)) = (&held_version, &parsed)
                && v.size == f.size
                && v.mtime_ns == f.mtime_ns
            {
                out.push(Observation::Present(f.meta(text.clone(), Some(f.mtime_ns))));
                continue;
            }
            let bytes = match std::fs::read(&f.abs) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    if let Some(text) = held_version {
                        // Cannot read it now: keep what we hold rather than delete it.
                        counts.kept += 1;
                        out.push(Observation::Present(f.meta(text, None)));
                    } else {
                        counts.unreadable += 1;
                    }
                    continue;
                }
            };
            counts.hashed += 1;
            let version = Version {
                size: bytes.len() as u64,
                mtime_ns: f.mtime_ns,
                hash: hash_prefix(&bytes),
            };
            match (&held_version, &parsed) {
                (Some(text), Some(v)) if v.hash == version.hash && v.size == version.size => {
                    counts.touched += 1;
                    out.push(Observation::Present(f.meta(text.clone(), Some(f.mtime_ns))));
                }
                _ => {
                    let rendered = version.render();
                    if held_version.is_none() && counts.new_file_count < MAX_MOVE_CANDIDATES {
                        counts.new_file_count += 1;
                        counts.new_files.entry(version.hash.clone()).or_default().push((
                            f.rel.clone(),
                            rendered.clone(),
                            f.mtime_ns,
                        ));
                    }
                    out.push(Observation::Present(f.meta(rendered, Some(f.mtime_ns))));
                }
            }
        }
        out.sort_by(|a, b| observed_id(a).cmp(observed_id(b)));
        out
    }

    /// After the last file: a batch of held documents the listing did not
    /// name. Those we could not see (under an unreadable directory, or an
    /// unreadable file) are kept with the version we hold, so they do not look
    /// deleted; one that vanished, paired by content hash with a new file, is
    /// a move. The rest the coordinator's sweep deletes. A held file that still
    /// exists was listed, or is no longer one we list: neither is a move.
    pub(super) fn unlisted_page(
        &self,
        walk: &Walk,
        unlisted: Vec<(DocumentId, String)>,
        counts: &mut Counts,
    ) -> Vec<Observation> {
        let blind_dirs: Vec<String> = walk.unreadable_dirs.iter().map(|d| format!("{d}/")).collect();
        let mut out = Vec::new();
        for (id, version) in unlisted {
            let hidden_dir = blind_dirs.iter().any(|d| d == "/" || id.0.starts_with(d.as_str()));
            if hidden_dir || walk.unreadable_files.contains(id.0.as_str()) {
                counts.kept += 1;
                out.push(Observation::Present(meta_for(&id.0, version, None)));
                continue;
            }
            let Some(v) = Version::parse(&version) else {
                continue;
            };
            let Some(twins) = counts.new_files.get_mut(&v.hash) else {
                continue;
            };
            if self
                .path_of(&id.0)
                .is_some_and(|p| std::fs::symlink_metadata(p).is_ok())
            {
                continue;
            }
            if let Some((rel, new_version, mtime)) = twins.pop() {
                counts.moves.push(format!("{} -> {rel}", id.0));
                out.push(Observation::Moved {
                    from: id,
                    to: meta_for(&rel, new_version, Some(mtime)),
                });
            }
        }
        out
    }

    /// The run note of a finished listing.
    pub(super) fn note(&self, walk: &Walk, counts: &Counts) -> String {
        let mut note = format!(
            "complete listing of {}: {} file(s), {} read and hashed",
            self.root.display(),
            counts.files,
            counts.hashed
        );
        if counts.touched > 0 {
            note.push_str(&format!(", {} touched but unchanged", counts.touched));
        }
        if !counts.moves.is_empty() {
            note.push_str(&format!(", {} moved ({})", counts.moves.len(), counts.moves.join(", ")));
        }
        let unreadable = counts.unreadable + (walk.unreadable_dirs.len() + walk.unreadable_files.len()) as u64;
        if unreadable > 0 {
            note.push_str(&format!(
                ", {unreadable} unreadable path(s) ({} held document(s) kept as they were)",
                counts.kept
            ));
        }
        if walk.non_utf8 > 0 {
            note.push_str(&format!(", {} non-UTF-8 name(s) skipped", walk.non_utf8));
        }
        note
    }

    /// The walked directories as folders, for breadcrumbs.
    pub(super) fn folders(walk: &Walk) -> Vec<Folder> {
        walk.dirs
            .iter()
            .map(|d| {
                let (title, parent) = title_and_parent(d);
                Folder {
                    id: DocumentId(d.clone()),
                    title,
                    parent,
                }
            })
            .collect()
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

    /// Reads one file and extracts its text: `Ok(None)` when it is gone (or no
    /// longer a file we would list).
    pub(super) fn read(&self, id: &str) -> Result<Option<FetchedDoc>, ReadFailure> {
        let Some((meta, bytes)) = self.read_bytes(id).map_err(ReadFailure::Io)? else {
            return Ok(None);
        };
        let (format, mime) = format_of(id, &bytes);
        let content = crate::extract::extract(&bytes, format, None).map_err(ReadFailure::Unreadable)?;
        let content_note = (format == Format::Unsupported).then(|| format!("no text: {mime} has no text extractor"));
        let meta = DocMeta {
            url: url::Url::from_file_path(self.root.join(id)).ok().map(String::from),
            mime_type: Some(mime),
            size: Some(bytes.len() as u64),
            ..meta
        };
        Ok(Some(FetchedDoc {
            meta,
            content,
            links: Vec::new(),
            source_sha256: Some(crate::sources::sha256_hex(&bytes)),
            content_note,
            raw_html: None,
        }))
    }

    /// The bytes of one file, with its metadata: `Ok(None)` when it is gone.
    fn read_bytes(&self, id: &str) -> std::io::Result<Option<(DocMeta, Vec<u8>)>> {
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
        let permissions = DirectoryAccess::default().of_file(&self.access, &self.root, id, &meta);
        let meta = DocMeta {
            permissions: Some(permissions),
            ..meta_for(id, version.render(), Some(mtime))
        };
        Ok(Some((meta, bytes)))
    }
}

/// Why a file could not be read.
#[derive(Debug)]
pub(super) enum ReadFailure {
    /// The file system refused (permissions may be fixed: retryable).
    Io(std::io::Error),
    /// The bytes are not what the file claims to be (a corrupt PDF): retrying cannot help.
    Unreadable(crate::extract::Error),
}

/// How a file is read, and its media type: by its bytes first (binary files are
/// detected by content, whatever their name says), then by its name among
/// the text formats (`.html` is HTML, `.md` Markdown).
fn format_of(id: &str, bytes: &[u8]) -> (Format, String) {
    let guessed = mime_guess::from_path(id).first_raw();
    let sniffed = Format::sniff(bytes);
    let format = match sniffed {
        Format::Text | Format::Html => match guessed.map(Format::of_mime) {
            Some(f @ (Format::Text | Format::Html)) => f,
            _ => sniffed,
        },
        other => other,
    };
    let mime = match (format, guessed) {
        (Format::Text, Some(g)) if Format::of_mime(g) == Format::Text => g,
        (Format::Html, _) => "text/html",
        (Format::Text, _) => "text/plain",
        (Format::Pdf, _) => crate::extract::PDF_MIME,
        (Format::Docx, _) => crate::extract::DOCX_MIME,
        (Format::Pptx, _) => crate::extract::PPTX_MIME,
        (Format::Spreadsheet, Some(g)) if Format::of_mime(g) == Format::Spreadsheet => g,
        (Format::Spreadsheet, _) => crate::extract::XLSX_MIME,
        (Format::Unsupported, Some(g)) if Format::of_mime(g) == Format::Unsupported => g,
        (Format::Unsupported, _) => "application/octet-stream",
    };
    (format, mime.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held documents the walk could not see (under an unreadable directory, or
    /// an unreadable file) are kept with the held version; one that vanished
    /// with no twin is left to the sweep. (Root reads every directory, so the
    /// walk's blind spots are set by hand here.)
    #[test]
    fn unseen_held_documents_are_kept_and_vanished_ones_left_out() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("blind")).expect("mkdir");
        let walker = Walker::new(FilesystemSettings::new(dir.path()));
        let mut walk = walker.start().expect("walk");
        assert!(walker.next_files(&mut walk, 10).is_empty());
        walk.unreadable_dirs.push("blind".into());
        walk.unreadable_files.insert("locked.md".into());
        let mut counts = Counts::default();
        let held = vec![
            (DocumentId("blind/deep/a.md".into()), "3:1:abc".to_owned()),
            (DocumentId("locked.md".into()), "4:1:def".to_owned()),
            (DocumentId("blindness.md".into()), "5:1:123".to_owned()),
            (DocumentId("gone.md".into()), "6:1:456".to_owned()),
        ];
        let obs = walker.unlisted_page(&walk, held, &mut counts);
        let kept: Vec<(&str, &str)> = obs
            .iter()
            .map(|o| match o {
                Observation::Present(m) => (m.id.0.as_str(), m.version.as_str()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kept, vec![("blind/deep/a.md", "3:1:abc"), ("locked.md", "4:1:def")]);
        assert!(walker.note(&walk, &counts).contains("2 held document(s) kept"));
    }
}
