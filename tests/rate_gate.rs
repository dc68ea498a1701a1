//! The fleet-wide rate gate (issue 8, point 3): worker processes and the
//! coordinator act toward a source as one client. No request leaves before a
//! `Retry-After` any of them received has expired, a configured budget holds
//! across processes, the shared backoff counts one step per episode, and the
//! gate falls back to the process when Redis is unreachable.

use std::time::{Duration, Instant};

use tidemark::db;
use tidemark::gate::{Budget, Gates, Policy};
use tidemark::keys::Keys;
use tidemark::simulators::confluence::SimConfig;
use tidemark::state::RunStatus;
use tidemark::types::{SourceId, SyncMode};

use crate::harness::redis_server::free_port;
use crate::harness::{Env, Options, RedisServer, wait_until};

fn pool(url: &str) -> tidemark::db::Pool {
    db::pool(url, 4, Duration::from_secs(2)).expect("pool")
}

fn source() -> SourceId {
    SourceId::new("eng").expect("id")
}

/// Two gates of one source in different "processes" (separate `Gates`, so no
/// local state is shared) meet only in Redis: a throttle seen by one holds the
/// other until its Retry-After passes; throttles answering requests admitted
/// before it are one episode; the hash carries a TTL; a later success resets the level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_share_not_before_and_level_through_redis() {
    let redis = RedisServer::start();
    let keys = Keys::new("tm");
    let a = Gates::shared(pool(&redis.url()), keys.clone()).gate(&source(), Policy::default());
    let b = Gates::shared(pool(&redis.url()), keys.clone()).gate(&source(), Policy::default());

    let p1 = a.wait_turn(Duration::from_secs(60)).await.expect("open gate");
    let p2 = b.wait_turn(Duration::from_secs(60)).await.expect("open gate");
    let wait = a.throttled(&p1, Some(Duration::from_millis(800))).await;
    assert!(wait > Duration::from_millis(700), "{wait:?}");
    // p2 was admitted before the throttle was recorded: same episode, and
    // Retry-After 0 cannot move the not-before earlier.
    let wait2 = b.throttled(&p2, Some(Duration::ZERO)).await;
    assert!(wait2 > Duration::from_millis(600), "raise-only: {wait2:?}");
    let mut conn = redis.conn();
    let gate_key = keys.rate_gate(&source());
    let level: i64 = redis::cmd("HGET")
        .arg(&gate_key)
        .arg("level")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(level, 1, "two in-flight throttles are one episode");
    let ttl: i64 = redis::cmd("PTTL").arg(&gate_key).query(&mut conn).expect("PTTL");
    assert!(ttl > 0, "the gate hash expires: {ttl}");

    let asked = Instant::now();
    let p3 = b
        .wait_turn(Duration::from_secs(60))
        .await
        .expect("admitted after the wait");
    assert!(
        asked.elapsed() >= wait2 - Duration::from_millis(5),
        "b went after {:?}, before the not-before a recorded",
        asked.elapsed()
    );
    // Throttled again without Retry-After: a new episode, level 2, backoff 2-3 s.
    let wait3 = b.throttled(&p3, None).await;
    assert!(
        (Duration::from_millis(1900)..=Duration::from_millis(3000)).contains(&wait3),
        "{wait3:?}"
    );
    let level: i64 = redis::cmd("HGET")
        .arg(&gate_key)
        .arg("level")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(level, 2);
    // A long wait is not waited inside a call: the caller reschedules.
    let too_long = a
        .wait_turn(Duration::from_millis(100))
        .await
        .expect_err("longer than allowed");
    assert!(too_long > Duration::from_secs(1), "{too_long:?}");
    let p4 = a.wait_turn(Duration::from_secs(60)).await.expect("admitted");
    a.succeeded(&p4).await;
    let level: Option<i64> = redis::cmd("HGET")
        .arg(&gate_key)
        .arg("level")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(level, None, "a success after the episode resets the level");
}

/// The GCRA budget is one per source across gates: `burst` requests at once,
/// then one per interval, whichever process asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_is_shared_across_gates() {
    let redis = RedisServer::start();
    let policy = Policy {
        budget: Some(Budget { per_sec: 10, burst: 2 }),
        ..Policy::default()
    };
    let a = Gates::shared(pool(&redis.url()), Keys::new("tm")).gate(&source(), policy);
    let b = Gates::shared(pool(&redis.url()), Keys::new("tm")).gate(&source(), policy);
    let start = Instant::now();
    for g in [&a, &b, &a, &b, &a, &b] {
        g.wait_turn(Duration::from_secs(60)).await.expect("admitted");
    }
    // 2 at once, then 4 more at 100 ms each.
    assert!(start.elapsed() >= Duration::from_millis(390), "{:?}", start.elapsed());
}

