//! The directory sink: one JSON file per document, `<root>/<source>/docs/<id>.json`
//! (the id escaped; an id whose name would pass 255 bytes is shortened to a
//! readable prefix plus its SHA-256, and the full id is inside the file).
//!
//! Invariants:
//! - A write is atomic: the file is written to a temporary name, made durable,
//!   and renamed over the old one, so a reader never sees half a document.
//!   Durability is per page, not per document: a page's files are written,
//!   synced once, published, and the directory synced once; the page is
//!   acknowledged only after that.
//! - Fencing: `<root>/<source>/.fence` holds the highest token seen, raised
//!   when a run starts (`register_token`) and by every write. Publishing a
//!   page takes an exclusive `flock` on it, checks and raises the token,
//!   renames and removes, and unlocks; a stale page publishes nothing.
//!   Workers in several processes on one host (or one shared volume with
//!   working locks) are serialised per source.
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
use serde::{Deserialize, Serialize};

use super::chunks::{Chunk, ChunkConfig, split};
use super::{Applied, Change, Error, Sink, SinkDocument, Written, search};
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
        let mut docs: Vec<SinkDocument> = Vec::new();
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

/// Reads a JSON file (a document, or part of one); `None` when it is missing
/// or not what was expected.
fn read_doc<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
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

/// One change of a page, owned, for the blocking pool.
enum Planned {
    Put { path: PathBuf, doc: Box<SinkDocument> },
    Delete { path: PathBuf },
}

/// A document file written under a temporary name, not yet published.
struct Staged {
    /// The change's place in the page.
    index: usize,
    id: DocumentId,
    tmp: PathBuf,
    path: PathBuf,
}

/// Temporary files not published (an error, a stale token) are removed.
struct Unpublished(Vec<Staged>);

impl Drop for Unpublished {
    fn drop(&mut self) {
        for staged in &self.0 {
            let _ = fs::remove_file(&staged.tmp);
        }
    }
}

/// Applies a page: stages every changed document under a temporary name,
/// makes their bytes durable with one sync, then, holding the fence, checks the
/// token and publishes (renames over the old files, removes deleted ones), and
/// makes the directory durable with one more. Two syncs a page, not one or
/// more a document (issue 12.5); nothing is published before its bytes are on
/// disk, and nothing is acknowledged before its name is.
fn write_page(
    fence_dir: &Path,
    docs_dir: &Path,
    token: FencingToken,
    changes: Vec<Planned>,
    chunking: Option<ChunkConfig>,
) -> Result<Applied, Error> {
    fs::create_dir_all(docs_dir).map_err(io(docs_dir))?;
    let mut results: Vec<Option<Result<Written, Error>>> = Vec::with_capacity(changes.len());
    let mut staged = Unpublished(Vec::new());
    let mut deletions = Vec::new();
    for (index, change) in changes.into_iter().enumerate() {
        match change {
            Planned::Put { path, doc } => match stage(docs_dir, &path, &doc, chunking) {
                Ok(Some(tmp)) => {
                    let id = doc.id;
                    staged.0.push(Staged { index, id, tmp, path });
                    results.push(None);
                }
                Ok(None) => results.push(Some(Ok(Written::Unchanged))),
                Err(e) => results.push(Some(Err(rejected_if_permanent(e, doc.id)))),
            },
            Planned::Delete { path } => {
                deletions.push((index, path));
                results.push(None);
            }
        }
    }
    if !staged.0.is_empty() {
        sync_file_system(docs_dir)?;
    }
    {
        let _guard = fence(fence_dir, token)?;
        for Staged { index, id, tmp, path } in std::mem::take(&mut staged.0) {
            results[index] = Some(match fs::rename(&tmp, &path) {
                Ok(()) => Ok(Written::Changed),
                Err(source) => {
                    let _ = fs::remove_file(&tmp);
                    Err(rejected_if_permanent(Error::Io { path, source }, id))
                }
            });
        }
        for (index, path) in deletions {
            results[index] = Some(match fs::remove_file(&path) {
                Ok(()) => Ok(Written::Changed),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Written::Unchanged),
                Err(source) => Err(Error::Io { path, source }),
            });
        }
    }
    if results.iter().any(|r| matches!(r, Some(Ok(Written::Changed)))) {
        File::open(docs_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(docs_dir))?;
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Ok(Written::Unchanged)))
        .collect())
}

/// Writes `doc`'s file under a temporary name in `dir` (not synced), or
/// `None` when the file at `path` already holds this version and content.
fn stage(dir: &Path, path: &Path, doc: &SinkDocument, chunking: Option<ChunkConfig>) -> Result<Option<PathBuf>, Error> {
    if let Some(held) = read_doc::<Identity>(path)?
        && held.version == doc.version
        && held.content_hash == doc.content_hash
    {
        return Ok(None);
    }
    let file = DocumentFile {
        chunks: chunking.map(|c| split(&doc.content, &c)).unwrap_or_default(),
        doc,
    };
    // Serializing a struct of strings to JSON cannot fail.
    let bytes = serde_json::to_vec_pretty(&file).expect("JSON encoding of an in-memory struct");
    // A name of its own, not derived from the document's: that one may already
    // be as long as file names can be. No `.json` ending, so readers skip it.
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let written = File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io { path: tmp, source });
    }
    Ok(Some(tmp))
}

