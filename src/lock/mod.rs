//! The per-source sync lock: Redlock over N independent Redis nodes, with fencing tokens.
//!
//! With one node this is the classic `SET key owner NX PX ttl` lock; with N
//! nodes (an odd number) a lease is held when a majority granted it and the
//! time left (`ttl - elapsed - drift`) is positive. Extension and release are
//! compare-and-set Lua scripts on the random owner value, so nobody can extend
//! or release a lock it does not hold.
//!
//! **Fencing tokens** must be strictly increasing per source, across failures
//! and restarts of any lock node, including a node restarted *without
//! persistence* (empty). A token is
//!
//! ```text
//! token = max(max counter reported by any answering node + 1,
//!             newest answering node's clock in ms * 1000)
//! ```
//!
//! and is written back (raise-only) to **every** node that answered, at least
//! a majority, before the lease is returned. Each node also records which
//! Redis process wrote its counter (`run_id`, in `tm:{S}:lock:epoch`): a node
//! that restarted, with or without its data, reports its counter as
//! *untrusted* until a write-back re-seeds it; only a live holder re-seeds
//! (the node must still hold its lock), so an acquirer that stalled past its
//! TTL mid-acquisition cannot vouch for a token that was overtaken meanwhile.
//!
//! Why tokens cannot go backwards. Let T be any token issued earlier; it was
//! written to a majority W. At the next acquisition:
//! - **a majority of trusted nodes answered**: it meets W in some node n.
//!   Trusted means n has not restarted since it was last written. If it did
//!   not restart since T was written, its counter is at least T. If it did,
//!   it was re-seeded afterwards with a token issued after T, which (by the
//!   same argument, in issue order) is greater than T. Either way the new
//!   token exceeds T, whatever the clocks do. Counters alone are not enough
//!   without the trust check: if T went only to {A, B} (C down) and A then
//!   restarts empty, the majority {A, C} has never seen T; the check makes
//!   {A, C} not a trusted majority, so the next case applies instead.
//! - **otherwise** (first use, a majority restarted, or the example above):
//!   the clock term carries the order. T was below `(issue ms + 1) × 1000`
//!   (fewer than 1000 tokens per ms: issues of one source are serialised by
//!   the lock and each takes network round trips), so a later
//!   token exceeds it as long as the lock nodes' clocks do not step back by
//!   more than the time between two acquisitions, even after every node lost
//!   everything. The warning "token ordered by the clock" is logged then.
//!
//! So a token goes backwards only if a majority of lock nodes restart *and*
//! their clocks jump back. Tokens are about 1.8e15 today, far from `u64`
//! limits and below 2^53, so the Lua fence scripts, which compare numbers as
//! doubles, compare them exactly until the year 2255.
//!
//! **Restarted nodes and exclusion** (the classic Redlock hazard): a node
//! restarted empty can grant a lock still held elsewhere (held on {A, B} with
//! C down; A restarts empty; C returns; {A, C} would grant it again). With
//! several nodes a node up for less than the lock TTL is *young*: its grant is
//! not counted (Redlock's "delayed restart", enforced by the client from
//! `uptime_in_seconds`, so operators need do nothing). When young grants would
//! have made the majority, acquisition fails with [`Error::Recovering`] and
//! the request is retried later. Every coordinator must use the same lock TTL.
//! With one node there is no majority to protect and no hold-off.
//!
//! A lock can still be lost (a GC pause, a partition, a paused Redis): that is
//! why every *write* carries the token and storage refuses lower ones (see
//! [`fencing`]). The lock prevents overlapping runs in the common case; the
//! tokens make an overlap harmless.

