//! Per-source sync state in Redis: the fence, the checkpoint, the documents we
//! hold, run records.
//!
//! - `mod.rs` (here): [`StateStore`], the fenced-write helper, the fence and the checkpoint;
//! - [`docs`]: what we hold per document ([`DocState`]), the reverse indexes,
//!   and the unsettled marks that bracket a page's sink writes;
//! - [`failures`]: documents that failed on their own ([`DocFailure`]), retried by every run;
//! - [`owed`]: dependents a page's writes made stale ([`Owed`]), kept until a run refreshes them;
//! - [`sweep`]: the mark and sweep that finds held documents a complete listing left out;
//! - [`plan`]: a run's plan (what to do with each document its feed changed), kept in Redis while it runs;
//! - [`titles`]: the titles a run's feed announced, so pages resolve link titles before their first write;
//! - [`runs`]: run records ([`RunRecord`], typed updates [`RunUpdate`]), page
//!   completion, and which run served a request;
//! - [`channels`]: the push channel the fleet keeps open per source (not run
//!   data, so not fenced: a compare-and-swap keeps it to one).
//!
//! Invariants:
//! - Every write that a run makes (document state, checkpoint, page progress,
//!   run outcome) is a Lua script composed by [`fencing::fenced_script`], which
//!   first checks the run's fencing token against the source's fence, so a run
//!   that lost its lock cannot change anything once a newer run has registered its token.
//! - Page completion is idempotent: a page is counted once however many times
//!   it is processed (the run keeps the set of done pages).
//! - The checkpoint is only written when every page of the run is done, so it
//!   never advances past work that was not durably applied.
//!
//! The scripts, each with its KEYS and ARGV, are the files in `lua/`.

use std::collections::HashSet;
use std::sync::LazyLock;

use crate::db::Pool;
use deadpool_redis::redis::{self, AsyncCommands, Script};

use crate::keys::Keys;
use crate::lock::fencing::{self, StaleFence, check_reply};
use crate::queue::{self, RedisContext};
use crate::sources::Checkpoint;
use crate::types::{DocumentId, FencingToken, SourceId};

pub mod channels;
mod compact;
pub mod deliveries;
pub mod docs;
pub mod failures;
pub mod owed;
pub mod plan;
pub mod runs;
pub mod sweep;
pub mod titles;

pub use docs::{ChildrenIndex, DocState, DocWrite, HeldMeta};
pub use failures::DocFailure;
pub use owed::Owed;
pub use plan::{PlanEntry, PlanWrite, PlanWritten};
pub use runs::{PageStats, RunCounter, RunRecord, RunStart, RunStatus, RunUpdate};

/// State-store failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] queue::Error),
    /// A newer run holds the source; this write was refused.
    #[error(transparent)]
    StaleFence(#[from] StaleFence),
    /// Fewer replicas acknowledged a raised fence, or a page's unsettled
    /// marks, than `[redis] wait_replicas` asks for.
    #[error(
        "writes for {source_id} reached {acked} of the {wanted} replica(s) redis.wait_replicas asks for \
         within {within:?}: a failover now could lose them, so nothing that depends on them goes on (the run or page is retried)"
    )]
    NotReplicated {
        /// The source.
        source_id: SourceId,
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged.
        acked: i64,
        /// How long it waited.
        within: std::time::Duration,
    },
    /// Stored data could not be decoded.
    #[error("state {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl crate::retry::Transient for Error {
    fn is_transient(&self) -> bool {
        matches!(self, Error::Queue(q) if q.is_transient())
    }

    fn surely_not_applied(&self) -> bool {
        matches!(self, Error::Queue(q) if q.surely_not_applied())
    }
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

static REGISTER: LazyLock<Script> = LazyLock::new(|| fencing::fenced_script(include_str!("lua/register_token.lua")));
static FENCED_SET: LazyLock<Script> = LazyLock::new(|| fencing::fenced_script(include_str!("lua/set.lua")));

/// Reads and writes per-source state.
#[derive(Clone)]
pub struct StateStore {
    pool: Pool,
    keys: Keys,
    /// Replicas a raised fence must reach before registration returns, and how long to wait.
    wait_replicas: Option<(u32, std::time::Duration)>,
}

