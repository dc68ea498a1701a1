//! The rate gate: one per source, shared by the whole fleet through Redis, so
//! that every worker and coordinator acts toward a source as one polite client
//! (issue 8, point 3).
//!
//! What it owns, per source, in one Redis hash ([`Keys::rate_gate`]):
//! - a **not-before** instant: no request to the source leaves any process
//!   before it. A throttle (429, 503, Google's 403 `rateLimitExceeded`)
//!   raises it to the source's `Retry-After`, or, without one, to a truncated
//!   exponential backoff with jitter ([`backoff`]) whose **level** (consecutive
//!   throttles) is shared too and resets on the first success after it;
//! - optionally a **budget** (`requests_per_second`, `burst`) enforced by GCRA
//!   (generic cell rate algorithm): one theoretical arrival time per source,
//!   and the script answers how long to wait.
//!
//! Invariants:
//! - The not-before only moves later (raise-only); a late `Retry-After: 0`
//!   never releases requests that an earlier throttle held back.
//! - Redis's clock (`TIME` inside the scripts) is the fleet's one clock for
//!   the gate, so skewed pod clocks cannot make one process go early. Waits
//!   are handed back as durations and slept locally.
//! - A throttle that answers a request admitted before the last recorded
//!   throttle is the same episode (that request was in flight) and does not
//!   raise the level again: eight concurrent 429s are one step, not eight.
//! - The hash expires an idle time ([`IDLE`]) after its last deadline.
//! - Redis being unreachable never fails a request: the gate logs once, falls
//!   back to this process's own copy of the gate ([`Local`], kept up to date on
//!   every throttle), and retries Redis after [`REDIS_RETRY`]. While Redis is
//!   away the budget is enforced per process, not fleet-wide.
//!
//! What it does not do: decide what a response means (the connector's
//! classifier does) or send requests (the client in `sources::client` does,
//! asking the gate before every attempt).

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::db::Pool;
use deadpool_redis::redis::{FromRedisValue, Script, ScriptInvocation};

use crate::keys::Keys;
use crate::types::SourceId;

/// Default first backoff after a throttle without `Retry-After` (Google asks for about 1 s).
pub const DEFAULT_BACKOFF_START: Duration = Duration::from_secs(1);
/// Default longest backoff (Google's examples cap at 32 or 64 s).
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(32);
/// How long a gate's Redis hash outlives its last deadline: the backoff level
/// is forgotten after this long without a throttle.
pub const IDLE: Duration = Duration::from_secs(600);
/// After a Redis error, the gate works locally this long before trying Redis again.
pub const REDIS_RETRY: Duration = Duration::from_secs(5);
/// A waiter wakes up to this much after the deadline (at most an eighth of its
/// wait), so a fleet released by one not-before does not arrive in one burst.
const WAKE_SPREAD_CAP: Duration = Duration::from_millis(250);

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/acquire.lua")));
static THROTTLED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/throttled.lua")));
static SUCCEEDED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/succeeded.lua")));

/// A fleet-wide request budget: `per_sec` requests per second on average,
/// `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Requests per second, at least 1.
    pub per_sec: u32,
    /// Requests that may go back to back after an idle spell, at least 1.
    pub burst: u32,
}

impl Budget {
    /// The GCRA emission interval: the average spacing of requests.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_sec.max(1)
    }
}

/// How one source's gate behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First backoff after a throttle without `Retry-After`.
    pub backoff_start: Duration,
    /// Longest backoff (the truncation of the exponential).
    pub backoff_cap: Duration,
    /// The fleet-wide budget, if one is configured.
    pub budget: Option<Budget>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff_start: DEFAULT_BACKOFF_START,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            budget: None,
        }
    }
}