pub mod fencing;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::db::Pool;
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
    /// A majority granted, but only because nodes that restarted less than a
    /// lock TTL ago took part: they may have forgotten a lock still held
    /// elsewhere, so their grants do not count yet. Retry later.
    #[error(
        "lock {source_id}: {granted} nodes granted, {young} of them restarted less than a lock TTL ago \
         and may have lost a lock still held elsewhere (need {quorum} others); retry later"
    )]
    Recovering {
        /// The source.
        source_id: SourceId,
        /// Nodes that granted.
        granted: usize,
        /// Of those, nodes up for less than the TTL.
        young: usize,
        /// Majority needed.
        quorum: usize,
    },
    /// A majority granted, but so slowly that the lease would already be over:
    /// the lock is free, not held, and the caller should try again (never
    /// treat this as "someone else holds it": nobody would serve what waits).
    #[error("lock {source_id}: granted after {elapsed:?}, past its TTL of {ttl:?}; retry")]
    TooSlow {
        /// The source.
        source_id: SourceId,
        /// How long the nodes took.
        elapsed: Duration,
        /// The TTL asked for.
        ttl: Duration,
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

/// The acquire script's reply, as Redis sends it (see `lua/acquire.lua`).
type RawReply = (i64, String, i64, i64, String, String);

/// What one node said to an acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeReply {
    /// It set the lock for us.
    granted: bool,
    /// Its token counter (0 if it has none).
    counter: u64,
    /// The counter was written by the node's current process (no restart since).
    trusted: bool,
    /// Up for less than the hold-off: its grant does not count.
    young: bool,
    /// Its clock, in ms since the epoch.
    now_ms: u64,
}

impl NodeReply {
    fn parse((granted, counter, trusted, young, secs, micros): RawReply) -> Result<Self, String> {
        let number = |what: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("lock node replied {what} {text:?}, not a number"))
        };
        Ok(Self {
            granted: granted == 1,
            counter: number("token counter", &counter)?,
            trusted: trusted == 1,
            young: young == 1,
            now_ms: number("clock seconds", &secs)? * 1000 + number("clock microseconds", &micros)? / 1000,
        })
    }
}

/// Tokens per millisecond of the clock term: a token reads as
/// `issue time in ms * 1000 + sequence`. 2^53 / 1000 ms reaches the year 2255,
/// so every token stays exact in Lua's doubles (the fence scripts compare them there).
const TOKENS_PER_MS: u64 = 1000;

