//! The blocking side of the connector: walking the tree under `root`, deciding
//! each file's version against the held one, recognising moves, and reading files.
//!
//! Invariants:
//! - A file we cannot see never looks deleted: an unreadable directory or file
//!   that we hold is reported with the version we hold; only a failure at the
//!   root fails the walk.
//! - Content is read only when size or mtime differ from the held version; a
//!   "touched" file (same bytes) is reported with the held version verbatim.
//! - Versions are `"{size}:{mtime_ns}:{sha256 of the bytes, first 16 hex}"`.
//! - Everything here blocks: callers run it on `spawn_blocking`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::settings::FilesystemSettings;
use crate::extract::Format;
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
}

impl Walker {
    /// What a walk of `settings` needs.
    pub(super) fn new(settings: FilesystemSettings) -> Self {
        Self {
            extensions: settings.normalized_extensions(),
            root: settings.root,
            include_hidden: settings.include_hidden,
            follow_symlinks: settings.follow_symlinks,
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
    pub(super) fn list(&self, held: &HashMap<DocumentId, String>) -> Result<Listing, std::io::Error> {
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
        Ok(Some((meta_for(id, version.render(), Some(mtime)), bytes)))
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

/// The result of one walk, ready to page out.
#[derive(Default)]
pub(super) struct Listing {
    pub(super) observations: Vec<Observation>,
    pub(super) folders: Vec<Folder>,
    moves: Vec<String>,
    unreadable: u64,
    pub(super) note: String,
}
