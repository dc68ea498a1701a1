//! Fairness across sources: a large full sync of one source does not hold
//! back a small incremental of another. A run keeps at most
//! `max_pages_in_flight` of its pages enqueued and unfinished, so the small
//! run's page waits behind a few of the large run's pages, not all of them.

use std::time::{Duration, Instant};

use tidemark::queue::{self, jobs::SyncRequest};
use tidemark::state::RunStatus;
use tidemark::types::{SourceId, SyncMode};

use crate::harness::{Env, Options, wait_for_pages_done};

/// A 10,000-page Confluence space answering every call after 60 ms is synced
/// in full by one worker (2 pages at a time) in about 200 pages; once that run
/// is working through its pages, a 5-file filesystem source is synced: it
/// completes within seconds while the large run is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_sync_is_not_held_back_by_a_large_one() {
    let files = tempfile::tempdir().expect("tmp");
    for i in 0..5 {
        std::fs::write(
            files.path().join(format!("note-{i}.md")),
            format!("# Note {i}\n\nbody {i}\n"),
        )
        .expect("write");
    }
    let env = Env::start(Options {
        pages: 10_000,
        page_size: 50,
        sync: "worker_concurrency = 2\nmax_pages_in_flight = 4".into(),
        more_sources: format!(
            "[[sources]]\nid = \"files\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\n",
            files.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    env.sim.set_latency(Duration::from_millis(60));
    env.coordinator("c1");
    env.worker("w1");
    let big = env.enqueue(SyncMode::Full, "big").await;
    let state = env.app.state();
    wait_for_pages_done(&env, &env.source, 2, Duration::from_secs(120)).await;

    let small_source = SourceId::new("files").expect("id");
    let small = SyncRequest::new(small_source.clone(), SyncMode::Incremental, "small");
    let started = Instant::now();
    let id = queue::enqueue(&env.app.pool, &env.app.keys, &small)
        .await
        .expect("enqueue");
    let done = state
        .wait_for_request(&small_source, &id, Duration::from_millis(20), Duration::from_secs(60))
        .await
        .expect("state readable")
        .expect("the small run finishes");
    let waited = started.elapsed();
    eprintln!("fairness: the 5-document sync took {waited:?} while the 10,000-page one ran");
    assert_eq!(done.status, RunStatus::Completed, "{done:?}");
    assert_eq!(done.upserted, 5, "{done:?}");
    let large = state.recent_runs(&env.source, 1).await.expect("runs");
    let large = large.first().expect("the large run");
    assert_eq!(
        large.status,
        RunStatus::Running,
        "the large run should still be running when the small one is done ({waited:?}): {large:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the small sync took {waited:?} behind a large one ({} of {} pages done)",
        large.pages_done,
        large.pages_total
    );
    let big = env.wait(&big).await;
    assert_eq!(big.status, RunStatus::Completed, "{big:?}");
    assert_eq!(big.pages_total, 200, "{big:?}");
}
