//! Traffic control shared by the simulators: per-endpoint call counting,
//! injected failures (`fail_next`), corrupt responses (`corrupt_next`), a
//! token-bucket rate limit and added latency; and what a polite client is
//! judged by: per throttle sent with a `Retry-After`, how many requests arrived
//! before it expired ("early requests"), and the most requests that arrived in
//! any one second ([`TrafficStats`]).
//!
//! It decides what happens to a request ([`Admission`]); each simulator turns
//! that into its service's own answer (Atlassian's 429 with `Retry-After`,
//! Google's 403 `userRateLimitExceeded`, ...) and reports each `Retry-After` it
//! sends ([`Traffic::throttle_sent`]). Every request is counted, whatever its
//! answer: a rate-limited call spends the client's budget too.
//!
//! Early requests are judged by arrival time (taken before any added latency).
//! A request that arrives within [`IN_FLIGHT_GRACE`] of the throttle was on its
//! way before the client could have read the answer (a fleet learns of a
//! throttle one round trip after it is sent); it is counted apart as `in_flight`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Requests arriving this soon after a throttle count as in flight, not early.
pub const IN_FLIGHT_GRACE: Duration = Duration::from_millis(100);
/// Arrival times kept for the per-second figure.
const ARRIVALS_KEPT: usize = 200_000;
/// Throttle records kept.
const THROTTLES_KEPT: usize = 1000;

/// A token bucket of `per_sec` tokens, refilled continuously.
#[derive(Debug)]
struct Bucket {
    per_sec: u32,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(per_sec: u32) -> Self {
        Self {
            per_sec,
            tokens: f64::from(per_sec),
            last: Instant::now(),
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it; with a rate limit, `(limit per second, whole tokens left)`.
    Serve(Option<(u32, u64)>),
    /// Answer this status (from `fail_next`).
    Fail(u16),
    /// Answer 200 with a truncated body (from `corrupt_next`).
    Corrupt,
    /// Out of tokens: `retry_after` whole seconds until one is back.
    Limited {
        /// The limit per second.
        per_sec: u32,
        /// Seconds to wait, at least 1.
        retry_after: u64,
    },
}

/// One throttle the simulator sent with a `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThrottleRecord {
    /// Its status (429, 503).
    pub status: u16,
    /// Its `Retry-After`, in milliseconds.
    pub retry_after_ms: u64,
    /// Requests that arrived after [`IN_FLIGHT_GRACE`] and before the `Retry-After` expired.
    pub early: u64,
    /// Requests that arrived within [`IN_FLIGHT_GRACE`] of it (already on their way).
    pub in_flight: u64,
}

/// How the clients behaved, as `/_sim/stats` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrafficStats {
    /// Throttles sent with a `Retry-After`.
    pub throttles: u64,
    /// Requests that arrived inside some throttle's `Retry-After` (after its grace); each counted once.
    pub early_requests: u64,
    /// Requests that arrived within the grace of a throttle; each counted once.
    pub in_flight_requests: u64,
    /// The most requests that arrived in any one second (sliding window).
    pub max_per_second: u64,
    /// Milliseconds from the first request kept to the last.
    pub span_ms: u64,
    /// The most recent throttles, oldest first.
    pub per_throttle: Vec<ThrottleRecord>,
}

/// A throttle's window: from when it was sent until its `Retry-After` expires.
#[derive(Debug)]
struct Window {
    sent: Instant,
    until: Instant,
    /// Index into `records`, counted from `records_dropped`.
    record: usize,
}

/// The traffic state of one simulator.
#[derive(Debug)]
pub struct Traffic {
    calls: BTreeMap<String, u64>,
    total: u64,
    fail: Option<(u32, u16)>,
    corrupt: u32,
    bucket: Option<Bucket>,
    latency: Duration,
    throttle_retry_after: Duration,
    arrivals: VecDeque<Instant>,
    windows: Vec<Window>,
    records: VecDeque<ThrottleRecord>,
    records_dropped: usize,
    throttles: u64,
    early: u64,
    in_flight: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            calls: BTreeMap::new(),
            total: 0,
            fail: None,
            corrupt: 0,
            bucket: None,
            latency: Duration::ZERO,
            throttle_retry_after: Duration::from_secs(1),
            arrivals: VecDeque::new(),
            windows: Vec::new(),
            records: VecDeque::new(),
            records_dropped: 0,
            throttles: 0,
            early: 0,
            in_flight: 0,
        }
    }
}

