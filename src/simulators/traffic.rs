//! Traffic control shared by the simulators: per-endpoint call counting,
//! injected failures (`fail_next`), corrupt responses (`corrupt_next`), a
//! token-bucket rate limit and added latency.
//!
//! It decides what happens to a request ([`Admission`]); each simulator turns
//! that into its service's own answer (Atlassian's 429 with `Retry-After`,
//! Google's 403 `userRateLimitExceeded`, ...). Every request is counted,
//! whatever its answer: a rate-limited call spends the client's budget too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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

/// The traffic state of one simulator.
#[derive(Debug, Default)]
pub struct Traffic {
    calls: BTreeMap<String, u64>,
    total: u64,
    fail: Option<(u32, u16)>,
    corrupt: u32,
    bucket: Option<Bucket>,
    latency: Duration,
}

impl Traffic {
    /// No failures, no latency, and `per_sec` requests per second (`None`: unlimited).
    pub fn new(per_sec: Option<u32>) -> Self {
        Self {
            bucket: per_sec.map(Bucket::full),
            ..Self::default()
        }
    }

    /// Counts one request under `label` and decides its fate.
    pub fn admit(&mut self, label: &str) -> Admission {
        self.total += 1;
        *self.calls.entry(label.to_owned()).or_insert(0) += 1;
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

    /// Requests by endpoint label.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.calls.clone()
    }

    /// All requests, whatever their answer.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Forgets the counts.
    pub fn reset(&mut self) {
        self.calls.clear();
        self.total = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Injected failures come first, then corrupt answers, then the bucket; all are counted.
    #[test]
    fn admission_order_and_counting() {
        let mut t = Traffic::new(Some(1));
        t.fail_next(1, 500);
        t.corrupt_next(1);
        assert_eq!(t.admit("a"), Admission::Fail(500));
        assert_eq!(t.admit("a"), Admission::Corrupt);
        assert_eq!(t.admit("b"), Admission::Serve(Some((1, 0))));
        assert!(matches!(
            t.admit("b"),
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
        assert_eq!(t.admit("c"), Admission::Serve(None));
    }
}
