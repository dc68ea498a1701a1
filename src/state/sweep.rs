//! Mark and sweep in bounded memory: how a complete listing finds the held
//! documents it no longer lists (the "invisible deletions").
//!
//! Each feed page's ids are marked in the run's seen set (`tm:{S}:run:{R}:seen`,
//! expiring after a day); after the listing, held documents are scanned in
//! batches (HSCAN + SMISMEMBER) and every one not marked is a deletion. Memory
//! stays proportional to a batch plus the result, not to the source.

use deadpool_redis::redis::{self, AsyncCommands};

use super::{Error, HeldMeta, StateStore, decode, scan_batch};
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
}