/// The wait after the `level`-th consecutive throttle without `Retry-After`:
/// `start * 2^(level-1) + jitter * start`, at most `cap` (Google's truncated
/// exponential backoff; `jitter` is drawn uniformly from [0, 1)). Level 0 is no wait.
pub fn backoff(level: u32, start: Duration, cap: Duration, jitter: f64) -> Duration {
    if level == 0 {
        return Duration::ZERO;
    }
    let exp = 2f64.powi(i32::try_from(level - 1).unwrap_or(i32::MAX));
    let secs = start.as_secs_f64() * (exp + jitter.clamp(0.0, 1.0));
    if secs >= cap.as_secs_f64() {
        cap
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// Makes the gates of a process: shared through Redis, or local only.
#[derive(Clone, Default)]
pub struct Gates {
    redis: Option<(Pool, Keys)>,
}

impl Gates {
    /// Gates kept in Redis through `pool`, under `keys`.
    pub fn shared(pool: Pool, keys: Keys) -> Self {
        Self {
            redis: Some((pool, keys)),
        }
    }

    /// Gates that live in this process only (unit tests, tools without Redis).
    pub fn local() -> Self {
        Self::default()
    }

    /// The gate of `source` under `policy`.
    pub fn gate(&self, source: &SourceId, policy: Policy) -> Gate {
        Gate {
            source: source.clone(),
            policy,
            remote: self.redis.as_ref().map(|(pool, keys)| Remote {
                pool: pool.clone(),
                key: keys.rate_gate(source),
                down_until: Arc::new(Mutex::new(None)),
            }),
            local: Arc::new(Mutex::new(Local::default())),
        }
    }
}

impl std::fmt::Debug for Gates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gates").field("shared", &self.redis.is_some()).finish()
    }
}

/// Admission to send one request: remembers when, so that the answer can be
/// told apart from an earlier throttle episode.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    local_at: Instant,
    /// Redis time of admission (µs), when Redis admitted it.
    remote_at: Option<i64>,
    /// The throttle level when admitted (0: no throttle since the last success).
    level: u32,
}

/// One source's gate. Clones share it.
#[derive(Debug, Clone)]
pub struct Gate {
    source: SourceId,
    policy: Policy,
    remote: Option<Remote>,
    local: Arc<Mutex<Local>>,
}

#[derive(Debug, Clone)]
struct Remote {
    pool: Pool,
    key: String,
    /// Set after a Redis error: until then, the local gate decides alone.
    down_until: Arc<Mutex<Option<Instant>>>,
}

impl Gate {
    /// The policy this gate enforces.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Waits until a request may go, then admits it. If the wait would exceed
    /// `max_wait` (a long `Retry-After`), nothing is waited and the wait is
    /// returned: the caller's own retry (a later job delivery) waits better.
    pub async fn wait_turn(&self, max_wait: Duration) -> Result<Pass, Duration> {
        loop {
            let (wait, pass) = self.acquire().await;
            if wait.is_zero() {
                return Ok(pass);
            }
            if wait > max_wait {
                return Err(wait);
            }
            let spread = (wait / 8).min(WAKE_SPREAD_CAP);
            let extra = spread.mul_f64(rand::random::<f64>());
            tracing::debug!(source = %self.source, ?wait, "rate gate: waiting");
            tokio::time::sleep(wait + extra).await;
        }
    }

