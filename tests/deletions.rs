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

/// With CQL-only incremental runs (sweeps far apart), a deletion is invisible;
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
    env.sim.delete_page(&leaf.id);
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
