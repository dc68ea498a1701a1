//! Races between a sync and changes at the source, replayed deterministically:
//! each test pauses a run at a point it chooses (`harness::points`), changes
//! the source there, lets the run go on, and then checks the invariant: after
//! one quiet sync the sink equals the source (parents included), and a further
//! sync has nothing to do.

use std::collections::BTreeMap;
use std::sync::Arc;

use tidemark::simulators::gdrive::{GdriveSim, SimConfig as GdriveConfig};
use tidemark::sinks::SinkDocument;
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::harness::points::{Director, Paused, When};
use crate::harness::{Env, Options};

/// An environment whose runs announce their points to an ordered director.
async fn env_with_points(opts: Options) -> (Env, Arc<Director>, UnboundedReceiver<Paused>) {
    let mut env = Env::start(opts).await;
    let (director, paused) = Director::new(true);
    let director = Arc::new(director);
    env.app = env.app.clone().with_hooks(director.clone());
    (env, director, paused)
}

/// Runs one incremental sync paused at `when`, where `change` is applied.
async fn sync_with_change_at(
    env: &Env,
    director: &Director,
    paused: &mut UnboundedReceiver<Paused>,
    when: When,
    change: impl FnOnce(),
) {
    director.arm(&env.source, when);
    let req = env.enqueue(SyncMode::Incremental, "race").await;
    let p = tokio::time::timeout(std::time::Duration::from_secs(30), paused.recv())
        .await
        .expect("the run reaches the armed point")
        .expect("director alive");
    assert_eq!(p.when, when);
    change();
    p.resume();
    let run = env.wait(&req).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
}

/// id -> (parent, breadcrumb) of what the sink holds.
fn parents(env: &Env) -> Vec<(String, Option<String>, Vec<String>)> {
    env.sink_docs()
        .into_iter()
        .map(|d: SinkDocument| (d.id.0, d.parent.map(|p| p.0), d.breadcrumb))
        .collect()
}

/// A Confluence space holding one chain of pages, each the parent of the next,
/// titled `titles` (body `<p>` + the title's first letter, lower case), synced
/// in full by a coordinator and `workers` workers that keep running; returns the
/// pages' ids in chain order.
async fn synced_chain<const N: usize>(
    page_size: usize,
    titles: &[&str; N],
    workers: usize,
) -> (Env, Arc<Director>, UnboundedReceiver<Paused>, [String; N]) {
    let (env, director, paused) = env_with_points(Options {
        pages: 0,
        page_size,
        ..Options::default()
    })
    .await;
    let mut parent: Option<String> = None;
    let ids = titles.map(|title| {
        let body = format!("<p>{}</p>", title[..1].to_lowercase());
        let id = env.sim.create_page(title, parent.as_deref(), &body);
        parent = Some(id.clone());
        id
    });
    env.coordinator("c1");
    for w in 1..=workers {
        env.worker(&format!("w{w}"));
    }
    env.sync(SyncMode::Full).await;
    (env, director, paused, ids)
}

/// After one quiet sync the sink equals the source, parents included, and a
/// second quiet sync processes nothing.
async fn assert_converges_in_one_quiet_sync(env: &Env) {
    let quiet = env.sync(SyncMode::Incremental).await;
    assert_eq!(quiet.status, RunStatus::Completed, "{quiet:?}");
    env.assert_sink_matches_source();
    let want: Vec<_> = env
        .sim
        .pages()
        .into_iter()
        .map(|p| p.id.clone())
        .zip(env.sim.pages().into_iter().map(|p| p.parent_id))
        .collect();
    let got: Vec<_> = parents(env).into_iter().map(|(id, p, _)| (id, p)).collect();
    assert_eq!(want, got, "parents: expected (left) vs sink (right)");
    let noop = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (noop.docs_processed, noop.dependents),
        (0, 0),
        "converged means nothing left to do: {noop:?}"
    );
}

/// Issue 8, convergence seed 334: a page edited before a sync and deleted after
/// the sync planned it. Its fetch finds it gone, so the run deletes it and
/// refreshes its child, whose parent at the source moved up without a new
/// version. The refresh keeps the old parent; before the fix the next runs saw
/// the new parent in the listing, planned the child, and the worker skipped it
/// (same version, same hash, the parent not compared): the sink kept the dead
/// parent for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_moved_up_by_a_deletion_racing_a_sync() {
    let (env, director, mut paused, chain) = synced_chain(1, &["Parent", "Child", "Grandchild"], 2).await;
    let [parent, child, grandchild] = chain;
    env.assert_sink_matches_source();

    env.sim.update_page(&parent, None, Some("<p>p2</p>"));
    sync_with_change_at(&env, &director, &mut paused, When::Planned, || {
        assert!(env.sim.delete_page(&parent));
    })
    .await;
    assert!(
        parents(&env).iter().all(|(id, _, _)| *id != parent),
        "the racing run deleted the parent it found gone"
    );
    assert_converges_in_one_quiet_sync(&env).await;
    let sink = parents(&env);
    assert!(sink.contains(&(child.clone(), None, vec![])), "{sink:?}");
    assert!(
        sink.contains(&(grandchild, Some(child), vec!["Child".to_owned()])),
        "{sink:?}"
    );
}

