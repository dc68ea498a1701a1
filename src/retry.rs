//! One policy for Redis faults, shared by every component: capped exponential
//! backoff with jitter (issue 8, point 4).
//!
//! Coordinator loops, the worker loop, a run's own Redis operations, and
//! `enqueue --wait` all ride out a Redis outage the same way: an operation that
//! failed with a *transient* error (no connection, timeout, Redis loading its
//! AOF after a restart; see [`Transient`]) is tried again after
//! [`Delays::next_delay`], until it succeeds, the caller stops (shutdown, a lost
//! lease), or a deadline passes. Anything else (a refused fencing token,
//! corrupt data, a script error) is returned at once: waiting cannot fix it.
//!
//! Delays use "equal jitter": attempt `n` (from 0) waits a uniformly random time
//! in `[c/2, c]` where `c = min(max, initial * 2^n)`. The lower half keeps a
//! fleet of restarted pods from hammering a recovering Redis in lock-step, the
//! upper half keeps a single client from spinning. Nothing here speaks Redis:
//! each error type says itself whether it is transient.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Capped exponential backoff. Configured by `[redis] retry_initial_ms` and
/// `retry_max_ms`; defaults 200 ms and 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay (the delay itself is jittered into `[initial/2, initial]`). Default 200 ms.
    pub initial: Duration,
    /// Ceiling of every delay, however many attempts failed. Default 10 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// A fresh sequence of delays.
    pub fn delays(self) -> Delays {
        Delays {
            backoff: self,
            attempt: 0,
        }
    }

    /// The ceiling of attempt `n` (from 0): `initial * 2^n`, at most `max`.
    pub fn ceiling(self, n: u32) -> Duration {
        // 2^20 * initial is far above any sane cap; stop doubling there so nothing overflows.
        self.initial.saturating_mul(1u32 << n.min(20)).min(self.max)
    }
}

/// The delays of one series of failed attempts; [`reset`](Delays::reset) after a success.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    attempt: u32,
}

impl Delays {
    /// The wait before the next attempt, in `[c/2, c]` with `c` the attempt's ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.backoff.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms))
    }

    /// Failed attempts so far in this series.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over at the initial delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Whether an error may clear up by itself (Redis unreachable, timing out,
/// restarting), so the operation is worth trying again.
pub trait Transient {
    /// True for "try again later", false for "this will never work".
    fn is_transient(&self) -> bool;

    /// True only when the failed operation surely had no effect (no connection
    /// was had, or it was refused): the only failures after which a command that
    /// is not idempotent (adding to a counter) may be sent again. Default false.
    fn surely_not_applied(&self) -> bool {
        false
    }
}

/// Why [`Retrier::failed`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The error is not transient.
    Permanent,
    /// The caller stopped (shutdown, lost lease).
    Stopped,
    /// The deadline passed.
    Deadline,
}

/// Drives one operation's retries: call [`failed`](Retrier::failed) with each error.
///
/// A loop instead of a closure, so the operation may borrow mutably:
/// ```ignore
/// let mut retrier = Retrier::new(backoff, &stop, "reading the checkpoint");
/// let checkpoint = loop {
///     match state.checkpoint(&id).await {
///         Ok(c) => break c,
///         Err(e) => retrier.failed(e).await?,
///     }
/// };
/// ```
pub struct Retrier<'a> {
    delays: Delays,
    stop: &'a CancellationToken,
    what: &'a str,
    deadline: Option<Instant>,
    retry_if: fn(&dyn Transient) -> bool,
    gave_up: Option<GaveUp>,
}

impl<'a> Retrier<'a> {
    /// Retries transient failures of `what` until `stop` is cancelled.
    pub fn new(backoff: Backoff, stop: &'a CancellationToken, what: &'a str) -> Self {
        Self {
            delays: backoff.delays(),
            stop,
            what,
            deadline: None,
            retry_if: |e| e.is_transient(),
            gave_up: None,
        }
    }

    /// Retries only failures that surely had no effect ([`Transient::surely_not_applied`]),
    /// for commands that must not be applied twice.
    pub fn not_idempotent(mut self) -> Self {
        self.retry_if = |e| e.surely_not_applied();
        self
    }

    /// Also gives up once `deadline` has passed (a sleep never runs past it).
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.delays.attempts()
    }

    /// Why the last [`failed`](Retrier::failed) returned its error, if it did.
    pub fn gave_up(&self) -> Option<GaveUp> {
        self.gave_up
    }

    /// Handles a failed attempt: if `e` is transient and there is time left,
    /// logs, sleeps the next delay and returns `Ok(())` (try again); otherwise
    /// returns `e`.
    pub async fn failed<E: Transient + Display>(&mut self, e: E) -> Result<(), E> {
        if !(self.retry_if)(&e) {
            self.gave_up = Some(GaveUp::Permanent);
            return Err(e);
        }
        if self.stop.is_cancelled() {
            self.gave_up = Some(GaveUp::Stopped);
            return Err(e);
        }
        let mut delay = self.delays.next_delay();
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.gave_up = Some(GaveUp::Deadline);
                return Err(e);
            }
            delay = delay.min(left);
        }
        tracing::warn!(what = self.what, attempt = self.delays.attempts(), retry_in = ?delay, error = %e, "redis unavailable; retrying");
        tokio::select! {
            _ = self.stop.cancelled() => {
                self.gave_up = Some(GaveUp::Stopped);
                Err(e)
            }
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Runs `op` until it succeeds, its error is not transient, or `stop` is cancelled
/// (then the last error is returned), sleeping `backoff`'s delays in between.
pub async fn retry<T, E, F, Fut>(backoff: Backoff, stop: &CancellationToken, what: &str, mut op: F) -> Result<T, E>
where
    E: Transient + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retrier = Retrier::new(backoff, stop, what);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => retrier.failed(e).await?,
        }
    }
}