    /// The source throttled the request admitted by `pass`: raises the
    /// not-before to `retry_after` from now, or, without one, to the backoff of
    /// the next level. Returns the wait until the not-before.
    pub async fn throttled(&self, pass: &Pass, retry_after: Option<Duration>) -> Duration {
        let jitter = rand::random::<f64>();
        let now = Instant::now();
        let local_wait = self
            .lock_local()
            .throttled(&self.policy, pass.local_at, now, retry_after, jitter);
        if let Some(remote) = self.usable_remote() {
            let args = |inv: &mut ScriptInvocation<'_>| {
                inv.arg(pass.remote_at.unwrap_or(0))
                    .arg(retry_after.map_or(-1, micros))
                    .arg(micros(self.policy.backoff_start))
                    .arg(micros(self.policy.backoff_cap))
                    .arg(jitter)
                    .arg(micros(IDLE));
            };
            if let Some((wait_us, level)) = self.remote_call::<(i64, i64)>(remote, &THROTTLED, args).await {
                let wait = from_micros(wait_us);
                // Mirror the fleet's decision locally, in case Redis goes away next.
                self.lock_local()
                    .adopt(now + wait, u32::try_from(level).unwrap_or(u32::MAX));
                tracing::info!(source = %self.source, ?wait, level, ?retry_after, "rate gate: source throttled; fleet waits");
                return wait;
            }
        }
        tracing::info!(source = %self.source, wait = ?local_wait, ?retry_after, "rate gate (local): source throttled; process waits");
        local_wait
    }

    /// The request admitted by `pass` was answered without a throttle: after a
    /// throttle episode, the backoff level resets.
    pub async fn succeeded(&self, pass: &Pass) {
        if pass.level == 0 {
            return;
        }
        self.lock_local().succeeded(pass.local_at);
        if let (Some(remote), Some(at)) = (self.usable_remote(), pass.remote_at) {
            let _: Option<i64> = self
                .remote_call(remote, &SUCCEEDED, |inv| {
                    inv.arg(at);
                })
                .await;
        }
    }

    /// One admission attempt: `(wait, pass)`; a zero wait means go.
    async fn acquire(&self) -> (Duration, Pass) {
        if let Some(remote) = self.usable_remote() {
            let interval = self.policy.budget.map_or(0, |b| micros(b.interval()));
            let burst = self.policy.budget.map_or(1, |b| b.burst.max(1));
            let args = |inv: &mut ScriptInvocation<'_>| {
                inv.arg(interval).arg(burst).arg(micros(IDLE));
            };
            if let Some((wait_us, level, now_us)) = self.remote_call::<(i64, i64, i64)>(remote, &ACQUIRE, args).await {
                let pass = Pass {
                    local_at: Instant::now(),
                    remote_at: Some(now_us),
                    level: u32::try_from(level).unwrap_or(u32::MAX),
                };
                return (from_micros(wait_us), pass);
            }
        }
        let now = Instant::now();
        let (wait, level) = self.lock_local().acquire(&self.policy, now);
        let pass = Pass {
            local_at: now,
            remote_at: None,
            level,
        };
        (wait, pass)
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, Local> {
        // Held for a few arithmetic steps, never across an await; a panic
        // there cannot leave the numbers half-written, so poison is ignored.
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable_remote(&self) -> Option<&Remote> {
        let remote = self.remote.as_ref()?;
        let down = remote.down_until.lock().unwrap_or_else(|e| e.into_inner());
        match *down {
            Some(until) if Instant::now() < until => None,
            _ => Some(remote),
        }
    }

    /// Runs `script` on the fleet's gate key with the arguments `args` adds,
    /// noting whether Redis answered: `None` (and the gate local for a while) if not.
    async fn remote_call<T: FromRedisValue>(
        &self,
        remote: &Remote,
        script: &Script,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Option<T> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&remote.key);
        args(&mut invocation);
        let reply: Result<T, String> = async {
            let mut conn = remote.pool.get().await.map_err(|e| e.to_string())?;
            invocation.invoke_async(&mut conn).await.map_err(|e| e.to_string())
        }
        .await;
        match reply {
            Ok(value) => {
                self.redis_ok(remote);
                Some(value)
            }
            Err(e) => {
                self.redis_failed(remote, &e);
                None
            }
        }
    }

    fn redis_ok(&self, remote: &Remote) {
        let mut down = remote.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.take().is_some() {
            tracing::info!(source = %self.source, "rate gate: Redis reachable again; the gate is fleet-wide again");
        }
    }

    fn redis_failed(&self, remote: &Remote, error: &str) {
        let mut down = remote.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            tracing::warn!(source = %self.source, %error, "rate gate: Redis unreachable; this process gates on its own until it is back");
        }
        *down = Some(Instant::now() + REDIS_RETRY);
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn from_micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// This process's copy of a gate: the same rules as the Lua scripts, on our
/// monotonic clock. Used alone while Redis is unreachable.
#[derive(Debug, Default)]
struct Local {
    not_before: Option<Instant>,
    level: u32,
    /// When the level was last raised (the start of the current episode).
    raised_at: Option<Instant>,
    /// GCRA theoretical arrival time.
    tat: Option<Instant>,
}

impl Local {
    /// `(wait, level)`; a zero wait admits the request (spending a budget slot).
    fn acquire(&mut self, policy: &Policy, now: Instant) -> (Duration, u32) {
        if let Some(nb) = self.not_before
            && nb > now
        {
            return (nb - now, self.level);
        }
        if let Some(b) = policy.budget {
            let interval = b.interval();
            let tat = self.tat.map_or(now, |t| t.max(now));
            let new_tat = tat + interval;
            let allow_at = new_tat.checked_sub(interval * b.burst.max(1)).unwrap_or(now);
            if allow_at > now {
                return (allow_at - now, self.level);
            }
            self.tat = Some(new_tat);
        }
        (Duration::ZERO, self.level)
    }