/// The same race one level down: the deleted page had a parent of its own, so
/// its children move up to that page (not to the root) and their descendants'
/// breadcrumbs change too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_moved_up_to_a_grandparent_by_a_racing_deletion() {
    let (env, director, mut paused, chain) = synced_chain(1, &["Top", "Parent", "Child", "Grandchild"], 1).await;
    let [_, parent, _, _] = chain;

    env.sim.update_page(&parent, Some("Parent renamed"), None);
    // After its page is fetched (page 0 of the run applies the rename) and
    // before the dependents: they must not rest on the deleted page's tree.
    sync_with_change_at(&env, &director, &mut paused, When::PagesDone, || {
        assert!(env.sim.delete_page(&parent));
    })
    .await;
    assert_converges_in_one_quiet_sync(&env).await;
}

/// Issue 8, convergence seed 45: a parent and its child both change, and the
/// parent is renamed again after the plan. The child's breadcrumb was planned
/// from the feed's (old) parent title; the dependents pass skipped the child
/// because this run had written it itself, so the stale breadcrumb stayed for
/// good (neither page changes again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_renamed_between_feed_and_fetch_reaches_a_child_written_in_the_same_run() {
    let (env, director, mut paused, chain) = synced_chain(4, &["Parent", "Child"], 1).await;
    let [parent, child] = chain;

    env.sim.update_page(&parent, None, Some("<p>p2</p>"));
    env.sim.update_page(&child, Some("Child renamed"), None);
    sync_with_change_at(&env, &director, &mut paused, When::PageStart(0), || {
        env.sim.update_page(&parent, Some("Parent renamed"), None);
    })
    .await;
    env.assert_sink_matches_source();
    assert_converges_in_one_quiet_sync(&env).await;
}

/// A parent renamed before the feed and renamed back after the plan: the
/// title it ends with equals what we held, so it is no rename by that
/// comparison, yet its child's planned breadcrumb carries the intermediate title.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_renamed_and_back_around_the_plan_leaves_no_stale_breadcrumb() {
    let (env, director, mut paused, chain) = synced_chain(1, &["Parent", "Child"], 1).await;
    let [parent, child] = chain;

    env.sim.update_page(&parent, Some("Interim"), None);
    env.sim.update_page(&child, None, Some("<p>c2</p>"));
    sync_with_change_at(&env, &director, &mut paused, When::Planned, || {
        env.sim.update_page(&parent, Some("Parent"), None);
    })
    .await;
    env.assert_sink_matches_source();
    assert_converges_in_one_quiet_sync(&env).await;
}

/// An environment whose source `eng` is a simulated Drive folder, with points.
async fn drive_env_with_points() -> (Env, GdriveSim, Arc<Director>, UnboundedReceiver<Paused>) {
    let sim = GdriveSim::new(GdriveConfig::default());
    let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let source = format!(
        "[[sources]]\nid = \"eng\"\nkind = \"gdrive\"\n[sources.settings]\nbase_url = \"http://{addr}\"\nfolder_id = \"root-folder\"\n"
    );
    let (env, director, paused) = env_with_points(Options {
        pages: 0,
        page_size: 1,
        source_toml: Some(source),
        ..Options::default()
    })
    .await;
    (env, sim, director, paused)
}

/// The sink holds exactly the syncable files of the synced tree: id, version, name, parent, content.
fn assert_sink_matches_drive(env: &Env, sim: &GdriveSim) {
    type Row = (String, String, Option<String>, String);
    let expected: BTreeMap<String, Row> = sim
        .files_in_tree()
        .into_iter()
        .filter_map(|f| {
            let row = (
                crate::gdrive::expected_version(&f)?,
                f.name,
                f.parent,
                crate::harness::words(&f.text),
            );
            Some((f.id, row))
        })
        .collect();
    let got: BTreeMap<String, Row> = env
        .sink_docs()
        .into_iter()
        .map(|d| {
            (
                d.id.0,
                (
                    d.version,
                    d.title,
                    d.parent.map(|p| p.0),
                    crate::harness::words(&d.content),
                ),
            )
        })
        .collect();
    crate::harness::assert_same_docs("the drive", &expected, &got);
}

/// Drive's sibling of seed 334: a folder is trashed (its files with it, with no
/// change of their own) while a run applies an edit to one of its files, and a
/// second folder leaves the synced tree after the plan. One quiet sync later
/// the sink holds neither folder's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_folders_trashed_or_moved_out_while_their_files_are_applied() {
    let (env, sim, director, mut paused) = drive_env_with_points().await;
    let root = sim.root_folder_id();
    let trashed = sim.create_folder("Trashed", &root).expect("folder");
    let moved = sim.create_folder("Moved", &root).expect("folder");
    let a = sim.create_file("a.txt", &trashed, "text/plain", "a").expect("file");
    let b = sim.create_file("b.txt", &moved, "text/plain", "b").expect("file");
    // Enough others that two deletions stay under the deletion guard's share.
    for n in 0..4 {
        sim.create_file(&format!("c{n}.txt"), &root, "text/plain", "c")
            .expect("file");
    }
    env.coordinator("c1");
    env.worker("w1");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_sink_matches_drive(&env, &sim);

    sim.update_file(&a, None, Some("a2"));
    sim.update_file(&b, None, Some("b2"));
    sync_with_change_at(&env, &director, &mut paused, When::PageStart(0), || {
        assert!(sim.trash_file(&trashed));
        assert!(sim.move_file(&moved, &sim.drive_root_id()));
    })
    .await;
    let quiet = env.sync(SyncMode::Incremental).await;
    assert_eq!(quiet.status, RunStatus::Completed, "{quiet:?}");
    assert_sink_matches_drive(&env, &sim);
    let noop = env.sync(SyncMode::Incremental).await;
    assert_eq!(noop.docs_processed, 0, "{noop:?}");
}
