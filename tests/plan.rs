//! A run's plan kept in Redis (`state::plan`): what the coordinator reads back
//! as pages must be what it would have decided in memory.

use std::time::Duration;

use tidemark::queue::jobs::Action;
use tidemark::sources::DocMeta;
use tidemark::state::{HeldMeta, PlanEntry, PlanWrite, RunStatus};
use tidemark::types::{DocumentId, RunId, SyncMode};

use crate::harness::points::{Director, Paused, When};
use crate::harness::{Env, Options};

fn upsert(id: &str, title: &str) -> PlanEntry {
    PlanEntry {
        meta: DocMeta {
            id: id.into(),
            version: "2".into(),
            title: title.into(),
            parent: Some("root".into()),
            ..DocMeta::default()
        },
        action: Action::Upsert,
        before: None,
        placed: true,
    }
}

fn deletion(id: &str) -> PlanEntry {
    PlanEntry {
        action: Action::Delete,
        before: Some(HeldMeta {
            version: "1".into(),
            title: id.into(),
            parent: None,
            access: None,
        }),
        placed: false,
        ..upsert(id, id)
    }
}

/// Later observations replace earlier ones, each id is listed once however
/// often it is written (so it lands in one page), a dropped id is left out,
/// a conditional put never replaces a planned change, and the planned titles
/// follow the upserts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_observations_replace_earlier_and_each_id_is_listed_once() {
    let env = Env::start(Options::default()).await;
    let state = env.app.state();
    let (source, run) = (&env.source, &RunId("r1".into()));
    let state = &state;
    let w = |after: u64, writes: Vec<PlanWrite>| async move {
        state.write_plan(source, run, after, &writes).await.expect("write")
    };
    w(
        0,
        vec![
            PlanWrite::Put(upsert("a", "A")),
            PlanWrite::Put(upsert("b", "B")),
            PlanWrite::Put(upsert("c", "C")),
        ],
    )
    .await;
    // A later feed page: a deleted, b reported unchanged, c renamed, d new.
    w(
        1,
        vec![
            PlanWrite::Put(deletion("a")),
            PlanWrite::Drop("b".into()),
            PlanWrite::Put(upsert("c", "C2")),
            PlanWrite::Put(upsert("d", "D")),
            PlanWrite::Drop("never-planned".into()),
        ],
    )
    .await;
    // The sweep and the unsettled documents: only where nothing is planned.
    let written = state
        .write_plan(
            source,
            run,
            2,
            &[
                PlanWrite::PutIfAbsent(deletion("c")),
                PlanWrite::PutIfAbsent(deletion("b")),
                PlanWrite::PutIfAbsent(deletion("e")),
            ],
        )
        .await
        .expect("conditional");
    assert_eq!(
        written.added, 2,
        "b (dropped) and e (absent) take the deletion, c keeps its upsert"
    );
    assert_eq!((written.batches, written.listed), (3, 5));

    let len = state.plan_len(source, run).await.expect("len");
    assert_eq!(len, 5, "a, b, c, d, e: each listed once");
    let read = state.plan_range(source, run, 0, 3).await.expect("range");
    let rest = state.plan_range(source, run, 3, 3).await.expect("range");
    let all: Vec<(String, Option<(Action, String)>)> = read
        .into_iter()
        .chain(rest)
        .map(|(id, e)| (id.0, e.map(|e| (e.action, e.meta.title))))
        .collect();
    let expect = |id: &str, e: Option<(Action, &str)>| (id.to_string(), e.map(|(a, t)| (a, t.to_string())));
    assert_eq!(
        all,
        vec![
            expect("a", Some((Action::Delete, "a"))),
            expect("b", Some((Action::Delete, "b"))),
            expect("c", Some((Action::Upsert, "C2"))),
            expect("d", Some((Action::Upsert, "D"))),
            expect("e", Some((Action::Delete, "e"))),
        ]
    );
    let ids: Vec<DocumentId> = ["a", "b", "c", "d", "never-planned"].map(DocumentId::from).to_vec();
    let refs: Vec<&DocumentId> = ids.iter().collect();
    let titles = state.planned_titles(source, run, &refs).await.expect("titles");
    assert_eq!(
        titles,
        vec![None, None, Some("C2".to_string()), Some("D".to_string()), None],
        "planned titles are those of the upserts, as last reported"
    );
    let planned = state.planned_of(source, run, &refs).await.expect("planned");
    assert!(planned[4].is_none());
    assert_eq!(planned[3].as_ref().map(|e| e.meta.title.as_str()), Some("D"));

    state.clear_plan(source, run).await.expect("clear");
    assert_eq!(state.plan_len(source, run).await.expect("len"), 0);
    assert_eq!(state.plan_batches(source, run).await.expect("batches"), 0);
}

