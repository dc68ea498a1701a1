//! End-to-end sync scenarios: a coordinator and workers against a real Redis
//! and the Confluence simulator, checked against the simulator's pages.

use std::time::Duration;

use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options, wait_until};

/// The problem statement's example: 500 pages, then 3 created, 2 updated and 1
/// deleted. The incremental run processes exactly those 6 documents with at most
/// 3 API calls to find and read them (a CQL search, the trash, one batched
/// fetch) and 7 to read who may read (the space's permissions, and a
/// restriction scan of a call per 100 of the 503 pages), and the deleted page is gone
/// from the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_statement_scenario() {
    problem_statement_in(Env::five_hundred_pages().await).await;
}

/// [`problem_statement_scenario`] in `env`, which runs a fleet over a
/// 500-page space in pages of 50 (also run on a Redis Cluster).
pub(crate) async fn problem_statement_in(env: Env) {
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!(full.docs_processed, 500);
    assert_eq!(full.upserted, 500);
    env.assert_sink_matches_source();

    let pages = env.sim.pages();
    // Leaves: renaming or deleting a page with children changes the children too
    // (breadcrumbs, parents), which is more than the statement's 6 changes.
    let leaves: Vec<_> = pages
        .iter()
        .filter(|p| !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .collect();
    let parent = pages[10].id.clone();
    env.sim.create_page("New A", None, "<p>a</p>");
    env.sim.create_page("New B", Some(&parent), "<p>b</p>");
    env.sim.create_page("New C", Some(&parent), "<p>c</p>");
    assert!(env.sim.update_page(&leaves[20].id, None, Some("<p>edited</p>")));
    assert!(env.sim.update_page(&leaves[30].id, Some("Renamed leaf"), None));
    let deleted = leaves[40].clone();
    assert!(env.sim.delete_page(&deleted.id));
    env.sim.reset_calls();

    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert_eq!(inc.docs_processed, 6, "{inc:?}");
    assert_eq!((inc.upserted, inc.deleted), (5, 1), "{inc:?}");
    assert!(
        inc.api_calls <= 3 + 1 + 6,
        "incremental run made {} API calls: {:?}",
        inc.api_calls,
        env.sim.calls()
    );
    assert_eq!(
        inc.api_calls,
        env.sim.total_calls(),
        "run record and simulator disagree on API calls"
    );
    assert!(
        env.sink_docs().iter().all(|d| d.title != deleted.title),
        "deleted page {:?} still in the sink",
        deleted.title
    );
    env.assert_sink_matches_source();
}

/// With nothing changed, an incremental run processes and writes nothing, in
/// at most 4 API calls (a CQL search, the trash, the space's permissions and
/// one restriction-scan call for 60 pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_incremental_processes_nothing() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.sim.reset_calls();
    let inc = env.sync(SyncMode::Incremental).await;
    assert!(inc.api_calls <= 4, "{inc:?}: {:?}", env.sim.calls());
    assert_eq!(inc.api_calls, env.sim.total_calls());
    assert_eq!(inc.status, RunStatus::Completed);
    assert_eq!(
        (inc.docs_processed, inc.upserted, inc.deleted, inc.pages_total),
        (0, 0, 0, 0),
        "{inc:?}"
    );
    assert_eq!(inc.unchanged, 0, "nothing was edited since the full run: {inc:?}");
    env.assert_sink_matches_source();
}

/// A full re-sync of an unchanged space reads everything but rewrites nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_resync_of_unchanged_space_writes_nothing() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    let again = env.sync(SyncMode::Full).await;
    assert_eq!(again.docs_processed, 60);
    assert_eq!((again.upserted, again.skipped), (0, 60), "{again:?}");
}

/// Requests arriving while a source syncs are coalesced into exactly one
/// follow-up run, which starts only after the first one ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_coalesce_into_one_follow_up() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.coordinator("c2");
    // No worker yet: the first run waits for its pages, holding the lock.
    let first = env.enqueue(SyncMode::Full, "test").await;
    let state = env.app.state();
    wait_until("first run is running", Duration::from_secs(10), || async {
        state.run_for_request(&env.source, &first).await.unwrap().is_some()
    })
    .await;
    let second = env.enqueue(SyncMode::Incremental, "test").await;
    let third = env.enqueue(SyncMode::Incremental, "test").await;
    wait_until("both requests coalesced", Duration::from_secs(10), || async {
        let mut conn = env.redis.conn();
        let n: i64 = redis::cmd("LLEN")
            .arg(env.app.keys.follow_up(&env.source))
            .query(&mut conn)
            .unwrap();
        n == 2
    })
    .await;
    env.worker("w1");
    let a = env.wait(&first).await;
    let b = env.wait(&second).await;
    let c = env.wait(&third).await;
    assert_ne!(a.run_id, b.run_id);
    assert_eq!(b.run_id, c.run_id, "the two waiting requests share one follow-up run");
    assert_eq!(b.requested_by, "follow-up");
    assert!(
        b.started_at.unwrap() >= a.ended_at.unwrap(),
        "follow-up overlapped the first run"
    );
    assert!(b.token > a.token);
    let runs = state.recent_runs(&env.source, 10).await.unwrap();
    assert_eq!(runs.len(), 2, "exactly one run plus one follow-up: {runs:?}");
}

