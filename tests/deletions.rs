//! Deletion detection beyond the change feed: the deletion guard against
//! listings that come back empty, and periodic reconciliation that catches what
//! incremental queries cannot see.

use tidemark::queue;
use tidemark::queue::jobs::SyncRequest;
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options};

/// A listing that comes back empty (an outage, a lost permission) must not wipe
/// the knowledge base: the run deletes nothing, says why, keeps the checkpoint,
/// and only a confirmed request deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_guard_refuses_to_wipe_the_knowledge_base() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    let state = env.app.state();
    let before = state.checkpoint(&env.source).await.unwrap();
    for p in env.sim.pages() {
        env.sim.delete_page(&p.id);
    }
    let refused = env.sync(SyncMode::Incremental).await;
    assert_eq!(refused.status, RunStatus::CompletedWithErrors, "{refused:?}");
    assert_eq!(refused.deleted, 0);
    assert!(refused.last_error.contains("deletion guard: 60 of 60"), "{refused:?}");
    assert!(refused.note.contains("allow-mass-delete"), "{refused:?}");
    assert_eq!(env.sink_docs().len(), 60, "nothing was deleted");
    assert_eq!(state.checkpoint(&env.source).await.unwrap(), before);

    let mut confirmed = SyncRequest::new(env.source.clone(), SyncMode::Incremental, "test");
    confirmed.allow_mass_delete = true;
    queue::enqueue(&env.app.pool, &env.app.keys, &confirmed).await.unwrap();
    let run = env.wait(&confirmed.request_id).await;
    assert_eq!((run.status, run.deleted), (RunStatus::Completed, 60), "{run:?}");
    assert!(env.sink_docs().is_empty());
}

/// Deleting a share below `max_delete_share` goes through without confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_below_the_guard_need_no_confirmation() {
    let env = Env::start(Options {
        source_fields: "max_delete_share = 0.2".into(),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    let pages = env.sim.pages();
    let leaves: Vec<_> = pages
        .iter()
        .filter(|p| !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .take(10)
        .collect();
    for p in &leaves {
        env.sim.delete_page(&p.id);
    }
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!((run.status, run.deleted), (RunStatus::Completed, 10), "{run:?}");
    env.assert_sink_matches_source();
}

/// With sweeps far apart, a page deleted and purged from the trash between two
/// runs is invisible to incremental runs (search and trash listing);
/// periodic reconciliation (every 2nd run) turns a run into a full listing and
/// catches it, and the run says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_reconciliation_catches_invisible_deletions() {
    let env = Env::start(Options {
        source_fields: "reconcile_every_runs = 2".into(),
        source_settings: "sweep_every = 100".into(),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    let pages = env.sim.pages();
    let leaf = pages
        .iter()
        .rev()
        .find(|p| !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .unwrap();
    // Deleted and purged from the trash before the next run: neither the search
    // nor the trash listing can see it.
    assert!(env.sim.delete_and_purge_page(&leaf.id));
    let first = env.sync(SyncMode::Incremental).await;
    assert_eq!((first.mode, first.deleted), (SyncMode::Incremental, 0), "{first:?}");
    let second = env.sync(SyncMode::Incremental).await;
    assert_eq!((second.mode, second.deleted), (SyncMode::Full, 1), "{second:?}");
    assert!(second.note.contains("periodic reconciliation"), "{second:?}");
    let third = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        third.mode,
        SyncMode::Incremental,
        "the counter restarts after a full run"
    );
    env.assert_sink_matches_source();
}

/// Deleting a page moves its children up to its parent, without a new version
/// for them, so the search of changes never reports them; the trash reports
/// the deleted page. The run fetches the deleted page's held children again
/// (their new parent), and their breadcrumbs and their own children's follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_trashed_page_move_up_between_sweeps() {
    // Seeded pages, last edited weeks ago: far outside the search's overlap window.
    let env = Env::start(Options {
        pages: 200,
        ..Options::default()
    })
    .await;
    let pages = env.sim.pages();
    let parent_of = |id: &str| pages.iter().find(|p| p.id == id).and_then(|p| p.parent_id.clone());
    let child_of = |id: &str| {
        pages
            .iter()
            .find(|p| p.parent_id.as_deref() == Some(id))
            .map(|p| p.id.clone())
    };
    // top > middle > child > grandchild
    let (top, middle, child, grandchild) = pages
        .iter()
        .find_map(|m| {
            let top = parent_of(&m.id)?;
            let child = child_of(&m.id)?;
            let grandchild = child_of(&child)?;
            Some((top, m.id.clone(), child, grandchild))
        })
        .expect("a seeded chain four pages deep");
    let title = |id: &str| {
        pages
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.title.clone())
            .unwrap_or_default()
    };
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.assert_sink_matches_source();

    assert!(env.sim.delete_page(&middle));
    env.sim.reset_calls();
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let kids = pages
        .iter()
        .filter(|p| p.parent_id.as_deref() == Some(middle.as_str()))
        .count() as u64;
    assert_eq!(
        (run.deleted, run.upserted),
        (1, kids),
        "the middle page went, its children were fetched: {run:?}"
    );
    assert_eq!(
        run.api_calls,
        6 + 4,
        "search, trash, one batched fetch, the space's permissions and the restriction scan (two calls for \
         200 pages), and who may read the children fetched again (named, not listed: four): {run:?} {:?}",
        env.sim.calls()
    );
    assert!(!run.note.contains("complete listing"), "{run:?}");
    let docs = env.sink_docs();
    let crumbs = |id: &str| docs.iter().find(|d| d.id.0 == id).map(|d| d.breadcrumb.clone());
    let mut above = Vec::new();
    let mut cur = Some(top.clone());
    while let Some(id) = cur {
        above.insert(0, title(&id));
        cur = parent_of(&id);
    }
    assert_eq!(crumbs(&child), Some(above.clone()));
    above.push(title(&child));
    assert_eq!(crumbs(&grandchild), Some(above));
    env.assert_sink_matches_source();
}
