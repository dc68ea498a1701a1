//! One policy for Redis faults (issue 8, point 4): every component rides out a
//! Redis outage with capped exponential backoff, reports not-ready while it
//! lasts, and resumes by itself; a run in flight survives a restart or a pause;
//! `enqueue --wait` reports the run's real outcome, or that Redis was unreachable.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tidemark::keys::Keys;
use tidemark::state::{RunStatus, StateStore};
use tidemark::types::{FencingToken, SourceId, SyncMode};
use tower::ServiceExt;

use crate::harness::redis_server::RedisServer;
use crate::harness::{Env, Options, wait_until};

/// A run long enough to be caught in flight: 400 pages in jobs of 5 (tests add 60 ms per request).
fn slow_run() -> Options {
    Options {
        pages: 400,
        page_size: 5,
        ..Options::default()
    }
}

/// Runs the real binary to its end (blocking; call through `spawn_blocking`).
fn tidemark(env: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .arg("--config")
        .arg(&env.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tidemark")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Worker and coordinator processes started while Redis is down do not exit:
/// each logs once that it cannot reach Redis (naming the address) and retries
/// with backoff; once Redis starts they sync the source completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_redis_wait_for_it() {
    let mut env = Env::start(Options::default()).await;
    env.redis.kill();
    let worker = env.spawn_process(&["worker"]);
    let coordinator = env.spawn_process(&["coordinator"]);
    let outage = Duration::from_secs(3);
    tokio::time::sleep(outage).await;
    for (pid, name) in [(worker, "worker"), (coordinator, "coordinator")] {
        assert!(
            env.process_exited(pid).is_none(),
            "{name} exited with Redis down: {:?}\n{}",
            env.process_exited(pid),
            env.process_log(pid)
        );
        let log = env.process_log(pid);
        assert!(
            log.contains(&format!("cannot reach redis at {}", env.redis.url())),
            "{name} did not say which Redis it waits for:\n{log}"
        );
        // Backoff, not a fixed 500 ms: 200 ms doubling gives about 4 attempts
        // in 3 s (a fixed 500 ms, 6; a busy loop, thousands). Checked loosely.
        let attempts = log.matches("redis unavailable; retrying").count();
        assert!(
            (2..=8).contains(&attempts),
            "{name}: {attempts} retries in {outage:?}:\n{log}"
        );
    }
    env.redis.restart();
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    env.assert_sink_matches_source();
    assert!(env.process_exited(worker).is_none() && env.process_exited(coordinator).is_none());
}

async fn get(app: &tidemark::app::App, path: &str) -> (StatusCode, String) {
    let r = tidemark::api::router(app.clone())
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("router answers");
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `/readyz` is 503 with its reason (Redis, by address) while Redis is down and
/// 200 once it is back; `/healthz` (liveness) stays 200 throughout, so
/// Kubernetes takes the pod out of the Service instead of restarting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_redis_outage_and_liveness_does_not() {
    let mut env = Env::start(Options::default()).await;
    assert_eq!(get(&env.app, "/readyz").await.0, StatusCode::OK);
    env.redis.kill();
    let (status, body) = get(&env.app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.starts_with(&format!("not ready: redis at {} unavailable:", env.redis.url())),
        "{body}"
    );
    assert_eq!(get(&env.app, "/healthz").await, (StatusCode::OK, "ok".to_owned()));
    env.redis.restart();
    let app = env.app.clone();
    wait_until("readyz 200 after Redis is back", Duration::from_secs(10), || {
        let app = app.clone();
        async move { get(&app, "/readyz").await.0 == StatusCode::OK }
    })
    .await;
    assert_eq!(get(&env.app, "/healthz").await.0, StatusCode::OK);
}

/// Starts a slow full run on in-process parts, applies `fault` once its pages
/// are enqueued, and checks that the run still completes with the sink equal
/// to the source.
async fn run_survives(mut env: Env, fault: impl FnOnce(&mut Env)) {
    env.sim.set_latency(Duration::from_millis(60));
    let c = env.coordinator("c1");
    let w1 = env.worker("w1");
    let w2 = env.worker("w2");
    let request = env.enqueue(SyncMode::Full, "test").await;
    env.wait_feed_read(&request).await;
    let state = env.app.state();
    let run = state
        .run_for_request(&env.source, &request)
        .await
        .expect("state")
        .expect("a run serves the request");
    let before = state.run(&env.source, &run).await.expect("state").expect("record");
    assert!(
        before.pages_done < before.pages_total,
        "the run ended before the fault: {before:?}"
    );
    fault(&mut env);
    let record = env.wait(&request).await;
    assert_eq!(record.run_id, run, "the same run answers: {record:?}");
    assert_eq!(record.status, RunStatus::Completed, "{record:?}");
    assert_eq!(record.pages_done, record.pages_total, "{record:?}");
    // Every page counted once: a page redone after the fault counts its
    // already-written documents as skipped, never twice.
    assert_eq!(record.upserted + record.skipped, 400, "{record:?}");
    env.assert_sink_matches_source();
    for p in [c, w1, w2] {
        p.stop().await;
    }
}

/// A run in flight survives a Redis restart (AOF, appendfsync always): its
/// Redis operations are retried within its lease instead of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_in_flight_survives_a_redis_restart() {
    let env = Env::start(slow_run()).await;
    run_survives(env, |env| env.redis.restart()).await;
}

