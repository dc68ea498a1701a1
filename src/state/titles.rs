//! Planned titles: the title the feed announced for every document a run
//! upserts, kept for that run (`tm:{S}:run:{R}:titles`).
//!
//! Why: a page that links to a document another page of the same run creates
//! or renames would otherwise be written with the link's old title (or none)
//! and rewritten once the run's dependents are refreshed; in a full sync of a
//! space whose pages link to one another that is nearly every document written
//! twice (issue 9). With the plan's titles at hand, each page resolves its link
//! titles before its first write.
//!
//! Invariants: written with the plan ([`super::plan`]), before the run's
//! first page job exists, so every job
//! of the run can read them; a page corrects them with what it fetched (a new
//! title, a document gone) before it writes, so they are never older than the
//! state's view of a document this run wrote; keyed by run id, so no other run (stale or new)
//! ever reads them, which is why they need no fence; deleted with the run's
//! other keys when it ends (`finish_run_housekeeping`), expired if it never does.

use deadpool_redis::redis;

use super::{Error, StateStore};
use crate::types::{DocumentId, RunId, SourceId};

/// Kept at most this long (a run's coordinator may die before deleting them).
const TTL_SECS: i64 = 24 * 3600;

impl StateStore {
    /// The planned title of each of `ids` in `run` (one HMGET), `None` where the run upserts no such document.
    pub async fn planned_titles(
        &self,
        source: &SourceId,
        run: &RunId,
        ids: &[&DocumentId],
    ) -> Result<Vec<Option<String>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let names: Vec<&str> = ids.iter().map(|d| d.0.as_str()).collect();
        // HMGET with one field answers a bare value; the cmd form keeps it a list.
        let titles: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.run_titles(source, run))
            .arg(&names)
            .query_async(&mut conn)
            .await?;
        Ok(titles)
    }

    /// Replaces planned titles with what a page of `run` fetched: `seen` as
    /// titled now, `gone` no longer there. Called before the page writes, so
    /// every later resolution (the run's other pages, its dependents) sees
    /// what the source said, not what the feed announced.
    pub async fn correct_planned_titles(
        &self,
        source: &SourceId,
        run: &RunId,
        seen: &[(&DocumentId, &str)],
        gone: &[&DocumentId],
    ) -> Result<(), Error> {
        if seen.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let key = self.keys.run_titles(source, run);
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        if !seen.is_empty() {
            let pairs: Vec<(&str, &str)> = seen.iter().map(|(id, t)| (id.0.as_str(), *t)).collect();
            pipe.hset_multiple(&key, &pairs).ignore();
        }
        if !gone.is_empty() {
            let ids: Vec<&str> = gone.iter().map(|d| d.0.as_str()).collect();
            pipe.hdel(&key, ids).ignore();
        }
        // A page of a run that has ended (redelivered late) must not leave a key without expiry.
        pipe.expire(&key, TTL_SECS).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}
