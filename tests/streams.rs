//! Bounded streams (issue 8, point 5): acked requests and jobs are trimmed so
//! Redis memory stays flat over many runs; a pending or undelivered entry is
//! never trimmed; dead letters are bounded by count and by age.

use std::collections::BTreeSet;
use std::time::Duration;

use tidemark::queue::retention::{self, Retention};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options, wait_until};

fn xlen(env: &Env, stream: &str) -> u64 {
    redis::cmd("XLEN").arg(stream).query(&mut env.redis.conn()).unwrap()
}

/// Bytes Redis holds for `key`, counted exactly (`SAMPLES 0`).
fn memory_usage(env: &Env, key: &str) -> u64 {
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query(&mut env.redis.conn())
        .unwrap();
    bytes.unwrap_or(0)
}

/// Entries ever added to `stream` (XINFO STREAM `entries-added`, Redis 7.0).
fn entries_added(env: &Env, stream: &str) -> u64 {
    let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query(&mut env.redis.conn())
        .unwrap();
    match info.get("entries-added") {
        Some(redis::Value::Int(n)) => *n as u64,
        other => panic!("XINFO STREAM {stream}: entries-added is {other:?}"),
    }
}

fn ids(env: &Env, stream: &str) -> BTreeSet<String> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut env.redis.conn())
        .unwrap();
    reply.ids.into_iter().map(|e| e.id).collect()
}

/// Forty runs, each changing ten pages into five page jobs: after run 10 and
/// after run 40 the jobs and requests streams hold about the same number of
/// entries and bytes, although four times as many were added. (Streams only:
/// run records are kept for their retention by design, so `used_memory` as a
/// whole grows by a record per run until the first ones expire.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_many_runs() {
    let env = Env::start(Options {
        pages: 40,
        page_size: 2,
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let (jobs, requests) = (env.app.keys.jobs_for(&env.source), env.app.keys.requests());
    let first = env.sync(SyncMode::Full).await;
    assert_eq!(first.status, RunStatus::Completed);
    let pages = env.sim.pages();
    let mut after_10 = None;
    for run in 1..=40 {
        for (i, p) in pages.iter().enumerate().skip(run % 4).step_by(4).take(10) {
            env.sim
                .update_page(&p.id, None, Some(&format!("<p>run {run} page {i}</p>")));
        }
        let r = env.sync(SyncMode::Incremental).await;
        assert_eq!((r.status, r.upserted), (RunStatus::Completed, 10), "run {run}: {r:?}");
        if run == 10 {
            after_10 = Some((
                memory_usage(&env, &jobs) + memory_usage(&env, &requests),
                entries_added(&env, &jobs),
            ));
        }
    }
    env.assert_sink_matches_source();
    let (bytes_10, added_10) = after_10.unwrap();
    let bytes_40 = memory_usage(&env, &jobs) + memory_usage(&env, &requests);
    let added_40 = entries_added(&env, &jobs);
    assert!(
        added_40 - added_10 >= 150,
        "30 runs of 5 jobs: {added_10} -> {added_40}"
    );
    // Approximate trimming (MINID ~) drops whole macro nodes (at most 4 KiB or
    // 100 entries each, about 5 KiB of memory), so per stream one node, or two
    // while the last ack of a run is in flight, may remain. Untrimmed, the 150
    // jobs added since run 10 would hold some 15 nodes (about 75 KiB).
    assert!(xlen(&env, &jobs) <= 100, "jobs stream: {} entries", xlen(&env, &jobs));
    assert!(
        xlen(&env, &requests) < 41,
        "requests stream: {} entries",
        xlen(&env, &requests)
    );
    assert!(
        bytes_40 <= bytes_10 + 16 * 1024,
        "stream memory grew with the run count:\nafter run 10: {bytes_10} B\nafter run 40: {bytes_40} B"
    );
}

/// A worker process reads page jobs and is SIGKILLed before acking them. Then
/// the streams are trimmed again and again: the acked entries of the earlier
/// run go, but every pending entry (held by the dead worker) and every entry
/// not yet delivered stays, and a new worker claims and completes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_never_removes_pending_or_undelivered_entries() {
    let mut env = Env::start(Options {
        pages: 60,
        page_size: 1,
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    let w1 = env.worker("w1");
    let jobs = env.app.keys.jobs_for(&env.source);
    assert_eq!(env.sync(SyncMode::Full).await.status, RunStatus::Completed);
    w1.stop().await;
    let pages = env.sim.pages();
    for p in pages.iter().take(12) {
        env.sim.update_page(&p.id, None, Some("<p>changed</p>"));
    }
    env.sim.set_latency(Duration::from_millis(1500));
    let pid = env.spawn_process(&["worker"]);
    let request = env.enqueue(SyncMode::Incremental, "test").await;
    env.wait_feed_read(&request).await;
    wait_until("the worker process holds pages", Duration::from_secs(20), || async {
        let summary: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&jobs)
            .arg("workers")
            .query(&mut env.redis.conn())
            .unwrap();
        summary.0 > 0
    })
    .await;
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();

    // The 12 jobs of this run: some pending on the dead worker, the rest undelivered.
    let all = ids(&env, &jobs);
    let this_run: BTreeSet<String> = all.iter().rev().take(12).cloned().collect();
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&jobs)
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(100)
        .query(&mut env.redis.conn())
        .unwrap();
    assert!(!pending.is_empty() && pending.len() < 12, "{pending:?}");
    for _ in 0..3 {
        retention::trim_all(&env.app.pool, &env.app.keys, &Retention::default())
            .await
            .unwrap();
    }
    let left = ids(&env, &jobs);
    assert!(
        left.len() < 60,
        "the full run's acked jobs were trimmed: {} left",
        left.len()
    );
    for id in this_run.iter().chain(pending.iter().map(|p| &p.0)) {
        assert!(left.contains(id), "entry {id} (pending or undelivered) was trimmed");
    }

    env.sim.set_latency(Duration::ZERO);
    env.worker("w2");
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!((run.pages_done, run.pages_total, run.upserted), (12, 12, 12), "{run:?}");
    env.assert_sink_matches_source();
}

