//! Per-source sync state in Redis: checkpoint, the documents we hold, run records.
//!
//! Invariants:
//! - Every write that a run makes (document state, checkpoint, page progress,
//!   run outcome) is a Lua script that first checks the run's fencing token
//!   against the source's fence ([`crate::lock::fencing`]), so a run that lost
//!   its lock cannot change anything once a newer run has registered its token.
//! - Page completion is idempotent: a page is counted once however many times
//!   it is processed (the run keeps the set of done pages).
//! - The checkpoint is only written when every page of the run is done, so it
//!   never advances past work that was not durably applied.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_redis::Pool;
use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::lock::fencing::{LUA_CHECK_AND_RAISE, StaleFence, check_reply};
use crate::queue;
use crate::sources::Checkpoint;
use crate::types::{DocumentId, FencingToken, RunId, SourceId, SyncMode};

/// State-store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] queue::Error),
    /// A newer run holds the source; this write was refused.
    #[error(transparent)]
    StaleFence(#[from] StaleFence),
    /// Stored data could not be decoded.
    #[error("state {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl From<redis::RedisError> for Error {
    fn from(source: redis::RedisError) -> Self {
        Error::Queue(queue::Error::Redis {
            context: "state".into(),
            source,
        })
    }
}

impl From<deadpool_redis::PoolError> for Error {
    fn from(e: deadpool_redis::PoolError) -> Self {
        Error::Queue(queue::Error::Pool(e))
    }
}

/// What we hold for one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocState {
    /// Source version last written to the sink.
    pub version: String,
    /// SHA-256 of what was written (title, breadcrumb, content).
    pub content_hash: String,
    /// Title.
    pub title: String,
    /// Parent document.
    pub parent: Option<DocumentId>,
    /// Ancestor titles, root first.
    pub breadcrumb: Vec<String>,
    /// Documents of the same source this one links to.
    #[serde(default)]
    pub links: Vec<DocumentId>,
    /// Token of the run that wrote it.
    pub token: FencingToken,
    /// When it was written.
    pub synced_at: DateTime<Utc>,
}

/// The part of a [`DocState`] a run compares a change feed against. Decoding
/// it from a stored `DocState` skips the other fields without allocating them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HeldMeta {
    /// Source version last written.
    pub version: String,
    /// Title.
    pub title: String,
    /// Parent document.
    pub parent: Option<DocumentId>,
}

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Holding the lock, reading the feed or waiting for pages.
    Running,
    /// Every page done, checkpoint committed.
    Completed,
    /// Finished, but some pages were dead-lettered; the checkpoint did not advance.
    CompletedWithErrors,
    /// Could not finish (source error, lost lock, stall); nothing committed.
    Failed,
    /// Its coordinator vanished; a later run took over the source.
    Abandoned,
}

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Running)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::CompletedWithErrors => "completed_with_errors",
            RunStatus::Failed => "failed",
            RunStatus::Abandoned => "abandoned",
        })
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "completed_with_errors" => RunStatus::CompletedWithErrors,
            "failed" => RunStatus::Failed,
            "abandoned" => RunStatus::Abandoned,
            other => return Err(format!("unknown run status {other:?}")),
        })
    }
}

/// A run's record, as stored in its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Source.
    pub source: String,
    /// Status.
    pub status: RunStatus,
    /// Incremental or full.
    pub mode: SyncMode,
    /// Who asked (of the first request served).
    pub requested_by: String,
    /// Ids of every request this run serves (coalesced requests included).
    pub request_ids: Vec<String>,
    /// The run's fencing token.
    pub token: u64,
    /// Start time (our clock; for people only).
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub ended_at: Option<DateTime<Utc>>,
    /// The feed has been read to its end and every page enqueued.
    pub feed_done: bool,
    /// Pages enqueued.
    pub pages_total: u64,
    /// Pages processed.
    pub pages_done: u64,
    /// Pages dead-lettered.
    pub pages_failed: u64,
    /// Documents put into jobs (changed, created or deleted).
    pub docs_processed: u64,
    /// Documents written to the sink.
    pub upserted: u64,
    /// Documents removed from the sink.
    pub deleted: u64,
    /// Documents in jobs found unchanged (same version and content hash).
    pub skipped: u64,
    /// Documents seen in the feed and dropped as unchanged by version.
    pub unchanged: u64,
    /// Requests to the source's API, feed and fetches together.
    pub api_calls: u64,
    /// Dependents found (descendants of renamed or moved documents, documents linking to changed ones).
    pub dependents: u64,
    /// Dependents whose breadcrumbs or link titles were rewritten (no content fetched).
    pub dependents_updated: u64,
    /// Errors recorded.
    pub errors: u64,
    /// The last error, for people.
    pub last_error: String,
    /// Why the run did what it did (e.g. "complete listing: deletion sweep").
    pub note: String,
    /// Wall time in milliseconds, when ended.
    pub wall_ms: Option<u64>,
}