/// What decides whether a held file is rewritten: its version and content hash.
#[derive(Deserialize)]
struct Identity {
    version: String,
    content_hash: String,
}

/// Makes every file written so far durable with one call: `syncfs` on Linux
/// (one journal commit for the whole page), each file's own sync elsewhere
/// would need their handles, so other systems sync the whole file system.
fn sync_file_system(dir: &Path) -> Result<(), Error> {
    let handle = File::open(dir).map_err(io(dir))?;
    rustix::fs::syncfs(&handle).map_err(|e| Error::Io {
        path: dir.to_owned(),
        source: e.into(),
    })
}

#[async_trait]
impl Sink for DirectorySink {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        let root = self.fence_dir(source);
        run_blocking(move || fence(&root, token).map(drop)).await
    }

    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        let mut applied = self.apply(&doc.source, doc.fencing_token, &[Change::Put(doc)]).await?;
        applied.pop().unwrap_or(Ok(Written::Unchanged))
    }

    async fn apply(&self, source: &SourceId, token: FencingToken, changes: &[Change<'_>]) -> Result<Applied, Error> {
        let fence_dir = self.fence_dir(source);
        let docs_dir = self.source_dir(source);
        let planned = changes
            .iter()
            .map(|change| match change {
                Change::Put(doc) => Planned::Put {
                    path: self.doc_path(source, &doc.id),
                    doc: Box::new((*doc).clone()),
                },
                Change::Delete(id) => Planned::Delete {
                    path: self.doc_path(source, id),
                },
            })
            .collect();
        let chunking = self.chunking;
        run_blocking(move || write_page(&fence_dir, &docs_dir, token, planned, chunking)).await
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
        let mut applied = self.apply(source, token, &[Change::Delete(id)]).await?;
        applied.pop().unwrap_or(Ok(Written::Unchanged))
    }

    /// Reads every document of the source: a directory has no index.
    async fn search(&self, query: &search::Query) -> Result<Option<Vec<search::Hit>>, Error> {
        let sink = self.clone();
        let query = query.clone();
        run_blocking(move || Ok(Some(search::search_plainly(sink.read_all(&query.source)?, &query)))).await
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
            permissions: crate::permissions::Permissions::public(serde_json::Value::Null),
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

    /// A page is applied as a whole: each change gets its own result in order
    /// (a document whose path is a directory fails alone), and a page under a
    /// stale token publishes nothing and leaves no temporary file behind.
    #[tokio::test]
    async fn a_page_applies_in_order_and_a_stale_page_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirectorySink::new(dir.path());
        let src = SourceId::new("eng").unwrap();
        let named = |id: &str, token: u64, content: &str| {
            let mut d = doc(token, "1", content);
            d.id = DocumentId(id.into());
            d
        };
        let (kept, gone, blocked) = (named("kept", 2, "k"), named("gone", 2, "g"), named("blocked", 2, "b"));
        sink.upsert(&kept).await.unwrap();
        sink.upsert(&gone).await.unwrap();
        std::fs::create_dir_all(sink.doc_path(&src, &blocked.id)).unwrap();
        let fresh = named("fresh", 2, "f");
        let applied = sink
            .apply(
                &src,
                FencingToken(2),
                &[
                    Change::Put(&kept),
                    Change::Put(&fresh),
                    Change::Delete(&gone.id),
                    Change::Put(&blocked),
                    Change::Delete(&DocumentId("never".into())),
                ],
            )
            .await
            .unwrap();
        assert!(matches!(applied[0], Ok(Written::Unchanged)), "{applied:?}");
        assert!(matches!(applied[1], Ok(Written::Changed)), "{applied:?}");
        assert!(matches!(applied[2], Ok(Written::Changed)), "{applied:?}");
        assert!(
            matches!(&applied[3], Err(Error::Rejected { id, .. }) if id.0 == "blocked"),
            "{applied:?}"
        );
        assert!(matches!(applied[4], Ok(Written::Unchanged)), "{applied:?}");
        let ids = |sink: &DirectorySink| -> Vec<String> {
            sink.read_all(&src).unwrap().into_iter().map(|d| d.id.0).collect()
        };
        assert_eq!(ids(&sink), ["fresh", "kept"]);

        sink.register_token(&src, FencingToken(3)).await.unwrap();
        let late = named("late", 2, "l");
        let refused = sink
            .apply(&src, FencingToken(2), &[Change::Put(&late), Change::Delete(&kept.id)])
            .await;
        assert!(matches!(refused, Err(Error::StaleFence(_))), "{refused:?}");
        assert_eq!(ids(&sink), ["fresh", "kept"]);
        let leftovers: Vec<_> = std::fs::read_dir(sink.source_dir(&src))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
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