/// A page changed after the feed was read but before its job ran is synced in
/// its new version by that same run; one changed after is picked up by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_changed_during_sync_is_never_lost() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    let w1 = env.worker("w1");
    env.sync(SyncMode::Full).await;
    // No worker for now: the run's jobs wait in the stream after the feed is read.
    w1.stop().await;
    let pages = env.sim.pages();
    env.sim
        .update_page(&pages[1].id, None, Some("<p>changed before the sync</p>"));
    let request = env.enqueue(SyncMode::Incremental, "test").await;
    env.wait_feed_read(&request).await;
    // Mid-sync: the page the run is about to process changes again, another one too.
    env.sim
        .update_page(&pages[1].id, None, Some("<p>changed during the sync</p>"));
    env.sim
        .update_page(&pages[2].id, None, Some("<p>also changed during the sync</p>"));
    env.worker("w2");
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::Completed);
    let doc = env.sink_docs().into_iter().find(|d| d.id.0 == pages[1].id).unwrap();
    assert_eq!(
        doc.content, "changed during the sync",
        "the run fetched the newest version"
    );
    let next = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        next.docs_processed, 1,
        "only the page changed mid-run remains: {next:?}"
    );
    env.assert_sink_matches_source();
}

/// State survives a Redis restart (AOF): the checkpoint and held documents are
/// still there, so the next incremental run processes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_redis_restart() {
    let mut env = Env::start(Options::default()).await;
    let c = env.coordinator("c1");
    let w = env.worker("w1");
    env.sync(SyncMode::Full).await;
    c.stop().await;
    w.stop().await;
    env.redis.restart();
    env.coordinator("c2");
    env.worker("w2");
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.docs_processed, 0, "{inc:?}");
}

/// Between deletion sweeps, incremental runs use CQL `lastmodified` queries. With
/// the source's clock three minutes behind ours and its user in New York, a page
/// edited right after a sync is still found (the watermark comes from the
/// source's own clock), the overlap window re-reports pages at no processing
/// cost, a deletion is caught through the trash, and a deletion purged from
/// the trash by the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_between_sweeps_survives_skew_and_timezones() {
    let env = Env::start(Options {
        source_settings: "sweep_every = 3\ntimezone = \"America/New_York\"".into(),
        sim: tidemark::simulators::confluence::SimConfig {
            user_timezone: chrono_tz::America::New_York,
            clock_skew: chrono::Duration::minutes(-3),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let pages = env.sim.pages();
    // Edited just before the full sync: inside the next query's overlap window.
    env.sim
        .update_page(&pages[6].id, None, Some("<p>edited before the sync</p>"));
    env.sync(SyncMode::Full).await;
    env.sim
        .update_page(&pages[5].id, None, Some("<p>edited right after the sync</p>"));
    env.sim.reset_calls();

    let first = env.sync(SyncMode::Incremental).await;
    assert_eq!(first.docs_processed, 1, "{first:?}");
    assert_eq!(first.upserted, 1);
    assert_eq!(
        first.unchanged, 1,
        "the overlap re-reported a synced page, dropped by version: {first:?}"
    );
    assert!(
        env.sim.calls().keys().any(|k| k.contains("content/search")),
        "{:?}",
        env.sim.calls()
    );
    assert_eq!(
        env.sim.calls().get("GET /wiki/api/v2/spaces/{id}/pages"),
        Some(&1),
        "no listing between sweeps, only the trash: {:?}",
        env.sim.calls()
    );

    let leaf = pages
        .iter()
        .rev()
        .find(|p| !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .unwrap();
    assert!(env.sim.delete_page(&leaf.id));
    let second = env.sync(SyncMode::Incremental).await;
    assert_eq!(second.deleted, 1, "the trash shows the deletion: {second:?}");
    let purged = pages
        .iter()
        .rev()
        .find(|p| p.id != leaf.id && !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .unwrap();
    assert!(env.sim.delete_and_purge_page(&purged.id));
    let third = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (third.docs_processed, third.deleted),
        (1, 1),
        "the sweep (every 3rd run) catches the purged page: {third:?}"
    );
    env.assert_sink_matches_source();
}

/// A coordinator killed with SIGKILL mid-run: its request is taken over by
/// another coordinator once idle, the new run (higher token) marks the old one
/// abandoned, and the sink ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_is_taken_over() {
    let mut env = Env::start(Options::default()).await;
    let pid = env.spawn_process(&["coordinator"]);
    let request = env.enqueue(SyncMode::Full, "test").await;
    let state = env.app.state();
    env.wait_feed_read(&request).await;
    let first_run = state.run_for_request(&env.source, &request).await.unwrap();
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    env.coordinator("c2");
    env.worker("w1");
    let done = env.wait(&request).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:?}");
    let first_run = first_run.expect("the first run started");
    assert_ne!(done.run_id, first_run);
    let old = state.run(&env.source, &first_run).await.unwrap().unwrap();
    assert_eq!(old.status, RunStatus::Abandoned, "{old:?}");
    assert!(done.token > old.token);
    env.assert_sink_matches_source();
}

/// Under a tight rate limit the connector gets 429s with Retry-After, waits as
/// told, and the run still converges; every attempt counts as an API call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_source_still_converges() {
    let env = Env::start(Options {
        page_size: 5,
        sim: tidemark::simulators::confluence::SimConfig {
            rate_limit_per_sec: Some(5),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        run.api_calls,
        env.sim.total_calls(),
        "every attempt, 429s included, is counted"
    );
    assert!(run.api_calls > 14, "some requests were refused and retried: {run:?}");
    env.assert_sink_matches_source();
}
