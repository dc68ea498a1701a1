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
//! - A database that cannot be reached is [`Error::Unavailable`] (the page is
//!   retried); a document the database refuses is [`Error::Rejected`] (it fails alone).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use super::{About, Error, Link, Sink, SinkDocument, Written};
use crate::lock::fencing::StaleFence;
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

const UPSERT: &str = "INSERT INTO documents (source, id, schema_version, title, breadcrumb, parent, version, content, \
     url, mime_type, modified_at, size_bytes, source_sha256, content_note, raw_html, content_hash, fencing_token, links) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
     ON CONFLICT (source, id) DO UPDATE SET schema_version = EXCLUDED.schema_version, title = EXCLUDED.title, \
     breadcrumb = EXCLUDED.breadcrumb, parent = EXCLUDED.parent, version = EXCLUDED.version, \
     content = EXCLUDED.content, url = EXCLUDED.url, mime_type = EXCLUDED.mime_type, \
     modified_at = EXCLUDED.modified_at, size_bytes = EXCLUDED.size_bytes, \
     source_sha256 = EXCLUDED.source_sha256, content_note = EXCLUDED.content_note, raw_html = EXCLUDED.raw_html, \
     content_hash = EXCLUDED.content_hash, fencing_token = EXCLUDED.fencing_token, links = EXCLUDED.links, \
     written_at = now()";

const SELECT: &str = "SELECT schema_version, title, breadcrumb, parent, version, content, url, mime_type, modified_at, \
     size_bytes, source_sha256, content_note, raw_html, content_hash, fencing_token, links \
     FROM documents WHERE source = $1 AND id = $2";

/// Documents and fences in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresSink {
    pool: Pool,
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
            migrated: Arc::new(OnceCell::new()),
        })
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

#[async_trait]
impl Sink for PostgresSink {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| unavailable("beginning", e))?;
        raise_fence(&tx, source, token).await?;
        tx.commit().await.map_err(|e| unavailable("committing the fence", e))
    }

    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| unavailable("beginning", e))?;
        raise_fence(&tx, &doc.source, doc.fencing_token).await?;
        let source = doc.source.as_str();
        let held = tx
            .query_opt(
                "SELECT version, content_hash FROM documents WHERE source = $1 AND id = $2",
                &[&source, &doc.id.0],
            )
            .await
            .map_err(|e| statement(&doc.id, "reading", e))?;
        if held.is_some_and(|row| row.get::<_, String>(0) == doc.version && row.get::<_, String>(1) == doc.content_hash)
        {
            tx.commit().await.map_err(|e| unavailable("committing", e))?;
            return Ok(Written::Unchanged);
        }
        let links = serde_json::to_value(&doc.links).unwrap_or_default();
        let parent = doc.parent.as_ref().map(|p| p.0.as_str());
        let size = doc.about.size_bytes.and_then(|s| i64::try_from(s).ok());
        let schema = i32::try_from(doc.schema_version).unwrap_or(i32::MAX);
        tx.execute(
            UPSERT,
            &[
                &source,
                &doc.id.0,
                &schema,
                &doc.title,
                &doc.breadcrumb,
                &parent,
                &doc.version,
                &doc.content,
                &doc.about.url,
                &doc.about.mime_type,
                &doc.about.modified_at,
                &size,
                &doc.about.source_sha256,
                &doc.about.content_note,
                &doc.about.raw_html,
                &doc.content_hash,
                &token_of(doc.fencing_token)?,
                &links,
            ],
        )
        .await
        .map_err(|e| statement(&doc.id, "writing", e))?;
        tx.commit().await.map_err(|e| unavailable("committing", e))?;
        Ok(Written::Changed)
    }

    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| unavailable("beginning", e))?;
        raise_fence(&tx, source, token).await?;
        let gone = tx
            .execute(
                "DELETE FROM documents WHERE source = $1 AND id = $2",
                &[&source.as_str(), &id.0],
            )
            .await
            .map_err(|e| statement(id, "deleting", e))?;
        tx.commit().await.map_err(|e| unavailable("committing", e))?;
        Ok(if gone > 0 { Written::Changed } else { Written::Unchanged })
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
}