impl StateStore {
    /// A store on `pool` under `keys`.
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self {
            pool,
            keys,
            wait_replicas: None,
        }
    }

    /// The same store, waiting for `(replicas, within)` to acknowledge every
    /// raised fence (`WAIT`) before a registration returns, and every
    /// unsettled mark before a worker touches the sink, as `[redis]
    /// wait_replicas` says; `None`: not waiting.
    pub fn with_replica_wait(mut self, wait: Option<(u32, std::time::Duration)>) -> Self {
        self.wait_replicas = wait;
        self
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs a fenced `script` (KEYS[1] is the fence, ARGV[1] the token, then
    /// `keys` and `args`); a stale token is [`Error::StaleFence`].
    async fn fenced(
        &self,
        script: &Script,
        keys: &[String],
        token: FencingToken,
        args: &[Vec<u8>],
    ) -> Result<i64, Error> {
        let mut conn = self.pool.get().await?;
        fenced_on(&mut conn, script, keys, token, args).await
    }

    /// Raises `source`'s fence to `token` with `script`, then (with
    /// `wait_replicas`) waits on the same connection until enough replicas
    /// have it: WAIT covers the writes made on its connection. On a cluster
    /// WAIT goes to the primary of the source's slot only
    /// ([`crate::db::Connection::wait_for_replicas_of`]).
    async fn raise_fence(
        &self,
        source: &SourceId,
        script: &Script,
        keys: &[String],
        token: FencingToken,
    ) -> Result<(), Error> {
        let mut conn = self.pool.get().await?;
        fenced_on(&mut conn, script, keys, token, &[]).await?;
        self.wait_for_replicas(&mut conn, source).await
    }

    /// With `wait_replicas`, waits until enough replicas have every write made
    /// so far on `conn` (`WAIT` covers its connection's writes); without, returns at once.
    async fn wait_for_replicas(&self, conn: &mut crate::db::Connection, source: &SourceId) -> Result<(), Error> {
        let Some((wanted, within)) = self.wait_replicas else {
            return Ok(());
        };
        let acked = conn
            .wait_for_replicas_of(&self.keys.fence(source), wanted, within)
            .await
            .context(|| format!("WAIT {wanted} where {source}'s keys live"))?;
        if acked < i64::from(wanted) {
            return Err(Error::NotReplicated {
                source_id: source.clone(),
                wanted,
                acked,
                within,
            });
        }
        Ok(())
    }

    /// `ids` of the hash `key` (one HMGET), decoded as `T`; `None` for a
    /// missing or empty value.
    async fn hmget_decoded<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        ids: &[&DocumentId],
    ) -> Result<Vec<Option<T>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(key)
            .arg(ids.iter().map(|d| d.0.as_str()).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?;
        raw.into_iter()
            .zip(ids)
            .map(|(b, id)| match b {
                Some(b) if !b.is_empty() => decode(key, &id.0, &b).map(Some),
                _ => Ok(None),
            })
            .collect()
    }

    /// Which of `ids` are fields of the hash `key` (one HMGET; values are not decoded).
    async fn present_in(&self, key: &str, ids: &[&DocumentId]) -> Result<HashSet<DocumentId>, Error> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut conn = self.pool.get().await?;
        let found: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(key)
            .arg(ids.iter().map(|d| d.0.as_str()).collect::<Vec<_>>())
            .query_async(&mut conn)
            .await?;
        Ok(ids
            .iter()
            .zip(found)
            .filter_map(|(id, f)| f.map(|_| (*id).clone()))
            .collect())
    }

    /// Registers a newly acquired token, so every older token is refused from now on.
    pub async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        self.raise_fence(source, &REGISTER, &[self.keys.fence(source)], token)
            .await
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
        let body = encode(cp);
        self.fenced(
            &FENCED_SET,
            &[self.keys.fence(source), self.keys.checkpoint(source)],
            token,
            &[body],
        )
        .await?;
        Ok(())
    }
}

/// Runs a fenced `script` on `conn`: the token first, then `args`.
async fn fenced_on(
    conn: &mut crate::db::Connection,
    script: &Script,
    keys: &[String],
    token: FencingToken,
    args: &[Vec<u8>],
) -> Result<i64, Error> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(k);
    }
    inv.arg(token.0);
    for a in args {
        inv.arg(a.as_slice());
    }
    let reply: (i64, i64) = inv.invoke_async(conn).await?;
    Ok(check_reply(token, reply)?)
}

/// Documents per HSCAN batch: large enough to amortise round trips, small enough
/// to keep a batch's memory and Redis's time per call small.
pub(crate) const SCAN_BATCH: usize = 1000;

/// One HSCAN step over a documents hash.
pub(crate) async fn scan_batch(
    conn: &mut crate::db::Connection,
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
pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, id: &str, bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: format!("{key}[{id}]"),
        reason: e.to_string(),
    })
}

/// Encodes an in-memory value as named MessagePack (cannot fail for our types).
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("MessagePack encoding of an in-memory struct")
}