/// A component's first contact with Redis at start-up: runs `op` (say, creating
/// its consumer group) until it succeeds, retrying transient failures with
/// `backoff` for as long as it takes, so a process started before Redis waits
/// for it instead of exiting (and Kubernetes does not crash-loop it).
/// `addr` must already be redacted ([`crate::db::redacted`]). Returns
/// `Ok(false)` if `stop` was cancelled first, an error that is not transient as is.
pub async fn until_reachable<E, F, Fut>(
    backoff: Backoff,
    stop: &CancellationToken,
    component: &str,
    addr: &str,
    mut op: F,
) -> Result<bool, E>
where
    E: Transient + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let what = format!("{component} start-up");
    let mut retrier = Retrier::new(backoff, stop, &what);
    loop {
        match op().await {
            Ok(()) => {
                if retrier.attempts() > 0 {
                    tracing::info!(component, redis = addr, "redis reachable; starting");
                }
                return Ok(true);
            }
            Err(e) => {
                if retrier.attempts() == 0 && e.is_transient() {
                    tracing::warn!(
                        component, redis = addr, error = %e,
                        "cannot reach redis at {addr}; retrying with backoff ({:?} up to {:?} apart) until it answers",
                        backoff.initial, backoff.max
                    );
                }
                match retrier.failed(e).await {
                    Ok(()) => {}
                    Err(_) if retrier.gave_up() == Some(GaveUp::Stopped) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Flaky(bool);
    impl Transient for Flaky {
        fn is_transient(&self) -> bool {
            self.0
        }
    }
    impl Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky (transient: {})", self.0)
        }
    }

    /// Ceilings double from `initial` and stop at `max`, even after very many attempts.
    #[test]
    fn ceilings_grow_then_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        let got: Vec<u64> = (0..10).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
    }

    /// Every delay lies in `[ceiling/2, ceiling]`, delays are not all alike
    /// (jitter), and `reset` starts again from the initial delay.
    #[test]
    fn delays_are_jittered_within_bounds() {
        let b = Backoff::default();
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut d = b.delays();
            for n in 0..12 {
                let c = b.ceiling(n);
                let got = d.next_delay();
                assert!(
                    got >= c / 2 && got <= c,
                    "attempt {n}: {got:?} outside [{:?}, {c:?}]",
                    c / 2
                );
                if n == 0 {
                    seen_first.insert(got);
                }
            }
            assert_eq!(d.attempts(), 12);
            d.reset();
            assert!(d.next_delay() <= b.initial);
        }
        assert!(seen_first.len() > 10, "no jitter: {seen_first:?}");
    }

    /// Millisecond delays, so tests run in real time without waiting.
    const FAST: Backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    /// Transient errors are retried until success; a permanent one is returned at once.
    #[tokio::test]
    async fn retries_transient_errors_only() {
        let stop = CancellationToken::new();
        let mut calls = 0;
        let v = retry(FAST, &stop, "test", || {
            calls += 1;
            let n = calls;
            async move { if n < 4 { Err(Flaky(true)) } else { Ok(n) } }
        })
        .await
        .unwrap();
        assert_eq!(v, 4);
        let mut calls = 0;
        let e = retry(FAST, &stop, "test", || {
            calls += 1;
            async { Err::<(), _>(Flaky(false)) }
        })
        .await
        .unwrap_err();
        assert!(!e.0);
        assert_eq!(calls, 1);
    }

    /// A deadline ends the retries, and no sleep runs past it.
    #[tokio::test]
    async fn deadline_bounds_the_retries() {
        let stop = CancellationToken::new();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let mut r = Retrier::new(FAST, &stop, "test").until(deadline);
        let mut tries = 0;
        while r.failed(Flaky(true)).await.is_ok() {
            tries += 1;
        }
        assert_eq!(r.gave_up(), Some(GaveUp::Deadline));
        assert!(Instant::now() >= deadline);
        // Delays of at most 4 ms: a 100 ms window holds many; and a permanent error still ends it.
        assert!(tries >= 10, "{tries} retries in 100 ms");
        let mut r = Retrier::new(FAST, &stop, "test");
        assert!(r.failed(Flaky(false)).await.is_err());
        assert_eq!(r.gave_up(), Some(GaveUp::Permanent));
    }

    /// Cancelling `stop` ends a retry that is sleeping.
    #[tokio::test]
    async fn stop_interrupts_the_wait() {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.cancel();
        });
        let backoff = Backoff {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(60),
        };
        let started = Instant::now();
        let mut r = Retrier::new(backoff, &stop, "test");
        assert!(r.failed(Flaky(true)).await.is_err());
        assert_eq!(r.gave_up(), Some(GaveUp::Stopped));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the 60 s sleep was not cut short"
        );
    }
}
