//! The PostgreSQL sink: one row per document in `documents`, searchable out of
//! the box (a generated `tsvector` column with a GIN index), and one fence row
//! per source in `tidemark_fences`.
//!
//! Invariants:
//! - The schema is tidemark's own, created and migrated on first use by each
//!   process with versioned migrations (`refinery`, files in `migrations/`),
//!   under an advisory lock so that processes starting together migrate once.
//! - Every write and delete raises the source's fence row and checks it in the
//!   same transaction as the change: a write under a token lower than the fence
//!   is rolled back and refused, and a run's registered token holds even if the
//!   run never writes (the fence row is raised by [`Sink::register_token`]).
//! - An upsert of the same version and content hash changes nothing.
//! - A page is written in one statement ([`Sink::apply`]): one round trip, one
//!   transaction. A page the database refuses as a whole (one document it
//!   cannot store) is applied again one document at a time, so that document
//!   fails alone.
//! - A database that cannot be reached is [`Error::Unavailable`] (the page is
//!   retried); a document the database refuses is [`Error::Rejected`] (it fails alone).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Serialize;
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;
use tokio_postgres::types::Json;

use super::chunks::{ChunkConfig, split};
use super::search::{Hit, Query};
use super::{About, Applied, Change, Error, Link, Sink, SinkDocument, Written, apply_each};
use crate::lock::fencing::StaleFence;
use crate::permissions::Permissions;
use crate::types::{DocumentId, FencingToken, SourceId};

mod embedded {
    refinery::embed_migrations!("src/sinks/migrations");
}

/// Any 64-bit number; only tidemark's migrations take this advisory lock.
const MIGRATION_LOCK: i64 = 0x7469_6465_6d61_726b;

/// Raises the source's fence to the token given (never lowers it) and returns
/// the fence as it now stands; the row stays locked until the transaction ends.
const RAISE_FENCE: &str = "INSERT INTO tidemark_fences (source, token) VALUES ($1, $2) \
     ON CONFLICT (source) DO UPDATE SET token = GREATEST(tidemark_fences.token, EXCLUDED.token) \
     RETURNING token";