impl RunRecord {
    fn from_hash(h: &HashMap<String, String>) -> Result<Self, String> {
        let s = |k: &str| h.get(k).cloned().unwrap_or_default();
        let n = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let t = |k: &str| {
            h.get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.with_timezone(&Utc))
        };
        let started_at = t("started_at");
        let ended_at = t("ended_at");
        Ok(RunRecord {
            run_id: s("run_id"),
            source: s("source"),
            status: s("status").parse()?,
            mode: s("mode").parse()?,
            requested_by: s("requested_by"),
            request_ids: s("request_ids")
                .split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect(),
            token: n("token"),
            started_at,
            ended_at,
            feed_done: n("feed_done") == 1,
            pages_total: n("pages_total"),
            pages_done: n("pages_done"),
            pages_failed: n("pages_failed"),
            docs_processed: n("docs_processed"),
            upserted: n("upserted"),
            deleted: n("deleted"),
            skipped: n("skipped"),
            unchanged: n("unchanged"),
            api_calls: n("api_calls"),
            dependents: n("dependents"),
            dependents_updated: n("dependents_updated"),
            errors: n("errors"),
            last_error: s("last_error"),
            note: s("note"),
            wall_ms: match (started_at, ended_at) {
                (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0) as u64),
                _ => None,
            },
        })
    }
}

/// Counters a worker adds when a page is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Written to the sink.
    pub upserted: u64,
    /// Removed from the sink.
    pub deleted: u64,
    /// Unchanged by version and content hash.
    pub skipped: u64,
    /// API calls made for the page.
    pub api_calls: u64,
    /// Dependents (descendants, linking documents) rewritten without fetching.
    pub refreshed: u64,
}

// KEYS: fence, docs hash, then the index sets the ops touch.
// ARGV: token, n puts, n id/state pairs, m deletes, m ids, then (op, key index, member) triples.
static FENCED_APPLY_DOCS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_CHECK_AND_RAISE}
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
local m = tonumber(ARGV[i]); i = i + 1
for _ = 1, m do redis.call('HDEL', KEYS[2], ARGV[i]); i = i + 1 end
while i <= #ARGV do
  redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]); i = i + 3
end
return {{1, 0}}"
    ))
});

/// One document change for [`StateStore::apply_docs`], with what we held before
/// (so the reverse indexes can be updated).
#[derive(Debug, Clone)]
pub enum DocWrite {
    /// Written to the sink.
    Put {
        /// The document.
        id: DocumentId,
        /// What we hold now.
        new: DocState,
        /// What we held before, if anything.
        old: Option<DocState>,
    },
    /// Removed from the sink.
    Delete {
        /// The document.
        id: DocumentId,
        /// What we held before, if anything.
        old: Option<DocState>,
    },
}

static FENCED_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_CHECK_AND_RAISE}\nredis.call('SET', KEYS[2], ARGV[2])\nreturn {{1, 0}}"
    ))
});

static REGISTER: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{LUA_CHECK_AND_RAISE}\nreturn {{1, 0}}")));

// KEYS: fence, run hash. ARGV: token, then field/value pairs to HSET.
static FENCED_RUN_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_CHECK_AND_RAISE}
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1]) end
return {{1, 0}}"
    ))
});