impl Traffic {
    /// No failures, no latency, and `per_sec` requests per second (`None`: unlimited).
    pub fn new(per_sec: Option<u32>) -> Self {
        Self {
            bucket: per_sec.map(Bucket::full),
            ..Self::default()
        }
    }

    /// Counts one request under `label`, which arrived at `arrived` (before any
    /// added latency), judges it against the throttles sent, and decides its fate.
    pub fn admit(&mut self, label: &str, arrived: Instant) -> Admission {
        self.total += 1;
        *self.calls.entry(label.to_owned()).or_insert(0) += 1;
        self.judge(arrived);
        if let Some((n, status)) = self.fail {
            self.fail = (n > 1).then_some((n - 1, status));
            return Admission::Fail(status);
        }
        if self.corrupt > 0 {
            self.corrupt -= 1;
            return Admission::Corrupt;
        }
        let Some(b) = self.bucket.as_mut() else {
            return Admission::Serve(None);
        };
        let elapsed = b.last.elapsed().as_secs_f64();
        b.last = Instant::now();
        b.tokens = (b.tokens + elapsed * f64::from(b.per_sec)).min(f64::from(b.per_sec));
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            // Truncation is intended: whole tokens left.
            Admission::Serve(Some((b.per_sec, b.tokens.floor() as u64)))
        } else {
            let wait = ((1.0 - b.tokens) / f64::from(b.per_sec.max(1))).ceil().max(1.0) as u64;
            Admission::Limited {
                per_sec: b.per_sec,
                retry_after: wait,
            }
        }
    }

    fn judge(&mut self, arrived: Instant) {
        if self.arrivals.len() >= ARRIVALS_KEPT {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(arrived);
        self.windows.retain(|w| w.until > arrived);
        let (mut early, mut in_flight) = (false, false);
        for w in &self.windows {
            if arrived < w.sent {
                continue; // it arrived first and was still being answered
            }
            let record = w
                .record
                .checked_sub(self.records_dropped)
                .and_then(|i| self.records.get_mut(i));
            if arrived < w.sent + IN_FLIGHT_GRACE {
                in_flight = true;
                if let Some(r) = record {
                    r.in_flight += 1;
                }
            } else {
                early = true;
                if let Some(r) = record {
                    r.early += 1;
                }
            }
        }
        self.early += u64::from(early);
        self.in_flight += u64::from(in_flight && !early);
    }

    /// The simulator answered `status` with `Retry-After: retry_after` just now.
    pub fn throttle_sent(&mut self, status: u16, retry_after: Duration) {
        let now = Instant::now();
        if self.records.len() >= THROTTLES_KEPT {
            self.records.pop_front();
            self.records_dropped += 1;
        }
        self.records.push_back(ThrottleRecord {
            status,
            retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            early: 0,
            in_flight: 0,
        });
        self.windows.push(Window {
            sent: now,
            until: now + retry_after,
            record: self.records_dropped + self.records.len() - 1,
        });
        self.throttles += 1;
    }

    /// The `Retry-After` an injected 429 or 503 carries (default 1 s).
    pub fn throttle_retry_after(&self) -> Duration {
        self.throttle_retry_after
    }

    /// Changes the `Retry-After` of injected 429s and 503s.
    pub fn set_throttle_retry_after(&mut self, d: Duration) {
        self.throttle_retry_after = d;
    }

    /// Early requests, the busiest second, and the throttle records.
    pub fn stats(&self) -> TrafficStats {
        TrafficStats {
            throttles: self.throttles,
            early_requests: self.early,
            in_flight_requests: self.in_flight,
            max_per_second: max_in_window(&self.arrivals, Duration::from_secs(1)),
            span_ms: match (self.arrivals.iter().min(), self.arrivals.iter().max()) {
                (Some(first), Some(last)) => u64::try_from((*last - *first).as_millis()).unwrap_or(u64::MAX),
                _ => 0,
            },
            per_throttle: self.records.iter().cloned().collect(),
        }
    }

    /// Requests by endpoint label.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.clone()
    }

    /// All requests, whatever their answer.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets the counts, the arrivals and the throttle records.
    pub fn reset(&mut self) {
        self.calls.clear();
        self.total = 0;
        self.arrivals.clear();
        self.windows.clear();
        self.records_dropped += self.records.len();
        self.records.clear();
        self.throttles = 0;
        self.early = 0;
        self.in_flight = 0;
    }

    /// Changes the rate limit; the bucket starts full.
    pub fn set_rate_limit(&mut self, per_sec: Option<u32>) {
        self.bucket = per_sec.map(Bucket::full);
    }

    /// The next `n` requests answer `status`.
    pub fn fail_next(&mut self, n: u32, status: u16) {
        self.fail = (n > 0).then_some((n, status));
    }

    /// The next `n` requests answer 200 with a truncated body.
    pub fn corrupt_next(&mut self, n: u32) {
        self.corrupt = n;
    }

    /// Every request waits this long before it is served.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    /// The added latency.
    pub fn latency(&self) -> Duration {
        self.latency
    }
}

