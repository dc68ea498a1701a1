//! The directory sink: one JSON file per document, `<root>/<source>/docs/<id>.json`
//! (the id escaped; an id whose name would pass 255 bytes is shortened to a
//! readable prefix plus its SHA-256, and the full id is inside the file).
//!
//! Invariants:
//! - A write is atomic: the file is written to a temporary name, synced, and
//!   renamed over the old one, so a reader never sees half a document.
//! - Fencing: `<root>/<source>/.fence` holds the highest token seen, raised
//!   when a run starts (`register_token`) and by every write. Every write
//!   takes an exclusive `flock` on it, checks and raises the token, writes, and
//!   unlocks; workers in several processes on one host (or one shared volume
//!   with working locks) are serialised per source.
//! - A document whose file already holds the same version and content hash is
//!   not rewritten.
//! - With chunking configured, a document's file also holds its `chunks`
//!   (text, hash, position), written with it in the same atomic replace.
//!
//! All file work runs on the blocking thread pool.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;

use super::chunks::{Chunk, ChunkConfig, split};
use super::{Error, Sink, SinkDocument, Written};
use crate::lock::fencing::StaleFence;
use crate::types::{DocumentId, FencingToken, SourceId};

/// Writes documents as JSON files under a root directory.
#[derive(Debug, Clone)]
pub struct DirectorySink {
    root: PathBuf,
    /// When set, each file also holds the document's `chunks`.
    chunking: Option<ChunkConfig>,
}

/// A document's file: the document, and its chunks when the sink splits them.
#[derive(Serialize)]
struct DocumentFile<'a> {
    #[serde(flatten)]
    doc: &'a SinkDocument,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<Chunk>,
}

impl DirectorySink {
    /// A sink writing under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            chunking: None,
        }
    }

    /// Also writes each document's chunks into its file (`"chunks": [...]`).
    pub fn with_chunks(mut self, config: ChunkConfig) -> Self {
        self.chunking = Some(config);
        self
    }

    /// Where a source's documents live.
    pub fn source_dir(&self, source: &SourceId) -> PathBuf {
        self.fence_dir(source).join("docs")
    }

    /// Where a source's `.fence` file lives.
    fn fence_dir(&self, source: &SourceId) -> PathBuf {
        self.root.join(source.as_str())
    }

    /// The file for one document: any id is one safe file name of at most
    /// [`MAX_FILE_NAME`] bytes (see [`file_name`]); the id itself is inside the file.
    pub fn doc_path(&self, source: &SourceId, id: &DocumentId) -> PathBuf {
        self.source_dir(source).join(file_name(&id.0))
    }

    /// Reads every document of a source (for tests, the demo and `status`).
    pub fn read_all(&self, source: &SourceId) -> Result<Vec<SinkDocument>, Error> {
        let dir = self.source_dir(source);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Io { path: dir, source }),
        };
        let mut docs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            // Only files are documents (a directory in the way is some document's failure).
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file
                && path.extension().is_some_and(|e| e == "json")
                && let Some(doc) = read_doc(&path)?
            {
                docs.push(doc);
            }
        }
        docs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(docs)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The longest file name common file systems accept (ext4, XFS, NTFS, APFS), in bytes.
pub const MAX_FILE_NAME: usize = 255;

/// `<escaped id>.json`; when that would exceed [`MAX_FILE_NAME`], a readable
/// prefix of the escaped id, `~`, and the SHA-256 of the whole id. Names that
/// fit are unchanged, so documents written before keep their files (issue 8:
/// an id whose escaped name was too long failed its page on every run).
fn file_name(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let escaped = escape_id(id);
    if escaped.len() + ".json".len() <= MAX_FILE_NAME {
        return format!("{escaped}.json");
    }
    let digest = hex::encode(Sha256::digest(id.as_bytes()));
    // Escaped text is ASCII, so any byte offset is a character boundary.
    let keep = MAX_FILE_NAME - ".json".len() - digest.len() - 1;
    format!("{}~{digest}.json", &escaped[..keep])
}

