//! The dead-letter stream: entries that cannot be processed, kept with the reason.
//!
//! Moving is XADD to the dead-letter stream, then XACK on the origin: if we die
//! between the two, the entry is dead-lettered twice, never lost.
//!
//! Dead letters are for operators and nobody acks them, so the stream is
//! bounded by policy ([`trim`]): at most `max_len` entries, none older than
//! `max_age` (both `[queue]` settings).

use std::sync::LazyLock;
use std::time::Duration;

use crate::db::Pool;
use deadpool_redis::redis::Script;

use super::jobs::{PageJob, SyncRequest};
use super::streams::{self, Entry};
use super::{Error, RedisContext};
use crate::keys::Keys;
use crate::types::{DocumentId, RunId, SourceId, SyncMode};

/// A document that failed on its own while the rest of its page was applied.
#[derive(Debug, Clone, Copy)]
pub struct FailedDocument<'a> {
    /// Its source.
    pub source: &'a SourceId,
    /// The run.
    pub run: &'a RunId,
    /// The page of the run.
    pub page: u32,
    /// The document.
    pub document: &'a DocumentId,
    /// What went wrong.
    pub reason: &'a str,
    /// Whether a later attempt may succeed (every later run retries it anyway).
    pub retryable: bool,
}

/// Adds a failed document to `dead_letters` (`origin` = `document`): nothing is
/// acked, the page it came from completed without it.
pub async fn document_failed(pool: &Pool, dead_letters: &str, failed: &FailedDocument<'_>) -> Result<(), Error> {
    let page = failed.page.to_string();
    let retryable = if failed.retryable { "true" } else { "false" };
    let fields: Vec<(&str, &[u8])> = vec![
        ("origin", b"document"),
        ("source", failed.source.as_str().as_bytes()),
        ("run", failed.run.0.as_bytes()),
        ("page", page.as_bytes()),
        ("document", failed.document.0.as_bytes()),
        ("reason", failed.reason.as_bytes()),
        ("retryable", retryable.as_bytes()),
    ];
    streams::add(pool, dead_letters, &fields).await?;
    Ok(())
}

static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/trim_dead_letters.lua")));

/// Drops the oldest dead letters beyond `max_len` and every one older than
/// `max_age` (by its entry id, stamped by the Redis clock); returns how many went.
pub async fn trim(pool: &Pool, dead_letters: &str, max_len: u64, max_age: Duration) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    TRIM.key(dead_letters)
        .arg(max_len)
        .arg(max_age.as_millis() as u64)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("trimming {dead_letters}"))
}

/// Copies `entry` to `dead_letters` with `reason`, then acks it on `origin`.
pub async fn dead_letter(
    pool: &Pool,
    dead_letters: &str,
    origin: &str,
    group: &str,
    entry: &Entry,
    reason: &str,
    deliveries: u64,
) -> Result<(), Error> {
    let deliveries = deliveries.to_string();
    let mut fields: Vec<(&str, &[u8])> = vec![
        ("origin", origin.as_bytes()),
        ("origin_id", entry.id.as_bytes()),
        ("reason", reason.as_bytes()),
        ("deliveries", deliveries.as_bytes()),
    ];
    let mut original: Vec<(&String, &Vec<u8>)> = entry.fields.iter().collect();
    original.sort();
    let renamed: Vec<(String, &[u8])> = original
        .into_iter()
        .map(|(k, v)| (format!("orig.{k}"), v.as_slice()))
        .collect();
    fields.extend(renamed.iter().map(|(k, v)| (k.as_str(), *v)));
    streams::add(pool, dead_letters, &fields).await?;
    streams::ack(pool, origin, group, &[entry.id.as_str()]).await
}

/// A dead letter as an operator reads it: the reason and where it came from,
/// and the original message decoded (`tidemark dlq`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// The dead letter's own entry id (its time, by the Redis clock).
    pub id: String,
    /// The stream it came from (`tm:requests`, `tm:jobs`), or `document`.
    pub origin: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Deliveries before it was (stream entries only).
    pub deliveries: Option<u64>,
    /// Its source, when known.
    pub source: Option<String>,
    /// Its run (page jobs, documents).
    pub run: Option<String>,
    /// Its page (page jobs, documents).
    pub page: Option<u32>,
    /// The document (documents that failed alone).
    pub document: Option<String>,
    /// The original message decoded: the sync request or page job as JSON,
    /// or `{"undecodable": reason}` for a poison entry.
    pub body: serde_json::Value,
}