// KEYS: fence, done set, run hash, wake list. ARGV: token, page, then counter/increment pairs.
// Returns {1, 1} when the page was newly done, {1, 0} when it was already counted.
static FENCED_PAGE_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_CHECK_AND_RAISE}
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return {{1, 0}} end
redis.call('HINCRBY', KEYS[3], 'pages_done', 1)
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i+1]) end
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[4], 86400000)
return {{1, 1}}"
    ))
});

// Unfenced: a dead-lettered page may not even have a readable token.
// KEYS: done set, run hash, wake list. ARGV: page, reason.
static PAGE_FAILED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'pages_failed', 1)
redis.call('HINCRBY', KEYS[2], 'errors', 1)
redis.call('HSET', KEYS[2], 'last_error', ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], 86400000)
return 1",
    )
});

/// How long finished runs' records and request mappings are kept.
const RUN_RETENTION_SECS: i64 = 7 * 24 * 3600;
/// How many runs per source `runs` lists.
const RUN_HISTORY: isize = 50;

/// Reads and writes per-source state.
#[derive(Clone)]
pub struct StateStore {
    pool: Pool,
    keys: Keys,
}

impl StateStore {
    /// A store on `pool` under `keys`.
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn fenced(
        &self,
        script: &Script,
        keys: &[String],
        token: FencingToken,
        args: &[Vec<u8>],
    ) -> Result<i64, Error> {
        let mut conn = self.pool.get().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(token.0);
        for a in args {
            inv.arg(a.as_slice());
        }
        let reply: (i64, i64) = inv.invoke_async(&mut conn).await?;
        Ok(check_reply(token, reply)?)
    }