/// The next token: above every counter any node reported, and at least the
/// newest node clock (ms) times [`TOKENS_PER_MS`]. See the module doc for why
/// both terms are needed.
fn next_token<'a>(replies: impl Iterator<Item = &'a NodeReply>) -> u64 {
    let (counter, clock) = replies.fold((0, 0), |(c, t), n| (c.max(n.counter), t.max(n.now_ms)));
    (counter + 1).max(clock.saturating_mul(TOKENS_PER_MS))
}

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
    ///
    /// With several nodes, `ttl` is also the hold-off for restarted nodes:
    /// every coordinator must use the same `lock_ttl` (see the module doc).
    pub async fn acquire(&self, source: &SourceId, ttl: Duration) -> Result<Option<Lease>, Error> {
        let owner = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let lock_key = self.keys.lock(source);
        let tokens_key = self.keys.lock_tokens(source);
        let epoch_key = self.keys.lock_epoch(source);
        let ttl_ms = ttl.as_millis() as u64;
        // One node has no majority to protect: a restart that loses its lock is
        // a lost lock like any other, made harmless by fencing.
        let hold_off_ms = if self.nodes.len() > 1 { ttl_ms } else { 0 };

        let replies: Vec<Result<NodeReply, String>> = self
            .on_every_node(|pool| {
                let (lock_key, tokens_key, epoch_key, owner) =
                    (lock_key.clone(), tokens_key.clone(), epoch_key.clone(), owner.clone());
                async move {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    let raw: RawReply = ACQUIRE
                        .key(&lock_key)
                        .key(&tokens_key)
                        .key(&epoch_key)
                        .arg(&owner)
                        .arg(ttl_ms)
                        .arg(hold_off_ms)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    NodeReply::parse(raw)
                }
            })
            .await;

        let answered: Vec<(usize, &NodeReply)> = replies
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().ok().map(|n| (i, n)))
            .collect();
        let granted = answered.iter().filter(|(_, n)| n.granted).count();
        let counted = answered.iter().filter(|(_, n)| n.granted && !n.young).count();
        let last_error = replies.iter().filter_map(|r| r.as_ref().err()).next_back().cloned();

        let elapsed = started.elapsed();
        let validity = ttl.checked_sub(elapsed + drift(ttl));
        if counted < self.quorum() || validity.is_none() {
            self.release_owner(source, &owner).await;
            if answered.len() < self.quorum() {
                return Err(Error::NoQuorum {
                    source_id: source.clone(),
                    answered: answered.len(),
                    nodes: self.nodes.len(),
                    quorum: self.quorum(),
                    last_error: last_error.unwrap_or_default(),
                });
            }
            if granted >= self.quorum() && validity.is_none() {
                return Err(Error::TooSlow {
                    source_id: source.clone(),
                    elapsed,
                    ttl,
                });
            }
            if granted >= self.quorum() && validity.is_some() {
                return Err(Error::Recovering {
                    source_id: source.clone(),
                    granted,
                    young: granted - counted,
                    quorum: self.quorum(),
                });
            }
            return Ok(None);
        }

        let trusted = answered.iter().filter(|(_, n)| n.trusted).count();
        let token = next_token(answered.iter().map(|(_, n)| *n));
        if trusted < self.quorum() {
            // Fewer than a majority of nodes kept their counter since they last
            // started (first use, or nodes restarted): the token's order rests on
            // the clock term alone until they are re-seeded, which happens now.
            tracing::warn!(%source, trusted, nodes = self.nodes.len(), token, "lock nodes re-seeded; token ordered by the clock");
        }
        // Written back to every node that answered, granted or not: more nodes
        // knowing the latest token only helps, and it re-seeds restarted ones.
        let raised = futures::future::join_all(answered.iter().map(|(i, _)| {
            let pool = self.nodes[*i].clone();
            let (tokens_key, epoch_key, lock_key) = (tokens_key.clone(), epoch_key.clone(), lock_key.clone());
            let owner = owner.clone();
            async move {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                RAISE_TOKEN
                    .key(&tokens_key)
                    .key(&epoch_key)
                    .key(&lock_key)
                    .arg(token)
                    .arg(&owner)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(counter: u64, now_ms: u64) -> NodeReply {
        NodeReply {
            granted: true,
            counter,
            trusted: true,
            young: false,
            now_ms,
        }
    }

    /// The token exceeds every counter seen and is at least the newest clock
    /// times 1000; whichever is larger wins.
    #[test]
    fn next_token_takes_the_larger_of_counters_and_clock() {
        let now = 1_790_000_000_000;
        assert_eq!(next_token([reply(0, now), reply(5, now - 3)].iter()), now * 1000);
        let ahead = now * 1000 + 7;
        assert_eq!(next_token([reply(ahead, now), reply(0, now)].iter()), ahead + 1);
        assert_eq!(next_token([reply(0, now), reply(0, now + 2)].iter()), (now + 2) * 1000);
        // Tokens stay below 2^53, exact in the Lua fence scripts, for centuries.
        assert!(next_token([reply(0, 8_000_000_000_000)].iter()) < 1 << 53);
    }

    /// A node's reply is parsed from the script's strings; junk is an error naming it.
    #[test]
    fn node_replies_parse_and_refuse_junk() {
        let r = NodeReply::parse((1, "42".into(), 0, 1, "1790000000".into(), "123456".into())).unwrap();
        assert_eq!(
            r,
            NodeReply {
                granted: true,
                counter: 42,
                trusted: false,
                young: true,
                now_ms: 1_790_000_000_123,
            }
        );
        let e = NodeReply::parse((0, "x".into(), 0, 0, "1".into(), "0".into())).unwrap_err();
        assert!(e.contains("token counter \"x\""), "{e}");
    }
}