/// With Redis unreachable the gate neither fails nor hangs: it admits, and
/// honours throttles within the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_falls_back_to_the_process() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let gate = Gates::shared(pool(&dead), Keys::new("tm")).gate(&source(), Policy::default());
    let p = gate
        .wait_turn(Duration::from_secs(60))
        .await
        .expect("admitted without Redis");
    let wait = gate.throttled(&p, Some(Duration::from_millis(300))).await;
    assert_eq!(wait, Duration::from_millis(300));
    let asked = Instant::now();
    gate.wait_turn(Duration::from_secs(60)).await.expect("admitted");
    assert!(asked.elapsed() >= Duration::from_millis(290), "{:?}", asked.elapsed());
}

/// An environment of `pages` pages in jobs of `page_size`, simulator `sim`,
/// and `rate` as the source's `[sources.settings.rate]` lines (backoff from 200 ms).
async fn env(pages: usize, page_size: usize, sim: SimConfig, rate: &str) -> Env {
    Env::start(Options {
        pages,
        page_size,
        sim,
        source_settings: format!("max_retries = 10\n[sources.settings.rate]\nbackoff_start_ms = 200\n{rate}"),
        ..Options::default()
    })
    .await
}

/// (a) Two worker processes (4 pages in flight each) and a coordinator, against
/// a simulator that throttles with `Retry-After: 2` several times during a
/// sync: no request arrives before a Retry-After has expired (requests already
/// on their way when it was sent excepted), and the sync completes with the
/// sink equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_before_retry_after_across_worker_processes() {
    let mut env = env(240, 4, SimConfig::default(), "").await;
    env.sim.set_latency(Duration::from_millis(40));
    env.sim.set_throttle_retry_after(Duration::from_secs(2));
    env.coordinator("c1");
    env.spawn_process(&["worker"]);
    env.spawn_process(&["worker"]);
    // The coordinator's first listing call is throttled too.
    env.sim.fail_next(1, 429);
    let request = env.enqueue(SyncMode::Full, "test").await;
    env.wait_feed_read(&request).await;
    for (round, status) in [(2, 429), (3, 503)] {
        // Let the workers get going, then throttle a request and those right behind it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        env.sim.fail_next(2, status);
        wait_until("the throttle was sent", Duration::from_secs(20), || async {
            env.sim.traffic_stats().throttles >= round * 2 - 1
        })
        .await;
    }
    let run = env.wait(&request).await;
    let stats = env.sim.traffic_stats();
    eprintln!(
        "throttles {}, early {}, in flight {}, per throttle {:?}",
        stats.throttles, stats.early_requests, stats.in_flight_requests, stats.per_throttle
    );
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert!(stats.throttles >= 4, "{stats:?}");
    assert_eq!(
        stats.early_requests, 0,
        "requests before Retry-After expired: {stats:?}"
    );
    assert!(
        stats.per_throttle.iter().all(|t| t.early == 0),
        "{:?}",
        stats.per_throttle
    );
    env.assert_sink_matches_source();
}

/// (b) Three workers (two processes and one in-process, 4 pages in flight each)
/// with a budget of 10 requests/s (burst 3), against a source that allows 10/s:
/// in no second do more than 10 + 3 requests arrive, the source never has to
/// throttle, and the sync completes. (The gate admits at most 12 in any
/// half-open second; the one request of slack absorbs delivery jitter between
/// admission in Redis and arrival at the simulator.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_holds_across_worker_processes() {
    const R: u64 = 10;
    const BURST: u64 = 3;
    let mut env = env(
        100,
        2,
        SimConfig {
            rate_limit_per_sec: Some(R as u32),
            ..SimConfig::default()
        },
        &format!("requests_per_second = {R}\nburst = {BURST}"),
    )
    .await;
    env.coordinator("c1");
    env.spawn_process(&["worker"]);
    env.spawn_process(&["worker"]);
    env.worker("w1");
    let run = env.sync(SyncMode::Full).await;
    let stats = env.sim.traffic_stats();
    eprintln!(
        "requests {}, busiest second {}, throttles {}",
        env.sim.total_calls(),
        stats.max_per_second,
        stats.throttles
    );
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert!(env.sim.total_calls() > 50, "enough requests to measure");
    assert!(
        stats.max_per_second <= R + BURST,
        "{} requests in one second over a budget of {R}/s (burst {BURST})",
        stats.max_per_second
    );
    assert_eq!(stats.throttles, 0, "the source never had to throttle: {stats:?}");
    env.assert_sink_matches_source();
}

/// (d) Without a budget, against a source that limits to 10 requests/s and
/// answers 429 + Retry-After beyond it (as Confluence Cloud does): the fleet
/// waits as told, sends nothing early, and the sink equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_converges_under_source_rate_limit() {
    let env = env(
        120,
        4,
        SimConfig {
            rate_limit_per_sec: Some(10),
            ..SimConfig::default()
        },
        "",
    )
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env.worker("w2");
    let run = env.sync(SyncMode::Full).await;
    let stats = env.sim.traffic_stats();
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert!(stats.throttles > 0, "the limit was reached: {stats:?}");
    assert_eq!(stats.early_requests, 0, "{stats:?}");
    assert_eq!(run.api_calls, env.sim.total_calls(), "every attempt is counted");
    env.assert_sink_matches_source();
}