/// A whole page in one statement, hence one round trip and one transaction:
/// the fence raised and checked first (the fence CTE runs before the writes
/// read its answer), then the documents written, those already holding the
/// same version and content hash left alone, then the deletions (their chunks
/// go with them, `ON DELETE CASCADE`), then the chunks of each document
/// written: rows whose text is gone deleted, new texts inserted, the rest
/// only renumbered. Under a stale token nothing is written and the fence
/// comes back higher than `$2`. `$3` is the page's documents as a JSON array
/// (`jsonb_to_recordset` turns JSON arrays into `TEXT[]`), `$4` the ids to
/// delete, `$5` the chunks of the documents in `$3` (empty without chunking,
/// which then removes any chunks those documents had).
const APPLY_PAGE: &str = "WITH fence AS (
     INSERT INTO tidemark_fences (source, token) VALUES ($1, $2)
     ON CONFLICT (source) DO UPDATE SET token = GREATEST(tidemark_fences.token, EXCLUDED.token)
     RETURNING token),
 incoming AS (
     SELECT * FROM jsonb_to_recordset($3::jsonb) AS d(id TEXT, schema_version INTEGER, title TEXT,
         breadcrumb TEXT[], parent TEXT, version TEXT, content TEXT, url TEXT, mime_type TEXT,
         modified_at TIMESTAMPTZ, size_bytes BIGINT, source_sha256 TEXT, content_note TEXT, raw_html TEXT,
         content_hash TEXT, links JSONB, permissions JSONB, readers TEXT[])),
 put AS (
     INSERT INTO documents (source, id, schema_version, title, breadcrumb, parent, version, content, url,
         mime_type, modified_at, size_bytes, source_sha256, content_note, raw_html, content_hash,
         fencing_token, links, permissions, readers)
     SELECT $1, id, schema_version, title, breadcrumb, parent, version, content, url, mime_type,
         modified_at, size_bytes, source_sha256, content_note, raw_html, content_hash, $2, links,
         permissions, readers
     FROM incoming WHERE (SELECT token FROM fence) <= $2
     ON CONFLICT (source, id) DO UPDATE SET schema_version = EXCLUDED.schema_version, title = EXCLUDED.title,
         breadcrumb = EXCLUDED.breadcrumb, parent = EXCLUDED.parent, version = EXCLUDED.version,
         content = EXCLUDED.content, url = EXCLUDED.url, mime_type = EXCLUDED.mime_type,
         modified_at = EXCLUDED.modified_at, size_bytes = EXCLUDED.size_bytes,
         source_sha256 = EXCLUDED.source_sha256, content_note = EXCLUDED.content_note,
         raw_html = EXCLUDED.raw_html, content_hash = EXCLUDED.content_hash,
         fencing_token = EXCLUDED.fencing_token, links = EXCLUDED.links, permissions = EXCLUDED.permissions,
         readers = EXCLUDED.readers, written_at = now()
     WHERE (documents.version, documents.content_hash) IS DISTINCT FROM (EXCLUDED.version, EXCLUDED.content_hash)
     RETURNING id),
 gone AS (
     DELETE FROM documents WHERE source = $1 AND id = ANY($4::text[]) AND (SELECT token FROM fence) <= $2
     RETURNING id),
 new_chunks AS (
     SELECT * FROM jsonb_to_recordset($5::jsonb) AS c(document_id TEXT, chunk_hash TEXT, occurrence INTEGER,
         seq INTEGER, char_start BIGINT, content TEXT)
     WHERE document_id IN (SELECT id FROM put)),
 old_chunks AS (
     DELETE FROM chunks k WHERE k.source = $1 AND k.document_id IN (SELECT id FROM put)
         AND NOT EXISTS (SELECT 1 FROM new_chunks n WHERE n.document_id = k.document_id
             AND n.chunk_hash = k.chunk_hash AND n.occurrence = k.occurrence)
     RETURNING 1),
 chunked AS (
     INSERT INTO chunks (source, document_id, chunk_hash, occurrence, seq, char_start, content)
     SELECT $1, document_id, chunk_hash, occurrence, seq, char_start, content FROM new_chunks
     ON CONFLICT (source, document_id, chunk_hash, occurrence) DO UPDATE
         SET seq = EXCLUDED.seq, char_start = EXCLUDED.char_start
         WHERE (chunks.seq, chunks.char_start) IS DISTINCT FROM (EXCLUDED.seq, EXCLUDED.char_start)
     RETURNING (xmax = 0) AS inserted)
 SELECT (SELECT token FROM fence), ARRAY(SELECT id FROM put), ARRAY(SELECT id FROM gone),
     (SELECT count(*) FROM chunked WHERE inserted), (SELECT count(*) FROM old_chunks)";

/// A chunk as `APPLY_PAGE` reads it from its JSON parameter.
#[derive(Debug, Serialize)]
struct ChunkRow<'a> {
    document_id: &'a str,
    chunk_hash: String,
    occurrence: u32,
    seq: u32,
    char_start: usize,
    content: String,
}

/// A document as `APPLY_PAGE` reads it from its JSON parameter.
#[derive(Debug, Serialize)]
struct PageRow<'a> {
    id: &'a str,
    schema_version: u32,
    title: &'a str,
    breadcrumb: &'a [String],
    parent: Option<&'a str>,
    version: &'a str,
    content: &'a str,
    url: Option<&'a str>,
    mime_type: Option<&'a str>,
    modified_at: Option<DateTime<Utc>>,
    size_bytes: Option<u64>,
    source_sha256: Option<&'a str>,
    content_note: Option<&'a str>,
    raw_html: Option<&'a str>,
    content_hash: &'a str,
    links: &'a [Link],
    permissions: &'a Permissions,
    readers: &'a [String],
}