/// Dead letters are bounded by age and by count, by the coordinator's
/// periodic trim configured in `[queue]`: entries older than
/// `dlq_max_age_hours` go, then only the newest `dlq_max_len` stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_trimmed_by_length_and_age() {
    let env = Env::start(Options {
        queue: "dlq_max_len = 3\ndlq_max_age_hours = 1\ntrim_interval_secs = 1".into(),
        ..Options::default()
    })
    .await;
    let dlq = env.app.keys.dead_letters();
    let now_ms: u64 = {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut env.redis.conn()).unwrap();
        secs * 1000 + micros / 1000
    };
    let add = |id: String| -> String {
        redis::cmd("XADD")
            .arg(&dlq)
            .arg(id)
            .arg("reason")
            .arg("test")
            .query(&mut env.redis.conn())
            .unwrap()
    };
    // Two dead letters from 3 and 2 hours ago, two fresh ones.
    add(format!("{}-0", now_ms - 3 * 3600 * 1000));
    add(format!("{}-0", now_ms - 2 * 3600 * 1000));
    let fresh: Vec<String> = (0..2).map(|_| add("*".into())).collect();
    let c1 = env.coordinator("c1");
    wait_until(
        "dead letters older than an hour trimmed",
        Duration::from_secs(10),
        || async { xlen(&env, &dlq) == 2 },
    )
    .await;
    assert_eq!(ids(&env, &dlq), fresh.iter().cloned().collect());

    let more: Vec<String> = (0..4).map(|_| add("*".into())).collect();
    wait_until("dead letters beyond 3 trimmed", Duration::from_secs(10), || async {
        xlen(&env, &dlq) == 3
    })
    .await;
    assert_eq!(
        ids(&env, &dlq),
        more[1..].iter().cloned().collect(),
        "the newest three are kept"
    );
    c1.stop().await;
}