/// Keeps `[A-Za-z0-9._-]`, percent-escapes the rest (and a leading dot).
fn escape_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let safe = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if safe {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_doc(path: &Path) -> Result<Option<SinkDocument>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Holds the per-source fence file locked; unlocks on drop (closing the file).
struct FenceGuard {
    _file: File,
}

/// Locks the fence file of `dir`, checks `token` against it and raises it.
fn fence(dir: &Path, token: FencingToken) -> Result<FenceGuard, Error> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(".fence");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    file.lock().map_err(io(&path))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io(&path))?;
    let current = text.trim().parse::<u64>().unwrap_or(0);
    if token.0 < current {
        return Err(StaleFence {
            ours: token,
            current: FencingToken(current),
        }
        .into());
    }
    if token.0 > current {
        file.set_len(0).map_err(io(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        file.write_all(token.0.to_string().as_bytes()).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
    }
    Ok(FenceGuard { _file: file })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    // A name of its own, not derived from the document's: that one may already
    // be as long as file names can be. No `.json` ending, so readers skip it.
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

#[async_trait]
impl Sink for DirectorySink {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        let root = self.fence_dir(source);
        run_blocking(move || fence(&root, token).map(drop)).await
    }

    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        let root = self.fence_dir(&doc.source);
        let path = self.doc_path(&doc.source, &doc.id);
        let id = doc.id.clone();
        let doc = doc.clone();
        let chunking = self.chunking;
        let written = run_blocking(move || {
            let _guard = fence(&root, doc.fencing_token)?;
            if let Some(existing) = read_doc(&path)?
                && existing.version == doc.version
                && existing.content_hash == doc.content_hash
            {
                return Ok(Written::Unchanged);
            }
            let file = DocumentFile {
                chunks: chunking.map(|c| split(&doc.content, &c)).unwrap_or_default(),
                doc: &doc,
            };
            // Serializing a struct of strings to JSON cannot fail.
            let bytes = serde_json::to_vec_pretty(&file).expect("JSON encoding of an in-memory struct");
            write_atomically(&path, &bytes)?;
            Ok(Written::Changed)
        })
        .await;
        written.map_err(|e| rejected_if_permanent(e, id))
    }

    async fn get(&self, source: &SourceId, id: &DocumentId) -> Result<Option<SinkDocument>, Error> {
        let path = self.doc_path(source, id);
        run_blocking(move || read_doc(&path)).await
    }

    async fn versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error> {
        let sink = self.clone();
        let source = source.clone();
        run_blocking(move || Ok(sink.read_all(&source)?.into_iter().map(|d| (d.id, d.version)).collect())).await
    }

    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error> {
        let root = self.fence_dir(source);
        let path = self.doc_path(source, id);
        run_blocking(move || {
            let _guard = fence(&root, token)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(Written::Changed),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Written::Unchanged),
                Err(source) => Err(Error::Io { path, source }),
            }
        })
        .await
    }
}