/// The most instants of `sorted` inside any half-open window `[t, t + window)`.
fn max_in_window(arrivals: &VecDeque<Instant>, window: Duration) -> u64 {
    // Requests are admitted nearly, not exactly, in arrival order.
    let mut sorted: Vec<Instant> = arrivals.iter().copied().collect();
    sorted.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for (end, t) in sorted.iter().enumerate() {
        while *t >= sorted[start] + window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    u64::try_from(best).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests inside a throttle's Retry-After are early, except in its first
    /// moments (in flight) and those that arrived before it; the busiest second is found.
    #[test]
    fn early_requests_and_busiest_second() {
        let mut t = Traffic::new(None);
        let t0 = Instant::now();
        t.throttle_sent(429, Duration::from_secs(2));
        let sent = Instant::now();
        t.admit("a", t0); // arrived before the throttle went out
        t.admit("a", sent + Duration::from_millis(10)); // in flight
        t.admit("a", sent + Duration::from_millis(500)); // early
        t.admit("a", sent + Duration::from_millis(2100)); // after the window
        let s = t.stats();
        assert_eq!((s.throttles, s.early_requests, s.in_flight_requests), (1, 1, 1));
        assert_eq!(
            s.per_throttle,
            vec![ThrottleRecord {
                status: 429,
                retry_after_ms: 2000,
                early: 1,
                in_flight: 1
            }]
        );
        assert_eq!(s.max_per_second, 3, "t0, +10 ms and +500 ms fall in one second");
        t.reset();
        assert_eq!(t.stats(), TrafficStats::default());
    }

    /// Injected failures come first, then corrupt answers, then the bucket; all are counted.
    #[test]
    fn admission_order_and_counting() {
        let mut t = Traffic::new(Some(1));
        t.fail_next(1, 500);
        t.corrupt_next(1);
        assert_eq!(t.admit("a", Instant::now()), Admission::Fail(500));
        assert_eq!(t.admit("a", Instant::now()), Admission::Corrupt);
        assert_eq!(t.admit("b", Instant::now()), Admission::Serve(Some((1, 0))));
        assert!(matches!(
            t.admit("b", Instant::now()),
            Admission::Limited {
                per_sec: 1,
                retry_after: 1
            }
        ));
        assert_eq!(t.total(), 4);
        assert_eq!(t.calls().get("a"), Some(&2));
        t.reset();
        assert_eq!(t.total(), 0);
        t.set_rate_limit(None);
        assert_eq!(t.admit("c", Instant::now()), Admission::Serve(None));
    }
}