/// A run in flight survives Redis paused (SIGSTOP) for 3 s, shorter than its
/// lease (10 s) and longer than the response timeout (2 s): commands time out,
/// are retried with backoff, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_in_flight_survives_a_redis_pause() {
    let env = Env::start(Options {
        lock_ttl_ms: 10_000,
        ..slow_run()
    })
    .await;
    run_survives(env, |env| {
        env.redis.pause();
        std::thread::sleep(Duration::from_secs(3));
        env.redis.resume();
    })
    .await;
}

/// `enqueue --wait` waits through a Redis restart (logging that it is still
/// waiting) and exits with the run's real outcome: 0, completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_reports_the_real_outcome_across_an_outage() {
    let mut env = Env::start(slow_run()).await;
    env.sim.set_latency(Duration::from_millis(60));
    env.spawn_process(&["standalone", "--workers", "2"]);
    let config = env.config_path.clone();
    let waiter = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args([
                "enqueue",
                "eng",
                "--full",
                "--wait",
                "--json",
                "--timeout",
                "90",
                "--config",
            ])
            .arg(config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tidemark")
    });
    // Once the run has enqueued its pages, take Redis away for a second.
    let state = env.app.state();
    wait_until("a run is in flight", Duration::from_secs(30), || {
        let state = state.clone();
        let source = env.source.clone();
        async move {
            let runs = state.recent_runs(&source, 1).await.unwrap_or_default();
            runs.first()
                .is_some_and(|r| r.feed_done && r.pages_done < r.pages_total)
        }
    })
    .await;
    env.redis.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.redis.restart();
    let out = tokio::task::spawn_blocking(move || waiter.join().expect("waiter thread"))
        .await
        .expect("join");
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("still waiting for the run"),
        "the outage went unnoticed:\n{err}"
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(run["status"], "completed");
    env.assert_sink_matches_source();
}

/// With Redis down and never coming back, `enqueue --wait` retries until its
/// timeout and exits 4 ("could not reach Redis"), naming the address; it does
/// the same when Redis goes away after the request was enqueued: it never
/// claims the run failed (1) or merely timed out (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_without_redis_exits_unreachable() {
    let mut env = Env::start(Options::default()).await;
    env.redis.kill();
    let started = Instant::now();
    let out = tidemark(&env, &["enqueue", "eng", "--wait", "--timeout", "3"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "gave up before its timeout"
    );
    assert!(
        err.contains(&format!("could not reach redis at {} within 3s", env.redis.url())),
        "{err}"
    );

    // Enqueued, then Redis goes away for good: the outcome is unknown, not a failure.
    env.redis.restart();
    let config = env.config_path.clone();
    let waiter = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["enqueue", "eng", "--wait", "--timeout", "4", "--config"])
            .arg(config)
            .output()
            .expect("run tidemark")
    });
    let mut conn = env.redis.conn();
    let key = env.app.keys.requests();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::cmd("XLEN").arg(&key).query::<u64>(&mut conn).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the request was never enqueued");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.redis.kill();
    let out = tokio::task::spawn_blocking(move || waiter.join().expect("waiter thread"))
        .await
        .expect("join");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("outcome of request"), "{err}");
}