    /// Mirrors `throttled.lua`; returns the wait from `now` until the not-before.
    fn throttled(
        &mut self,
        policy: &Policy,
        sent: Instant,
        now: Instant,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let new_episode = self.level == 0 || self.raised_at.is_none_or(|at| sent >= at);
        if new_episode {
            self.level = self.level.saturating_add(1);
            self.raised_at = Some(now);
        }
        let wait = match retry_after {
            Some(a) => Some(a),
            None if new_episode => Some(backoff(self.level, policy.backoff_start, policy.backoff_cap, jitter)),
            None => None,
        };
        if let Some(w) = wait {
            self.raise(now + w);
        }
        self.not_before
            .map_or(Duration::ZERO, |nb| nb.saturating_duration_since(now))
    }

    /// Takes the fleet's not-before and level (raise-only for the not-before).
    fn adopt(&mut self, not_before: Instant, level: u32) {
        self.raise(not_before);
        self.level = level;
        self.raised_at = Some(Instant::now());
    }

    fn raise(&mut self, at: Instant) {
        if self.not_before.is_none_or(|nb| at > nb) {
            self.not_before = Some(at);
        }
    }

    fn succeeded(&mut self, sent: Instant) {
        if self.raised_at.is_none_or(|at| sent >= at) {
            self.level = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// 1, 2, 4, 8, 16 s plus up to one start of jitter, truncated at the cap.
    #[test]
    fn backoff_sequence() {
        let cap = Duration::from_secs(32);
        let plain: Vec<u64> = (0..=8).map(|l| backoff(l, S, cap, 0.0).as_secs()).collect();
        assert_eq!(plain, vec![0, 1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(backoff(1, S, cap, 0.5), Duration::from_millis(1500));
        assert_eq!(backoff(3, S, cap, 0.999), Duration::from_millis(4999));
        assert_eq!(backoff(6, S, cap, 0.9), cap, "jitter never passes the cap");
        assert_eq!(backoff(u32::MAX, S, cap, 0.0), cap, "no overflow at absurd levels");
        assert_eq!(
            backoff(2, Duration::from_millis(100), Duration::from_millis(150), 0.0),
            Duration::from_millis(150)
        );
    }

    /// The local gate: raise-only not-before, one level per episode, reset on a
    /// later success, and GCRA admitting `burst` at once then one per interval.
    #[test]
    fn local_gate_rules() {
        let policy = Policy::default();
        let mut g = Local::default();
        let t0 = Instant::now();
        assert_eq!(g.acquire(&policy, t0), (Duration::ZERO, 0));
        // Two requests in flight, both throttled: one episode, level 1.
        let ms = Duration::from_millis;
        let w = g.throttled(&policy, t0, t0 + ms(10), Some(2 * S), 0.0);
        assert_eq!((w, g.level), (2 * S, 1));
        let w = g.throttled(&policy, t0, t0 + ms(20), Some(Duration::ZERO), 0.0);
        assert_eq!((w, g.level), (2 * S - ms(10), 1), "raise-only, same episode");
        assert_eq!(g.acquire(&policy, t0 + ms(1010)), (S, 1));
        // A request admitted after the episode began, throttled without Retry-After: level 2.
        let t3 = t0 + 3 * S;
        let w = g.throttled(&policy, t3, t3 + ms(10), None, 0.0);
        assert_eq!((w, g.level), (2 * S, 2));
        g.succeeded(t0);
        assert_eq!(g.level, 2, "a success from before the episode says nothing");
        g.succeeded(t3 + 3 * S);
        assert_eq!(g.level, 0);

        let budget = Policy {
            budget: Some(Budget { per_sec: 10, burst: 3 }),
            ..Policy::default()
        };
        let mut g = Local::default();
        let waits: Vec<Duration> = (0..4).map(|_| g.acquire(&budget, t0).0).collect();
        assert_eq!(&waits[..3], &[Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(100));
        assert_eq!(g.acquire(&budget, t0 + Duration::from_millis(100)).0, Duration::ZERO);
    }
}