impl<'a> From<&'a SinkDocument> for PageRow<'a> {
    fn from(doc: &'a SinkDocument) -> Self {
        PageRow {
            id: &doc.id.0,
            schema_version: doc.schema_version,
            title: &doc.title,
            breadcrumb: &doc.breadcrumb,
            parent: doc.parent.as_ref().map(|p| p.0.as_str()),
            version: &doc.version,
            content: &doc.content,
            url: doc.about.url.as_deref(),
            mime_type: doc.about.mime_type.as_deref(),
            modified_at: doc.about.modified_at,
            size_bytes: doc.about.size_bytes,
            source_sha256: doc.about.source_sha256.as_deref(),
            content_note: doc.about.content_note.as_deref(),
            raw_html: doc.about.raw_html.as_deref(),
            content_hash: &doc.content_hash,
            links: &doc.links,
            permissions: &doc.permissions,
            readers: &doc.permissions.readers,
        }
    }
}

const SELECT: &str = "SELECT schema_version, title, breadcrumb, parent, version, content, url, mime_type, modified_at, \
     size_bytes, source_sha256, content_note, raw_html, content_hash, fencing_token, links, permissions \
     FROM documents WHERE source = $1 AND id = $2";

/// What `tidemark query` runs, and the README's example of a permission-aware
/// search: the reader's principals (`$3`) narrow the rows through the GIN
/// index on `readers`, `tidemark_may_read` checks the nested lists, and only
/// then are the words (`$2`, web-search syntax; empty: every readable row) ranked.
const SEARCH: &str = "SELECT id, title, breadcrumb, url, \
         CASE WHEN $2 = '' THEN 0 ELSE ts_rank(search, websearch_to_tsquery('english', $2)) END AS rank \
     FROM documents \
     WHERE source = $1 AND readers && array_append($3::text[], 'anyone') AND tidemark_may_read(permissions, $3::text[]) \
         AND ($2 = '' OR search @@ websearch_to_tsquery('english', $2)) \
     ORDER BY rank DESC, id LIMIT $4";

/// Documents and fences in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresSink {
    pool: Pool,
    /// How documents are split into `chunks` rows; `None`: no chunks.
    chunking: Option<ChunkConfig>,
    /// Set once this process has brought the schema up to date.
    migrated: Arc<OnceCell<()>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        context: format!("postgres: {what}: {e}"),
    }
}

/// A failed statement: the database refusing this document, or the connection failing.
fn statement(id: &DocumentId, what: &str, e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::Rejected {
            id: id.clone(),
            reason: format!("postgres {what}: {} ({})", db.message(), db.code().code()),
        },
        None => unavailable(what, e),
    }
}

fn token_of(t: FencingToken) -> Result<i64, Error> {
    i64::try_from(t.0).map_err(|_| Error::Unavailable {
        context: format!("postgres: fencing token {} does not fit a BIGINT", t.0),
    })
}

impl PostgresSink {
    /// A sink for `url` (`postgres://user:pass@host:port/db`) with a pool of
    /// `pool_size` connections. Nothing is connected yet: the first use
    /// connects and brings the schema up to date, so a process can start
    /// while its database is still coming up (its pages are retried).
    pub fn new(url: &str, pool_size: usize) -> Result<Self, Error> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| unavailable(&format!("the URL {:?}", crate::redact::url(url)), e))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| unavailable("building the pool", e))?;
        Ok(Self {
            pool,
            chunking: None,
            migrated: Arc::new(OnceCell::new()),
        })
    }

    /// Also splits each document written into `chunks` rows.
    pub fn with_chunks(mut self, config: ChunkConfig) -> Self {
        self.chunking = Some(config);
        self
    }

    /// [`PostgresSink::new`], then connects and migrates at once.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, Error> {
        let sink = Self::new(url, pool_size)?;
        drop(sink.client().await?);
        Ok(sink)
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut object = self.pool.get().await.map_err(|e| unavailable("connecting", e))?;
        let client: &mut tokio_postgres::Client = &mut object;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| unavailable("locking for migrations", e))?;
        let migrated = embedded::migrations::runner().run_async(client).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| unavailable("unlocking after migrations", e))?;
        migrated.map_err(|e| unavailable("migrating the schema", e))?;
        Ok(())
    }

    /// A pooled connection, the schema migrated first if this process has not yet.
    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        self.pool.get().await.map_err(|e| unavailable("connecting", e))
    }
}