/// The pool hands out a connection in steady use without a PING (issue
/// 12.4), yet a restart costs no command: the connection speaks RESP3, its
/// driver reports the server closing it, and the pool replaces it at the next
/// checkout. A connection whose command failed is replaced too (at most one
/// failure, reported as Redis being unavailable, which every caller retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_recover_from_a_restart() {
    let mut redis = crate::harness::RedisServer::start();
    let pool = tidemark::db::pool(&redis.url(), 1, Duration::from_secs(2)).expect("pool");
    let incr = || async {
        let mut conn = pool.get().await?;
        redis::cmd("INCR")
            .arg("tm:n")
            .query_async::<i64>(&mut conn)
            .await
            .map_err(tidemark::db::GetError::Backend)
    };
    assert_eq!(incr().await.expect("first"), 1);

    // Busy: restarted right after a command, used again at once.
    redis.restart();
    assert_eq!(incr().await.expect("the closed connection is not handed out"), 2);

    // Paused past the response timeout: the command fails, reported as
    // unavailable, and the connection is not handed out again.
    redis.pause();
    match incr().await {
        Err(tidemark::db::GetError::Backend(e)) => assert!(tidemark::db::is_unavailable(&e), "{e}"),
        other => panic!("a paused Redis answered: {other:?}"),
    }
    redis.resume();
    // The timed-out INCR may still run once Redis resumes (an unknown
    // outcome, which is why only idempotent writes are retried blindly).
    let n = incr().await.expect("a fresh connection");
    assert!(n == 3 || n == 4, "{n}");
}

/// Makes `replica` replicate `primary` and waits until the link is up.
async fn replicate(replica: &RedisServer, primary: &RedisServer) {
    let mut conn = replica.conn();
    let port = primary
        .url()
        .rsplit(':')
        .next()
        .map(|p| p.trim_end_matches('/').to_owned())
        .expect("port");
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(&port)
        .query(&mut conn)
        .expect("REPLICAOF");
    wait_until("the replica's link is up", Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.conn())
            .expect("INFO");
        async move { info.contains("master_link_status:up") }
    })
    .await;
}

/// The fence the server behind `conn` holds for `source`.
fn fence_on(server: &RedisServer, keys: &Keys, source: &SourceId) -> u64 {
    let v: Option<u64> = redis::cmd("GET")
        .arg(keys.fence(source))
        .query(&mut server.conn())
        .expect("GET");
    v.unwrap_or(0)
}

/// With `[redis] wait_replicas = 1`, a raised fence is on a replica before
/// `register_token` returns (WAIT), so a primary that dies right after and
/// is replaced by its replica still refuses the older token; a replica that
/// does not acknowledge in time fails the registration, naming why, and the
/// run does not start. Without it, `register_token` returns while the
/// replica has not seen the raise (asynchronous replication: what a failover
/// at that moment would lose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_fence_reaches_a_replica_before_the_run_goes_on() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start();
    replicate(&replica, &primary).await;
    let keys = Keys::new("tm");
    let source = SourceId::new("eng").expect("id");
    let pool = || tidemark::db::pool(&primary.url(), 4, Duration::from_secs(5)).expect("pool");
    let waiting = StateStore::new(pool(), keys.clone()).with_replica_wait(Some((1, Duration::from_secs(2))));
    let not_waiting = StateStore::new(pool(), keys.clone());

    waiting.register_token(&source, FencingToken(1)).await.expect("raised");
    assert_eq!(
        fence_on(&replica, &keys, &source),
        1,
        "acknowledged by the replica before returning"
    );

    // Without waiting: returns while the replica is stopped, not having the raise.
    replica.pause();
    tokio::time::timeout(
        Duration::from_secs(1),
        not_waiting.register_token(&source, FencingToken(2)),
    )
    .await
    .expect("returns at once")
    .expect("raised on the primary");
    // Waiting, with the replica stopped past the wait: refused, naming why.
    let err = waiting
        .register_token(&source, FencingToken(3))
        .await
        .expect_err("no replica acknowledged within 2 s");
    assert!(err.to_string().contains("replica"), "{err}");

    // Waiting while the replica is stopped for less: returns once it has caught up.
    let raise = {
        let (state, source) = (waiting.clone(), source.clone());
        tokio::spawn(async move { state.register_token(&source, FencingToken(4)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!raise.is_finished(), "waits for the replica");
    replica.resume();
    raise.await.expect("join").expect("raised once the replica has it");

    // The primary dies at once; its replica is promoted and still refuses token 3.
    primary.kill();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut replica.conn())
        .expect("promote");
    assert_eq!(fence_on(&replica, &keys, &source), 4);
}
