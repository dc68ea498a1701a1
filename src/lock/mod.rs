//! The per-source sync lock: Redlock over N independent Redis nodes, with fencing tokens.
//!
//! With one node this is the classic `SET key owner NX PX ttl` lock; with N
//! nodes (an odd number) a lease is held when a majority granted it and the
//! time left (`ttl - elapsed - drift`) is positive. Extension and release are
//! compare-and-set Lua scripts on the random owner value, so nobody can extend
//! or release a lock it does not hold.
//!
//! **Fencing tokens.** On acquisition each granting node reports its token
//! counter; the new token is `max + 1`, and is written back (raise-only) to a
//! majority before the lease is returned. Any two majorities intersect, so the
//! new token is strictly greater than every token issued before, even across
//! node failures. A lock can still be lost (a GC pause, a partition, a paused
//! Redis): that is why every *write* carries the token and storage refuses
//! lower ones (see [`fencing`]). The lock prevents overlapping runs in the
//! common case; the tokens make an overlap harmless.

pub mod fencing;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use deadpool_redis::Pool;
use deadpool_redis::redis::Script;

use crate::keys::Keys;
use crate::types::{FencingToken, SourceId};

/// Lock failures (a lock held by someone else is not an error: `acquire` returns `None`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fewer than a majority of lock nodes answered.
    #[error("lock {source_id}: only {answered} of {nodes} lock nodes answered (need {quorum}): {last_error}")]
    NoQuorum {
        /// The source.
        source_id: SourceId,
        /// Nodes that answered.
        answered: usize,
        /// Nodes configured.
        nodes: usize,
        /// Majority needed.
        quorum: usize,
        /// The last node error seen.
        last_error: String,
    },
}

/// A held lock.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Whose lock.
    pub source: SourceId,
    /// Random owner value; only its holder can extend or release.
    pub owner: String,
    /// The fencing token of this acquisition.
    pub token: FencingToken,
    /// The lease is safe to rely on until this instant (ttl minus elapsed minus drift).
    pub valid_until: Instant,
}

/// Acquires, extends and releases per-source locks over the configured lock nodes.
#[derive(Clone)]
pub struct LockManager {
    nodes: Vec<Pool>,
    keys: Keys,
}

// The scripts, with their KEYS and ARGV, are in `lua/`.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/acquire.lua")));
static RAISE_TOKEN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/raise_token.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/extend.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));

/// Clock drift allowance per Redlock: 1% of the TTL plus 2 ms.
fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

impl LockManager {
    /// A lock manager over `nodes` (one pool per independent Redis node).
    pub fn new(nodes: Vec<Pool>, keys: Keys) -> Self {
        assert!(!nodes.is_empty(), "config validation guarantees at least one lock node");
        Self { nodes, keys }
    }

    fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    async fn on_every_node<F, Fut, T>(&self, f: F) -> Vec<Result<T, String>>
    where
        F: Fn(Pool) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        futures::future::join_all(self.nodes.iter().cloned().map(f)).await
    }

    /// Tries once to take the lock of `source` for `ttl`. `Ok(None)` means someone holds it.
    pub async fn acquire(&self, source: &SourceId, ttl: Duration) -> Result<Option<Lease>, Error> {
        let owner = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let lock_key = self.keys.lock(source);
        let tokens_key = self.keys.lock_tokens(source);
        let ttl_ms = ttl.as_millis() as u64;

        let replies = self
            .on_every_node(|pool| {
                let (lock_key, tokens_key, owner) = (lock_key.clone(), tokens_key.clone(), owner.clone());
                async move {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    ACQUIRE
                        .key(&lock_key)
                        .key(&tokens_key)
                        .arg(&owner)
                        .arg(ttl_ms)
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await;

        let granted: Vec<(usize, u64)> = replies
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Ok(c) if *c >= 0 => Some((i, *c as u64)),
                _ => None,
            })
            .collect();
        let answered = replies.iter().filter(|r| r.is_ok()).count();
        let last_error = replies.iter().filter_map(|r| r.as_ref().err()).next_back().cloned();

        let elapsed = started.elapsed();
        let validity = ttl.checked_sub(elapsed + drift(ttl));
        if granted.len() < self.quorum() || validity.is_none() {
            self.release_owner(source, &owner).await;
            if answered < self.quorum() {
                return Err(Error::NoQuorum {
                    source_id: source.clone(),
                    answered,
                    nodes: self.nodes.len(),
                    quorum: self.quorum(),
                    last_error: last_error.unwrap_or_default(),
                });
            }
            return Ok(None);
        }

        let token = granted.iter().map(|(_, c)| *c).max().unwrap_or(0) + 1;
        let raised = futures::future::join_all(granted.iter().map(|(i, _)| {
            let pool = self.nodes[*i].clone();
            let tokens_key = tokens_key.clone();
            async move {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                RAISE_TOKEN
                    .key(&tokens_key)
                    .arg(token)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
        }))
        .await;
        if raised.iter().filter(|r| r.is_ok()).count() < self.quorum() {
            // Without a majority knowing this token, a later acquirer could reissue it.
            self.release_owner(source, &owner).await;
            return Err(Error::NoQuorum {
                source_id: source.clone(),
                answered: raised.iter().filter(|r| r.is_ok()).count(),
                nodes: self.nodes.len(),
                quorum: self.quorum(),
                last_error: raised
                    .iter()
                    .filter_map(|r| r.as_ref().err())
                    .next_back()
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        let valid_until = started + ttl - drift(ttl);
        Ok(Some(Lease {
            source: source.clone(),
            owner,
            token: FencingToken(token),
            valid_until,
        }))
    }

    /// Extends a held lease by `ttl` from now. Returns false if the lease was lost.
    pub async fn extend(&self, lease: &mut Lease, ttl: Duration) -> bool {
        let started = Instant::now();
        let key = self.keys.lock(&lease.source);
        let owner = lease.owner.clone();
        let ttl_ms = ttl.as_millis() as u64;
        let replies = self
            .on_every_node(|pool| {
                let (key, owner) = (key.clone(), owner.clone());
                async move {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    EXTEND
                        .key(&key)
                        .arg(&owner)
                        .arg(ttl_ms)
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        let extended = replies.iter().filter(|r| matches!(r, Ok(1))).count();
        if extended >= self.quorum() && started.elapsed() + drift(ttl) < ttl {
            lease.valid_until = started + ttl - drift(ttl);
            true
        } else {
            false
        }
    }

    /// Releases a lease on every node (best effort: an unreachable node lets it expire).
    pub async fn release(&self, lease: &Lease) {
        self.release_owner(&lease.source, &lease.owner).await;
    }

    async fn release_owner(&self, source: &SourceId, owner: &str) {
        let key = self.keys.lock(source);
        let results = self
            .on_every_node(|pool| {
                let (key, owner) = (key.clone(), owner.to_owned());
                async move {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    RELEASE
                        .key(&key)
                        .arg(&owner)
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        for e in results.into_iter().filter_map(Result::err) {
            tracing::warn!(source = %source, error = %e, "lock release failed on a node; it will expire");
        }
    }
}
