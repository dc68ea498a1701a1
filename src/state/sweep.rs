//! Mark and sweep in bounded memory: how a complete listing finds the held
//! documents it no longer lists (the "invisible deletions").
//!
//! Each feed page's ids are marked in the run's seen set (`tm:{S}:run:{R}:seen`,
//! expiring after a day); after the listing, held documents are scanned in
//! batches (HSCAN + SMISMEMBER) and every one not marked is a deletion. Memory
//! stays proportional to a batch plus the result, not to the source.
//!
//! Connectors consult what we hold through [`HeldLookup`] the same way: by the
//! page (HMGET) and, at the end of a listing, by the sweep's batches.

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncCommands};

use tokio_util::sync::CancellationToken;

use super::{Error, HeldMeta, StateStore, decode, scan_batch};
use crate::retry::{Backoff, retry};
use crate::sources;
use crate::types::{DocumentId, SourceId};

impl StateStore {
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

    /// Drops a seen set. UNLINK: freeing a million members would block Redis
    /// for about a second; UNLINK frees them off the main thread.
    pub async fn clear_seen(&self, seen: &str) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        let _: i64 = conn.unlink(seen).await?;
        Ok(())
    }

    /// The sweep of mark-and-sweep: every held document not in the `seen` set,
    /// found by scanning the documents in batches (HSCAN + SMISMEMBER), so memory
    /// stays proportional to a batch plus the result, not to the source.
    pub async fn unseen(&self, source: &SourceId, seen: &str) -> Result<Vec<(DocumentId, HeldMeta)>, Error> {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch) = self.unseen_batch(source, seen, cursor).await?;
            out.extend(batch);
            cursor = next;
            if cursor == 0 {
                return Ok(out);
            }
        }
    }

    /// One HSCAN batch of the sweep: the held documents of the batch not in `seen`.
    pub async fn unseen_batch(
        &self,
        source: &SourceId,
        seen: &str,
        cursor: u64,
    ) -> Result<(u64, Vec<(DocumentId, HeldMeta)>), Error> {
        let key = self.keys.docs(source);
        let mut conn = self.pool.get().await?;
        let (next, items) = scan_batch(&mut conn, &key, cursor).await?;
        let mut out = Vec::new();
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
        Ok((next, out))
    }

    /// What a run's feed may consult of what we hold for `source`, looked up a
    /// batch at a time; `seen` is the run's seen set, which the caller marks
    /// with each page the feed returns.
    /// Transient Redis faults are retried with `backoff` until `stop` (the
    /// run's lost lease), as the run's own Redis operations are.
    pub fn held_lookup(&self, source: &SourceId, seen: &str, backoff: Backoff, stop: CancellationToken) -> HeldLookup {
        HeldLookup {
            state: self.clone(),
            source: source.clone(),
            seen: seen.to_owned(),
            backoff,
            stop,
        }
    }
}

/// [`sources::HeldVersions`] over the state: HMGET for lookups, the sweep's
/// batches for what the run has not listed yet.
pub struct HeldLookup {
    state: StateStore,
    source: SourceId,
    seen: String,
    backoff: Backoff,
    stop: CancellationToken,
}

impl HeldLookup {
    fn failed(&self, doing: &str, e: Error) -> sources::Error {
        // Retries ran out (the lease is lost) or the error is not transient: the run fails whole.
        sources::Error::Retryable {
            context: format!("source {}: {doing} what we hold: {e}", self.source),
            after: None,
        }
    }
}

#[async_trait]
impl sources::HeldVersions for HeldLookup {
    async fn versions_of(&self, ids: &[DocumentId]) -> Result<Vec<Option<String>>, sources::Error> {
        let refs: Vec<&DocumentId> = ids.iter().collect();
        let held = retry(self.backoff, &self.stop, "looking up held documents", || {
            self.state.held_meta_of(&self.source, &refs)
        })
        .await
        .map_err(|e| self.failed("looking up", e))?;
        Ok(held.into_iter().map(|m| m.map(|m| m.version)).collect())
    }

    async fn unlisted(&self, cursor: u64) -> Result<(u64, Vec<(DocumentId, String)>), sources::Error> {
        let (next, batch) = retry(self.backoff, &self.stop, "scanning held documents", || {
            self.state.unseen_batch(&self.source, &self.seen, cursor)
        })
        .await
        .map_err(|e| self.failed("scanning", e))?;
        Ok((next, batch.into_iter().map(|(id, m)| (id, m.version)).collect()))
    }

    async fn children_of(&self, parents: &[DocumentId]) -> Result<Vec<DocumentId>, sources::Error> {
        let keys: Vec<String> = parents
            .iter()
            .map(|p| self.state.keys.children(&self.source, p))
            .collect();
        retry(self.backoff, &self.stop, "reading the children index", || {
            self.state.union_of(&keys)
        })
        .await
        .map_err(|e| self.failed("reading the children index of", e))
    }

    async fn children_each(&self, parents: &[DocumentId]) -> Result<Vec<Vec<DocumentId>>, sources::Error> {
        let keys: Vec<String> = parents
            .iter()
            .map(|p| self.state.keys.children(&self.source, p))
            .collect();
        retry(self.backoff, &self.stop, "reading the children index", || {
            self.state.members_each(&keys)
        })
        .await
        .map_err(|e| self.failed("reading the children index of", e))
    }
}