/// A document whose file path is taken by a directory can never be written
/// there: that is the document's failure, not the sink's.
fn rejected_if_permanent(e: Error, id: DocumentId) -> Error {
    match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::IsADirectory => Error::Rejected {
            id,
            reason: format!("{} is a directory", path.display()),
        },
        other => other,
    }
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // The closure does not panic on its own; a JoinError means the runtime is shutting down.
        Err(e) => Err(Error::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(token: u64, version: &str, content: &str) -> SinkDocument {
        SinkDocument {
            schema_version: crate::sinks::SCHEMA_VERSION,
            source: SourceId::new("eng").unwrap(),
            id: DocumentId("a/b".into()),
            title: "T".into(),
            breadcrumb: vec![],
            parent: None,
            version: version.into(),
            content: content.into(),
            about: crate::sinks::About::default(),
            content_hash: format!("h-{content}"),
            fencing_token: FencingToken(token),
            links: vec![],
        }
    }

    /// Writes are idempotent, deletes remove the file, and a stale token is refused.
    #[tokio::test]
    async fn fenced_idempotent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path());
        assert_eq!(sink.upsert(&doc(2, "1", "x")).await.unwrap(), Written::Changed);
        assert_eq!(sink.upsert(&doc(2, "1", "x")).await.unwrap(), Written::Unchanged);
        assert_eq!(sink.upsert(&doc(3, "2", "y")).await.unwrap(), Written::Changed);
        let err = sink.upsert(&doc(2, "3", "stale")).await.unwrap_err();
        assert!(matches!(
            err,
            Error::StaleFence(StaleFence {
                ours: FencingToken(2),
                current: FencingToken(3)
            })
        ));
        let all = sink.read_all(&SourceId::new("eng").unwrap()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].content, "y");
        let src = SourceId::new("eng").unwrap();
        assert!(matches!(
            sink.delete(&src, &DocumentId("a/b".into()), FencingToken(2)).await,
            Err(Error::StaleFence(_))
        ));
        assert_eq!(
            sink.delete(&src, &DocumentId("a/b".into()), FencingToken(3))
                .await
                .unwrap(),
            Written::Changed
        );
        assert!(sink.read_all(&src).unwrap().is_empty());
    }

    /// A registered token shuts out lower ones before the new run writes anything.
    #[tokio::test]
    async fn registered_token_refuses_older_writes() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path());
        let src = SourceId::new("eng").unwrap();
        assert_eq!(sink.upsert(&doc(2, "1", "x")).await.unwrap(), Written::Changed);
        sink.register_token(&src, FencingToken(3)).await.unwrap();
        assert!(matches!(
            sink.delete(&src, &DocumentId("a/b".into()), FencingToken(2)).await,
            Err(Error::StaleFence(StaleFence {
                ours: FencingToken(2),
                current: FencingToken(3)
            }))
        ));
        assert!(matches!(
            sink.upsert(&doc(2, "2", "y")).await,
            Err(Error::StaleFence(_))
        ));
        assert!(matches!(
            sink.register_token(&src, FencingToken(2)).await,
            Err(Error::StaleFence(_))
        ));
        assert_eq!(sink.read_all(&src).unwrap()[0].content, "x");
    }

    /// Any id, however long or exotic, gets one file name of at most 255 bytes,
    /// distinct from its neighbours', and round-trips through the sink.
    #[tokio::test]
    async fn long_ids_get_bounded_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path());
        let src = SourceId::new("eng").unwrap();
        let long = format!("docs/{}/é-🚀", "x".repeat(300));
        let sibling = format!("{long}-2");
        for id in [&long, &sibling] {
            let name = file_name(id);
            assert!(name.len() <= MAX_FILE_NAME, "{} bytes", name.len());
            let mut d = doc(1, "1", id);
            d.id = DocumentId(id.clone());
            assert_eq!(sink.upsert(&d).await.unwrap(), Written::Changed);
        }
        assert_ne!(file_name(&long), file_name(&sibling));
        assert_eq!(file_name("page-12"), "page-12.json", "short names are unchanged");
        let got = sink
            .get(&src, &DocumentId(long.clone()))
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(got.id.0, long);
        let ids: Vec<String> = sink.read_all(&src).unwrap().into_iter().map(|d| d.id.0).collect();
        assert_eq!(ids, vec![long.clone(), sibling]);
        assert_eq!(
            sink.delete(&src, &DocumentId(long), FencingToken(1)).await.unwrap(),
            Written::Changed
        );
    }

    /// Ids with path separators or dots cannot escape the directory.
    #[test]
    fn ids_are_escaped() {
        assert_eq!(escape_id("../x"), "%2E.%2Fx");
        assert_eq!(escape_id("page-12_a.b"), "page-12_a.b");
    }
}