/// Raises the fence inside `tx`; refused if it already stands above `token`.
async fn raise_fence(
    tx: &tokio_postgres::Transaction<'_>,
    source: &SourceId,
    token: FencingToken,
) -> Result<(), Error> {
    let row = tx
        .query_one(RAISE_FENCE, &[&source.as_str(), &token_of(token)?])
        .await
        .map_err(|e| unavailable("raising the fence", e))?;
    let current: i64 = row.get(0);
    let current = FencingToken(u64::try_from(current).unwrap_or(0));
    if current > token {
        return Err(Error::StaleFence(StaleFence { ours: token, current }));
    }
    Ok(())
}

/// What one `APPLY_PAGE` statement did.
enum PageOutcome {
    /// Each change's result, in order.
    Applied(Applied),
    /// The database refused the page as a whole (a document it cannot store), in its words.
    Refused(String),
}

impl PostgresSink {
    /// [`Sink::apply`] as one statement.
    async fn apply_page(
        &self,
        source: &SourceId,
        token: FencingToken,
        changes: &[Change<'_>],
    ) -> Result<PageOutcome, Error> {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        let mut chunks = Vec::new();
        for change in changes {
            match change {
                Change::Put(doc) => {
                    puts.push(PageRow::from(*doc));
                    let config = self.chunking.as_ref();
                    chunks.extend(
                        config
                            .into_iter()
                            .flat_map(|c| split(&doc.content, c))
                            .map(|c| ChunkRow {
                                document_id: &doc.id.0,
                                chunk_hash: c.hash,
                                occurrence: c.occurrence,
                                seq: c.seq,
                                char_start: c.start,
                                content: c.text,
                            }),
                    );
                }
                Change::Delete(id) => deletes.push(id.0.as_str()),
            }
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(APPLY_PAGE)
            .await
            .map_err(|e| unavailable("preparing the page write", e))?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &source.as_str(),
            &token_of(token)?,
            &Json(&puts),
            &deletes,
            &Json(&chunks),
        ];
        let row = match client.query_one(&statement, &params).await {
            Ok(row) => row,
            Err(e) => {
                return match e.as_db_error() {
                    Some(db) => Ok(PageOutcome::Refused(format!("{} ({})", db.message(), db.code().code()))),
                    None => Err(unavailable("writing the page", e)),
                };
            }
        };
        let current = FencingToken(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
        if current > token {
            return Err(Error::StaleFence(StaleFence { ours: token, current }));
        }
        let put: HashSet<String> = row.get::<_, Vec<String>>(1).into_iter().collect();
        let gone: HashSet<String> = row.get::<_, Vec<String>>(2).into_iter().collect();
        let written = |changed: bool| Ok(if changed { Written::Changed } else { Written::Unchanged });
        let applied = changes
            .iter()
            .map(|change| match change {
                Change::Put(doc) => written(put.contains(&doc.id.0)),
                Change::Delete(id) => written(gone.contains(&id.0)),
            })
            .collect();
        // New chunk texts are what a downstream embedder will embed.
        let (inserted, deleted): (i64, i64) = (row.get(3), row.get(4));
        tracing::debug!(source = %source, chunks_inserted = inserted, chunks_deleted = deleted, "page written");
        Ok(PageOutcome::Applied(applied))
    }

    /// One change as a page of its own: refused by the database means this document is.
    async fn apply_one(&self, source: &SourceId, token: FencingToken, change: Change<'_>) -> Result<Written, Error> {
        match self.apply_page(source, token, &[change]).await? {
            PageOutcome::Applied(mut applied) => applied.pop().unwrap_or(Ok(Written::Unchanged)),
            PageOutcome::Refused(reason) => Err(Error::Rejected {
                id: change.id().clone(),
                reason: format!("postgres: {reason}"),
            }),
        }
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn apply(&self, source: &SourceId, token: FencingToken, changes: &[Change<'_>]) -> Result<Applied, Error> {
        let mut ids = HashSet::with_capacity(changes.len());
        // One statement cannot touch a row twice; a page never names a document
        // twice, but should one, it is applied in order, one change at a time.
        let distinct = changes.iter().all(|c| ids.insert(c.id()));
        if distinct
            && !changes.is_empty()
            && let PageOutcome::Applied(applied) = self.apply_page(source, token, changes).await?
        {
            return Ok(applied);
        }
        apply_each(self, source, token, changes).await
    }

    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| unavailable("beginning", e))?;
        raise_fence(&tx, source, token).await?;
        tx.commit().await.map_err(|e| unavailable("committing the fence", e))
    }

    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        self.apply_one(&doc.source, doc.fencing_token, Change::Put(doc)).await
    }

    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error> {
        self.apply_one(source, token, Change::Delete(id)).await
    }

    async fn get(&self, source: &SourceId, id: &DocumentId) -> Result<Option<SinkDocument>, Error> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(SELECT, &[&source.as_str(), &id.0])
            .await
            .map_err(|e| statement(id, "reading", e))?
        else {
            return Ok(None);
        };
        let links: serde_json::Value = row.get(15);
        let links: Vec<Link> = serde_json::from_value(links).map_err(|e| Error::Rejected {
            id: id.clone(),
            reason: format!("postgres: links of the stored row: {e}"),
        })?;
        let permissions: Option<serde_json::Value> = row.get(16);
        let permissions: Permissions = match permissions {
            Some(p) => serde_json::from_value(p).map_err(|e| Error::Rejected {
                id: id.clone(),
                reason: format!("postgres: permissions of the stored row: {e}"),
            })?,
            // Written before schema 3: nobody, until written again.
            None => Permissions::default(),
        };
        let schema: i32 = row.get(0);
        let size: Option<i64> = row.get(9);
        let token: i64 = row.get(14);
        Ok(Some(SinkDocument {
            schema_version: u32::try_from(schema).unwrap_or(0),
            source: source.clone(),
            id: id.clone(),
            title: row.get(1),
            breadcrumb: row.get(2),
            parent: row.get::<_, Option<String>>(3).map(DocumentId),
            version: row.get(4),
            content: row.get(5),
            about: About {
                url: row.get(6),
                mime_type: row.get(7),
                modified_at: row.get(8),
                size_bytes: size.and_then(|s| u64::try_from(s).ok()),
                source_sha256: row.get(10),
                content_note: row.get(11),
                raw_html: row.get(12),
            },
            permissions,
            content_hash: row.get(13),
            fencing_token: FencingToken(u64::try_from(token).unwrap_or(0)),
            links,
        }))
    }

    async fn versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, version FROM documents WHERE source = $1",
                &[&source.as_str()],
            )
            .await
            .map_err(|e| unavailable("listing versions", e))?;
        Ok(rows.into_iter().map(|r| (DocumentId(r.get(0)), r.get(1))).collect())
    }

    async fn search(&self, query: &Query) -> Result<Option<Vec<Hit>>, Error> {
        let client = self.client().await?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                SEARCH,
                &[&query.source.as_str(), &query.words, &query.principals, &limit],
            )
            .await
            .map_err(|e| unavailable("searching", e))?;
        Ok(Some(
            rows.into_iter()
                .map(|r| Hit {
                    id: DocumentId(r.get(0)),
                    title: r.get(1),
                    breadcrumb: r.get(2),
                    url: r.get(3),
                    rank: r.get(4),
                })
                .collect(),
        ))
    }
}