/// A batch written again (a retry after an unknown outcome) is not applied
/// twice, and one whose predecessors Redis lost is refused: the plan never
/// silently holds part of what the coordinator wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_apply_once_and_lost_ones_are_refused() {
    let env = Env::start(Options::default()).await;
    let state = env.app.state();
    let (source, run) = (&env.source, &RunId("r2".into()));
    let first = vec![PlanWrite::Put(upsert("a", "A"))];
    let retried = vec![PlanWrite::Put(deletion("a")), PlanWrite::PutIfAbsent(deletion("b"))];
    state.write_plan(source, run, 0, &first).await.expect("batch 1");
    let once = state.write_plan(source, run, 1, &retried).await.expect("batch 2");
    // Batch 2 again, as a retry would send it: it answers as before.
    let again = state.write_plan(source, run, 1, &retried).await.expect("batch 2 again");
    assert_eq!(again, once);
    state
        .write_plan(source, run, 2, &[PlanWrite::Put(upsert("a", "A again"))])
        .await
        .expect("batch 3");
    // A call of two batches retried after its second applied: neither applies again.
    let replayed = state
        .write_plan(source, run, 1, &retried)
        .await
        .expect("batches 2 again");
    assert_eq!(replayed.batches, 2);
    let planned = state
        .planned_of(source, run, &[&DocumentId::from("a")])
        .await
        .expect("planned");
    assert_eq!(
        planned[0].as_ref().map(|e| e.meta.title.as_str()),
        Some("A again"),
        "a replayed batch does not undo a later one"
    );

    // Redis loses its latest writes: the next batch is refused, naming why.
    let mut conn = env.redis.conn();
    let _: () = redis::cmd("SET")
        .arg(env.app.keys.run_plan_batches(source, run))
        .arg("1:0")
        .query(&mut conn)
        .expect("SET");
    let err = state
        .write_plan(source, run, 3, &[PlanWrite::Put(upsert("c", "C"))])
        .await
        .expect_err("batches 2 and 3 are missing");
    assert!(err.to_string().contains("Redis lost writes"), "{err}");
}

/// The run paused at the armed point.
async fn reached(paused: &mut tokio::sync::mpsc::UnboundedReceiver<Paused>) -> Paused {
    tokio::time::timeout(Duration::from_secs(30), paused.recv())
        .await
        .expect("the run reaches the armed point")
        .expect("director alive")
}

/// Redis comes back mid-plan with older data (its latest writes lost, as a
/// restore or a lagging replica's promotion would): the run fails, naming
/// why, instead of paging out the part of its plan Redis kept and committing
/// past the rest; the next run syncs every document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_lost_writes_fails_its_run_and_the_next_run_syncs_everything() {
    let mut env = Env::start(Options {
        pages: 600,
        source_settings: "page_limit = 100".into(),
        ..Options::default()
    })
    .await;
    let (director, mut paused) = Director::new(false);
    let director = std::sync::Arc::new(director);
    env.app = env.app.clone().with_hooks(director.clone());
    env.coordinator("c1");
    env.worker("w1");
    // Feed pages 0 to 5 are the restriction scan's (they plan nothing); 6 is the listing's first.
    director.arm(&env.source, When::FeedPage(6));
    let request = env.enqueue(SyncMode::Full, "lossy").await;
    let at_first_page = reached(&mut paused).await;
    let snapshot = tempfile::tempdir().expect("tmp");
    crate::harness::redis_server::copy_dir(&env.redis.dir(), snapshot.path());
    director.arm(&env.source, When::FeedPage(8));
    at_first_page.resume();
    let at_third_page = reached(&mut paused).await;
    // Back to the data as it was after the first feed page.
    env.redis.restart_from(snapshot.path());
    at_third_page.resume();

    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert!(run.last_error.contains("Redis lost writes"), "{run:?}");
    assert_eq!(run.pages_done, 0, "no page of a partial plan went out: {run:?}");
    assert!(env.sink_docs().is_empty(), "nothing reached the sink");

    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(env.sink_docs().len(), 600, "every document, once the plan is whole");
}