/// What a dead letter asks to redo.
#[derive(Debug, Clone, PartialEq)]
pub enum Redo {
    /// A sync request, as it was.
    Request(SyncRequest),
    /// A page job: its documents, by a targeted run of its source.
    Page(PageJob),
    /// One document, by a targeted run of its source.
    Document(SourceId, DocumentId),
}

/// The original entry inside a dead letter (its `orig.*` fields).
fn original(entry: &Entry) -> Entry {
    Entry {
        id: entry.text("origin_id").unwrap_or_default().to_owned(),
        fields: entry
            .fields
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("orig.").map(|k| (k.to_owned(), v.clone())))
            .collect(),
    }
}

/// What `entry` (of the dead-letter stream) asks to redo, the streams named
/// by `keys`; `Err` says why it cannot be redone.
pub fn redo_of(entry: &Entry, keys: &Keys) -> Result<Redo, String> {
    let origin = entry.text("origin").unwrap_or_default();
    if origin == "document" {
        let source = entry.text("source").and_then(|s| SourceId::new(s).ok());
        let document = entry.text("document").map(|d| DocumentId(d.to_owned()));
        return match (source, document) {
            (Some(s), Some(d)) => Ok(Redo::Document(s, d)),
            _ => Err("a document dead letter without a valid source and document".into()),
        };
    }
    let message = original(entry);
    if origin == keys.requests() {
        SyncRequest::from_entry(&message)
            .map(Redo::Request)
            .map_err(|e| e.to_string())
    } else if keys.is_job_stream(origin) {
        PageJob::from_entry(&message).map(Redo::Page).map_err(|e| e.to_string())
    } else {
        Err(format!("unknown origin {origin:?}"))
    }
}

/// Reads a dead-letter entry for people and scripts.
pub fn describe(entry: &Entry, keys: &Keys) -> DeadLetter {
    let text = |k: &str| entry.text(k).map(str::to_owned);
    let routing = super::jobs::routing(&original(entry));
    let body = match redo_of(entry, keys) {
        Ok(Redo::Request(r)) => serde_json::to_value(r).unwrap_or_default(),
        Ok(Redo::Page(p)) => serde_json::to_value(p).unwrap_or_default(),
        Ok(Redo::Document(..)) => serde_json::json!({"retryable": text("retryable").as_deref() == Some("true")}),
        Err(reason) => serde_json::json!({"undecodable": reason}),
    };
    DeadLetter {
        id: entry.id.clone(),
        origin: text("origin").unwrap_or_default(),
        reason: text("reason").unwrap_or_default(),
        deliveries: entry.text("deliveries").and_then(|d| d.parse().ok()),
        source: text("source").or_else(|| routing.source.map(|s| s.as_str().to_owned())),
        run: text("run").or_else(|| routing.run.map(|r| r.0)),
        page: entry.text("page").and_then(|p| p.parse().ok()).or(routing.page),
        document: text("document"),
        body,
    }
}

/// The sync request that redoes `redo`: the same request under a new id, or a
/// targeted incremental run of the page's documents (a page job itself is
/// never re-queued: its run and token are gone, and a new run fetches afresh).
pub fn replay_request(redo: &Redo) -> SyncRequest {
    match redo {
        Redo::Request(r) => {
            let mut again = SyncRequest::new(r.source.clone(), r.mode, "dlq replay");
            again.targets = r.targets.clone();
            again
        }
        Redo::Page(p) => {
            let mut again = SyncRequest::new(p.source.clone(), SyncMode::Incremental, "dlq replay");
            again.targets = p.items.iter().map(|i| i.meta.id.clone()).collect();
            again
        }
        Redo::Document(source, id) => {
            let mut again = SyncRequest::new(source.clone(), SyncMode::Incremental, "dlq replay");
            again.targets = vec![id.clone()];
            again
        }
    }
}