    /// Registers a newly acquired token, so every older token is refused from now on.
    pub async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        self.fenced(&REGISTER, &[self.keys.fence(source)], token, &[]).await?;
        Ok(())
    }

    /// The highest token seen for `source` (0 if none).
    pub async fn current_fence(&self, source: &SourceId) -> Result<FencingToken, Error> {
        let mut conn = self.pool.get().await?;
        let v: Option<u64> = conn.get(self.keys.fence(source)).await?;
        Ok(FencingToken(v.unwrap_or(0)))
    }

    /// The committed checkpoint, or the default (start from nothing).
    pub async fn checkpoint(&self, source: &SourceId) -> Result<Checkpoint, Error> {
        let key = self.keys.checkpoint(source);
        let mut conn = self.pool.get().await?;
        let raw: Option<Vec<u8>> = conn.get(&key).await?;
        match raw {
            None => Ok(Checkpoint::default()),
            Some(b) => rmp_serde::from_slice(&b).map_err(|e| Error::Corrupt {
                key,
                reason: e.to_string(),
            }),
        }
    }

    /// Commits a checkpoint under `token`.
    pub async fn commit_checkpoint(
        &self,
        source: &SourceId,
        token: FencingToken,
        cp: &Checkpoint,
    ) -> Result<(), Error> {
        let body = rmp_serde::to_vec_named(cp).expect("MessagePack encoding of an in-memory struct");
        self.fenced(
            &FENCED_SET,
            &[self.keys.fence(source), self.keys.checkpoint(source)],
            token,
            &[body],
        )
        .await?;
        Ok(())
    }

    /// What a run compares against for every document we hold: version, title
    /// and parent only (not breadcrumbs, links or hashes), decoded batch by batch
    /// while scanning, so memory stays near the size of the result.
    pub async fn held_meta(&self, source: &SourceId) -> Result<HashMap<DocumentId, HeldMeta>, Error> {
        let key = self.keys.docs(source);
        let mut conn = self.pool.get().await?;
        let mut out = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, items) = scan_batch(&mut conn, &key, cursor).await?;
            for (id, bytes) in items {
                let meta: HeldMeta = decode(&key, &id, &bytes)?;
                out.insert(DocumentId(id), meta);
            }
            cursor = next;
            if cursor == 0 {
                return Ok(out);
            }
        }
    }

    /// Version, title and parent of `ids` (None where we hold nothing): one HMGET.
    pub async fn held_meta_of(&self, source: &SourceId, ids: &[&DocumentId]) -> Result<Vec<Option<HeldMeta>>, Error> {
        self.hmget(source, ids).await
    }

    /// `ids` of the source's documents hash, decoded as `T` (a `DocState` or a part of it).
    async fn hmget<T: serde::de::DeserializeOwned>(
        &self,
        source: &SourceId,
        ids: &[&DocumentId],
    ) -> Result<Vec<Option<T>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.keys.docs(source);
        let mut conn = self.pool.get().await?;
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(ids.iter().map(|d| d.0.as_str()).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?;
        raw.into_iter()
            .zip(ids)
            .map(|(b, id)| b.map(|b| decode(&key, &id.0, &b)).transpose())
            .collect()
    }

    /// The version of every document we hold, for connectors that probe
    /// conditionally or recognise moves ([`crate::sources::Source::wants_held_versions`]).
    pub async fn held_versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error> {
        Ok(self
            .held_meta(source)
            .await?
            .into_iter()
            .map(|(id, m)| (id, m.version))
            .collect())
    }

    /// Marks `add` as listed and unmarks `remove` in the run's seen set, in this order.
    pub async fn mark_seen(&self, seen: &str, add: &[&DocumentId], remove: &[&DocumentId]) -> Result<(), Error> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        if !add.is_empty() {
            pipe.sadd(seen, add.iter().map(|d| d.0.as_str()).collect::<Vec<_>>())
                .ignore();
        }
        if !remove.is_empty() {
            pipe.srem(seen, remove.iter().map(|d| d.0.as_str()).collect::<Vec<_>>())
                .ignore();
        }
        pipe.expire(seen, 86_400).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Drops a seen set.
    pub async fn clear_seen(&self, seen: &str) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: i64 = conn.del(seen).await?;
        Ok(())
    }

    /// The sweep of mark-and-sweep: every held document not in the `seen` set,
    /// found by scanning the documents in batches (HSCAN + SMISMEMBER), so memory
    /// stays proportional to a batch plus the result, not to the source.
    pub async fn unseen(&self, source: &SourceId, seen: &str) -> Result<Vec<(DocumentId, HeldMeta)>, Error> {
        let key = self.keys.docs(source);
        let mut conn = self.pool.get().await?;
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, items) = scan_batch(&mut conn, &key, cursor).await?;
            if !items.is_empty() {
                let member: Vec<bool> = redis::cmd("SMISMEMBER")
                    .arg(seen)
                    .arg(items.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
                    .query_async(&mut conn)
                    .await?;
                for ((id, bytes), listed) in items.into_iter().zip(member) {
                    if !listed {
                        let meta: HeldMeta = decode(&key, &id, &bytes)?;
                        out.push((DocumentId(id), meta));
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(out);
            }
        }
    }

    /// The held state of `ids` (None where we hold nothing).
    pub async fn docs(&self, source: &SourceId, ids: &[&DocumentId]) -> Result<Vec<Option<DocState>>, Error> {
        self.hmget(source, ids).await
    }

    /// Records a document as written, under `token` (no previous state: tests and tools).
    pub async fn put_doc(
        &self,
        source: &SourceId,
        token: FencingToken,
        id: &DocumentId,
        state: &DocState,
    ) -> Result<(), Error> {
        let put = DocWrite::Put {
            id: id.clone(),
            new: state.clone(),
            old: None,
        };
        self.apply_docs(source, token, &[put]).await
    }

    /// Records written documents and forgets deleted ones, and keeps the reverse
    /// indexes (children, linked-from) in step, in one fenced script: one round
    /// trip per page, and the indexes never disagree with the documents.
    pub async fn apply_docs(&self, source: &SourceId, token: FencingToken, writes: &[DocWrite]) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut keys = vec![self.keys.fence(source), self.keys.docs(source)];
        let mut key_index: HashMap<String, usize> = HashMap::new();
        let mut key_of = |k: String, keys: &mut Vec<String>| -> String {
            let i = *key_index.entry(k.clone()).or_insert_with(|| {
                keys.push(k);
                keys.len()
            });
            i.to_string()
        };
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut ops: Vec<[String; 3]> = Vec::new();
        let mut puts = 0usize;
        let mut put_args = Vec::new();
        let mut del_args = Vec::new();
        for w in writes {
            let (id, old, new) = match w {
                DocWrite::Put { id, new, old } => {
                    puts += 1;
                    put_args.push(id.0.as_bytes().to_vec());
                    put_args.push(rmp_serde::to_vec_named(new).expect("MessagePack encoding of an in-memory struct"));
                    (id, old.as_ref(), Some(new))
                }
                DocWrite::Delete { id, old } => {
                    del_args.push(id.0.as_bytes().to_vec());
                    (id, old.as_ref(), None)
                }
            };
            let old_parent = old.and_then(|o| o.parent.as_ref());
            let new_parent = new.and_then(|n| n.parent.as_ref());
            if old_parent != new_parent {
                if let Some(p) = old_parent {
                    ops.push([
                        "SREM".into(),
                        key_of(self.keys.children(source, p), &mut keys),
                        id.0.clone(),
                    ]);
                }
                if let Some(p) = new_parent {
                    ops.push([
                        "SADD".into(),
                        key_of(self.keys.children(source, p), &mut keys),
                        id.0.clone(),
                    ]);
                }
            }
            let old_links: std::collections::HashSet<&DocumentId> =
                old.map(|o| o.links.iter().collect()).unwrap_or_default();
            let new_links: std::collections::HashSet<&DocumentId> =
                new.map(|n| n.links.iter().collect()).unwrap_or_default();
            for t in old_links.difference(&new_links) {
                ops.push([
                    "SREM".into(),
                    key_of(self.keys.linked_from(source, t), &mut keys),
                    id.0.clone(),
                ]);
            }
            for t in new_links.difference(&old_links) {
                ops.push([
                    "SADD".into(),
                    key_of(self.keys.linked_from(source, t), &mut keys),
                    id.0.clone(),
                ]);
            }
        }
        args.push(puts.to_string().into_bytes());
        args.extend(put_args);
        args.push(del_args.len().to_string().into_bytes());
        args.extend(del_args);
        for [op, key, member] in ops {
            args.push(op.into_bytes());
            args.push(key.into_bytes());
            args.push(member.into_bytes());
        }
        self.fenced(&FENCED_APPLY_DOCS, &keys, token, &args).await?;
        Ok(())
    }

    /// Members of the reverse-index sets `keys` (children or linked-from), de-duplicated.
    pub async fn union_of(&self, keys: &[String]) -> Result<Vec<DocumentId>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let members: Vec<String> = redis::cmd("SUNION").arg(keys).query_async(&mut conn).await?;
        Ok(members.into_iter().map(DocumentId).collect())
    }

    /// Creates the record of a new run and makes it the source's current run.
    /// Returns the id of the previous current run, if one was still marked running.
    pub async fn start_run(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        mode: SyncMode,
        requested_by: &str,
        request_ids: &[String],
    ) -> Result<Option<RunId>, Error> {
        let previous = {
            let mut conn = self.pool.get().await?;
            let prev: Option<String> = conn.get(self.keys.current_run(source)).await?;
            prev.map(RunId)
        };
        self.set_run_fields(
            source,
            run,
            token,
            &[
                ("run_id", run.0.clone()),
                ("source", source.to_string()),
                ("status", RunStatus::Running.to_string()),
                ("mode", mode.to_string()),
                ("requested_by", requested_by.to_owned()),
                ("request_ids", request_ids.join(",")),
                ("token", token.0.to_string()),
                ("started_at", Utc::now().to_rfc3339()),
                ("feed_done", "0".into()),
                ("pages_total", "0".into()),
            ],
        )
        .await?;
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        pipe.set(self.keys.current_run(source), &run.0)
            .ignore()
            .lpush(self.keys.runs(source), &run.0)
            .ignore()
            .ltrim(self.keys.runs(source), 0, RUN_HISTORY - 1)
            .ignore()
            .sadd(self.keys.known_sources(), source.as_str())
            .ignore()
            .expire(self.keys.run(source, run), RUN_RETENTION_SECS)
            .ignore();
        // A list: a request can be served by more than one run (a run taken
        // over after its coordinator died; a coalescing race that hands it to
        // both the run that took the lock and a follow-up).
        for id in request_ids {
            let key = self.keys.request_run(source, id);
            pipe.rpush(&key, &run.0)
                .ignore()
                .expire(&key, RUN_RETENTION_SECS)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        drop(conn);
        // Only now, with the request mapped to this run, is the old run marked:
        // a waiter never sees the abandoned run as the answer to its request.
        let mut abandoned = None;
        if let Some(prev) = previous.filter(|p| p != run)
            && let Some(rec) = self.run(source, &prev).await?
            && rec.status == RunStatus::Running
        {
            self.set_run_fields(
                source,
                &prev,
                token,
                &[
                    ("status", RunStatus::Abandoned.to_string()),
                    ("ended_at", Utc::now().to_rfc3339()),
                    ("last_error", "its coordinator stopped; a later run took over".into()),
                ],
            )
            .await?;
            abandoned = Some(prev);
        }
        Ok(abandoned)
    }

    /// Sets fields of a run's record, under `token`.
    pub async fn set_run_fields(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        fields: &[(&str, String)],
    ) -> Result<(), Error> {
        let args: Vec<Vec<u8>> = fields
            .iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.as_bytes().to_vec()])
            .collect();
        self.fenced(
            &FENCED_RUN_SET,
            &[self.keys.fence(source), self.keys.run(source, run)],
            token,
            &args,
        )
        .await?;
        Ok(())
    }

    /// Adds to counters of a run (unfenced: counters of a stale run harm nobody).
    pub async fn add_run_counters(
        &self,
        source: &SourceId,
        run: &RunId,
        counters: &[(&str, u64)],
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for (k, v) in counters {
            pipe.hincr(self.keys.run(source, run), *k, *v).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Marks a page done under `token` and adds its figures; a repeat is a no-op.
    /// Returns whether this call was the one that marked it.
    pub async fn page_done(
        &self,
        source: &SourceId,
        run: &RunId,
        token: FencingToken,
        page: u32,
        stats: PageStats,
    ) -> Result<bool, Error> {
        let args: Vec<Vec<u8>> = [
            page.to_string(),
            "upserted".into(),
            stats.upserted.to_string(),
            "deleted".into(),
            stats.deleted.to_string(),
            "skipped".into(),
            stats.skipped.to_string(),
            "api_calls".into(),
            stats.api_calls.to_string(),
            "dependents_updated".into(),
            stats.refreshed.to_string(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        let fresh = self
            .fenced(
                &FENCED_PAGE_DONE,
                &[
                    self.keys.fence(source),
                    self.keys.run_pages_done(source, run),
                    self.keys.run(source, run),
                    self.keys.run_wakeup(source, run),
                ],
                token,
                &args,
            )
            .await?;
        Ok(fresh == 1)
    }

    /// Marks a page as failed (dead-lettered) with its reason; a repeat is a no-op.
    pub async fn page_failed(&self, source: &SourceId, run: &RunId, page: u32, reason: &str) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: i64 = PAGE_FAILED
            .key(self.keys.run_pages_done(source, run))
            .key(self.keys.run(source, run))
            .key(self.keys.run_wakeup(source, run))
            .arg(page)
            .arg(reason)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Waits up to `timeout` for a page of `run` to finish (BLPOP on its wake-up list).
    pub async fn wait_for_progress(
        &self,
        source: &SourceId,
        run: &RunId,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(self.keys.run_wakeup(source, run))
            .arg(timeout.as_secs_f64())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Expires a finished run's auxiliary keys and clears it as current.
    pub async fn finish_run_housekeeping(&self, source: &SourceId, run: &RunId) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let current: Option<String> = conn.get(self.keys.current_run(source)).await?;
        let mut pipe = redis::pipe();
        pipe.expire(self.keys.run_pages_done(source, run), RUN_RETENTION_SECS)
            .ignore()
            .del(self.keys.run_wakeup(source, run))
            .ignore();
        if current.as_deref() == Some(run.0.as_str()) {
            pipe.del(self.keys.current_run(source)).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// A run's record.
    pub async fn run(&self, source: &SourceId, run: &RunId) -> Result<Option<RunRecord>, Error> {
        let key = self.keys.run(source, run);
        let mut conn = self.pool.get().await?;
        let h: HashMap<String, String> = conn.hgetall(&key).await?;
        if h.is_empty() {
            return Ok(None);
        }
        RunRecord::from_hash(&h)
            .map(Some)
            .map_err(|reason| Error::Corrupt { key, reason })
    }

    /// The most recent runs of a source, newest first.
    pub async fn recent_runs(&self, source: &SourceId, n: usize) -> Result<Vec<RunRecord>, Error> {
        let ids: Vec<String> = {
            let mut conn = self.pool.get().await?;
            conn.lrange(self.keys.runs(source), 0, n as isize - 1).await?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.run(source, &RunId(id)).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The run that served a request, once one has started for it.
    pub async fn run_for_request(&self, source: &SourceId, request_id: &str) -> Result<Option<RunId>, Error> {
        Ok(self.runs_for_request(source, request_id).await?.pop())
    }

    /// Every run that served a request, in the order they started.
    pub async fn runs_for_request(&self, source: &SourceId, request_id: &str) -> Result<Vec<RunId>, Error> {
        let mut conn = self.pool.get().await?;
        let v: Vec<String> = conn.lrange(self.keys.request_run(source, request_id), 0, -1).await?;
        Ok(v.into_iter().map(RunId).collect())
    }

    /// The run that answers for a request: the first that completed (with or
    /// without errors); else the latest, which may still be running or may have
    /// failed. `None` while no run has started for it.
    pub async fn request_outcome(&self, source: &SourceId, request_id: &str) -> Result<Option<RunRecord>, Error> {
        let mut latest = None;
        for run in self.runs_for_request(source, request_id).await? {
            if let Some(rec) = self.run(source, &run).await? {
                if matches!(rec.status, RunStatus::Completed | RunStatus::CompletedWithErrors) {
                    return Ok(Some(rec));
                }
                latest = Some(rec);
            }
        }
        Ok(latest)
    }

    /// Waits until the run serving `request_id` has ended, polling every `poll`; `None` on timeout.
    pub async fn wait_for_request(
        &self,
        source: &SourceId,
        request_id: &str,
        poll: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Result<Option<RunRecord>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(rec) = self.request_outcome(source, request_id).await?
                && rec.status.is_terminal()
            {
                return Ok(Some(rec));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Sources that have ever had a run.
    pub async fn known_sources(&self) -> Result<Vec<SourceId>, Error> {
        let mut conn = self.pool.get().await?;
        let v: Vec<String> = conn.smembers(self.keys.known_sources()).await?;
        let mut ids: Vec<SourceId> = v.into_iter().filter_map(|s| SourceId::new(s).ok()).collect();
        ids.sort();
        Ok(ids)
    }

    /// Number of documents held for `source`.
    pub async fn doc_count(&self, source: &SourceId) -> Result<u64, Error> {
        let mut conn = self.pool.get().await?;
        Ok(conn.hlen(self.keys.docs(source)).await?)
    }
}

/// Documents per HSCAN batch: large enough to amortise round trips, small enough
/// to keep a batch's memory and Redis's time per call small.
const SCAN_BATCH: usize = 1000;

/// One HSCAN step over a documents hash.
async fn scan_batch(
    conn: &mut deadpool_redis::Connection,
    key: &str,
    cursor: u64,
) -> Result<(u64, Vec<(String, Vec<u8>)>), Error> {
    Ok(redis::cmd("HSCAN")
        .arg(key)
        .arg(cursor)
        .arg("COUNT")
        .arg(SCAN_BATCH)
        .query_async(conn)
        .await?)
}

/// Decodes a stored document (or the part of it `T` names), naming it on failure.
fn decode<T: serde::de::DeserializeOwned>(key: &str, id: &str, bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: format!("{key}[{id}]"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run statuses round-trip through text; unknown text is named in the error.
    #[test]
    fn run_status_text() {
        for s in [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::CompletedWithErrors,
            RunStatus::Failed,
            RunStatus::Abandoned,
        ] {
            assert_eq!(s.to_string().parse::<RunStatus>().unwrap(), s);
        }
        assert!("paused".parse::<RunStatus>().unwrap_err().contains("paused"));
    }
}
