//! Fencing across a coordinator failover (issue 8, point 1): every store a run
//! writes to learns its token when the run starts, so a job of a superseded run
//! can change neither the sink nor the state, even if the new run never writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tidemark::app::App;
use tidemark::queue::{self, streams};
use tidemark::simulators::files::{self, Stored};
use tidemark::sinks::{self, Sink, SinkDocument, Written};
use tidemark::state::{RunRecord, RunStatus};
use tidemark::types::{DocumentId, FencingToken, SourceId, SyncMode};
use tokio_util::sync::CancellationToken;

use crate::harness::nginx::write_with_mtime;
use crate::harness::points::{Director, When};
use crate::harness::{Env, Options, wait_until};

const FILES: &[&str] = &["a.md", "b.md", "c.md", "keep/d.md"];

fn seed(root: &Path) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for f in FILES {
        write_with_mtime(&root.join(f), &format!("body of {f}"), t0);
    }
}

/// A filesystem source seeded with [`FILES`], synced once in full (run 1) by a
/// coordinator and a worker that are stopped again: no process runs afterwards.
async fn synced_filesystem(base: Options) -> (tempfile::TempDir, Env) {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let toml = format!(
        "[[sources]]\nid = \"eng\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\n",
        dir.path().display().to_string()
    );
    let env = Env::start(Options {
        source_toml: Some(toml),
        ..base
    })
    .await;
    let c1 = env.coordinator("c1");
    let w1 = env.worker("w1");
    let first = env.sync(SyncMode::Full).await;
    assert_eq!((first.status, first.upserted), (RunStatus::Completed, 4), "{first:?}");
    c1.stop().await;
    w1.stop().await;
    (dir, env)
}

/// A full sync by a coordinator and a worker that stop after it; the sink equals the source.
async fn full_sync_then_stop(env: &Env) {
    let c1 = env.coordinator("c1");
    let w1 = env.worker("w1");
    assert_eq!(env.sync(SyncMode::Full).await.status, RunStatus::Completed);
    env.assert_sink_matches_source();
    c1.stop().await;
    w1.stop().await;
}

/// The sink's ids, sorted.
fn sink_ids(env: &Env) -> Vec<String> {
    env.sink_docs().into_iter().map(|d| d.id.0).collect()
}

/// The reproduction from issue 8: run 2 plans a deletion and its coordinator is
/// SIGKILLed; the file comes back unchanged; run 3 takes over (a higher token)
/// and finds nothing to do, so it writes nothing; then run 2's stale page job
/// reaches a worker. The sink must refuse it as the state does: afterwards the
/// sink still holds the document, equal to the source, and a later run agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_deletion_after_failover_never_reaches_the_sink() {
    stale_deletion_after_failover_never_reaches_the_sink_in(Options::default()).await;
}

/// [`stale_deletion_after_failover_never_reaches_the_sink`] with `base`
/// options (also run on a Redis Cluster).
pub(crate) async fn stale_deletion_after_failover_never_reaches_the_sink_in(base: Options) {
    let (dir, mut env) = synced_filesystem(base).await;
    let state = env.app.state();

    // Run 2 plans the deletion of a.md (no worker runs), then its coordinator dies.
    let original = std::fs::read(dir.path().join("a.md")).expect("a.md");
    std::fs::remove_file(dir.path().join("a.md")).expect("rm a.md");
    let pid = env.spawn_process(&["coordinator"]);
    let r2 = env.enqueue(SyncMode::Incremental, "test").await;
    env.wait_feed_read(&r2).await;
    let run2 = state
        .run_for_request(&env.source, &r2)
        .await
        .expect("state")
        .expect("run 2 started");
    let planned = state.run(&env.source, &run2).await.expect("state").expect("run 2");
    assert_eq!(planned.docs_processed, 1, "run 2 planned one deletion: {planned:?}");
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .expect("kill");

    // The file comes back exactly as it was: for the source nothing changed.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    write_with_mtime(
        &dir.path().join("a.md"),
        std::str::from_utf8(&original).expect("utf-8"),
        t0,
    );

    // Run 3 takes over run 2's request once it is idle, with a higher token,
    // and finds nothing to do: it writes nothing to the sink. Still no worker.
    let _c2 = env.coordinator("c2");
    let third = env.wait(&r2).await;
    assert_eq!(third.status, RunStatus::Completed, "{third:?}");
    assert_ne!(third.run_id, run2);
    assert!(third.token > planned.token, "{third:?} vs {planned:?}");
    assert_eq!(third.docs_processed, 0, "nothing changed at the source: {third:?}");

    // Now run 2's stale page job reaches a worker.
    let _w2 = env.worker("w2");
    let pool = env.app.pool.clone();
    let jobs = env.app.keys.jobs_for(&env.source);
    wait_until("the stale job was handled", Duration::from_secs(20), || {
        let (pool, jobs) = (pool.clone(), jobs.clone());
        async move {
            let g = streams::group_info(&pool, &jobs, queue::JOBS_GROUP)
                .await
                .expect("group");
            g.pending == 0 && g.lag == Some(0)
        }
    })
    .await;
    let mut expected: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(sink_ids(&env), expected, "the stale deletion reached the sink");
    // The refused page is counted in its own (stale) run.
    let stale = state.run(&env.source, &run2).await.expect("state").expect("run 2");
    assert_eq!(stale.pages_superseded, 1, "{stale:?}");

    // And the sink stays equal to the source through a later run.
    let fourth = env.sync(SyncMode::Incremental).await;
    assert_eq!(fourth.status, RunStatus::Completed, "{fourth:?}");
    assert_eq!(sink_ids(&env), expected);
}

/// A sink that really deletes `victim` and then fails, as if the worker died
/// between its sink write and its state write (the window the unsettled marks cover).
struct DiesAfterSinkDelete {
    inner: Arc<dyn Sink>,
    victim: DocumentId,
    tripped: Arc<AtomicBool>,
}

#[async_trait]
impl Sink for DiesAfterSinkDelete {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), sinks::Error> {
        self.inner.register_token(source, token).await
    }
    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, sinks::Error> {
        self.inner.upsert(doc).await
    }
    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, sinks::Error> {
        let written = self.inner.delete(source, id, token).await?;
        if *id == self.victim {
            self.tripped.store(true, Ordering::SeqCst);
            return Err(sinks::Error::Io {
                path: id.0.clone().into(),
                source: std::io::Error::other("injected: the worker dies after the sink write"),
            });
        }
        Ok(written)
    }
    async fn get(&self, source: &SourceId, id: &DocumentId) -> Result<Option<SinkDocument>, sinks::Error> {
        self.inner.get(source, id).await
    }
    async fn versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, sinks::Error> {
        self.inner.versions(source).await
    }
}

/// The same failover, with the crash one step later: run 2's worker deletes
/// a.md from the sink and dies before recording it in the state; run 2's
/// coordinator dies too, so the page is never redone by run 2. The file comes
/// back unchanged. Run 3 takes over: the state still says "a.md at its old
/// version", which matches the source, so a skip check that trusted the state
/// would leave the sink without a.md forever. The unsettled mark left by the
/// dead page makes run 3 write it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_write_without_state_write_is_redone_after_takeover() {
    let (dir, mut env) = synced_filesystem(Options::default()).await;
    let state = env.app.state();
    let mut expected: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    expected.sort();

    // Run 2: a.md is deleted; the worker deletes it from the sink and "dies".
    let original = std::fs::read(dir.path().join("a.md")).expect("a.md");
    std::fs::remove_file(dir.path().join("a.md")).expect("rm a.md");
    let tripped = Arc::new(AtomicBool::new(false));
    let dies = DiesAfterSinkDelete {
        inner: env.app.sink_for(&env.source).expect("the source's sink"),
        victim: DocumentId("a.md".into()),
        tripped: tripped.clone(),
    };
    let crashing = App {
        sinks: tidemark::sinks::routes::Routes::everywhere(Arc::new(dies), [env.source.clone()]),
        ..env.app.clone()
    }
    .worker("w-dies");
    let stop_crashing = CancellationToken::new();
    let crashing_run = tokio::spawn({
        let stop = stop_crashing.clone();
        async move { crashing.run(stop, Duration::from_millis(100)).await }
    });
    let pid = env.spawn_process(&["coordinator"]);
    let r2 = env.enqueue(SyncMode::Incremental, "test").await;
    wait_until(
        "run 2's worker wrote the sink and died",
        Duration::from_secs(20),
        || {
            let t = tripped.clone();
            async move { t.load(Ordering::SeqCst) }
        },
    )
    .await;
    stop_crashing.cancel();
    let _ = crashing_run.await;
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(!sink_ids(&env).contains(&"a.md".to_string()), "the sink write happened");
    let held = state
        .docs(&env.source, &[&DocumentId("a.md".into())])
        .await
        .expect("state");
    assert!(held[0].is_some(), "the state write did not");

    // a.md comes back exactly as it was.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    write_with_mtime(
        &dir.path().join("a.md"),
        std::str::from_utf8(&original).expect("utf-8"),
        t0,
    );

    // Run 3 takes over run 2's request (a higher token) before any worker
    // could redo run 2's page, and repairs the sink.
    let run2_token = state.current_fence(&env.source).await.expect("fence");
    let _c2 = env.coordinator("c2");
    wait_until("run 3 took its token", Duration::from_secs(30), || {
        let (state, source) = (state.clone(), env.source.clone());
        async move { state.current_fence(&source).await.expect("fence") > run2_token }
    })
    .await;
    let _w2 = env.worker("w2");
    let third = env.wait(&r2).await;
    assert_eq!(third.status, RunStatus::Completed, "{third:?}");
    assert_eq!(third.upserted, 1, "a.md written again: {third:?}");
    assert_eq!(sink_ids(&env), expected, "a.md must be back in the sink");
    assert!(state.unsettled(&env.source).await.expect("state").is_empty(), "settled");

    // And a later run neither loses it nor redoes it.
    let fourth = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (fourth.status, fourth.docs_processed),
        (RunStatus::Completed, 0),
        "{fourth:?}"
    );
    assert_eq!(sink_ids(&env), expected);
}

/// Found by the chaos test (seed 11): a run whose pages renamed or deleted a
/// document and whose coordinator died before the dependents step left its
/// dependents stale for good: the run that took over found the rename already
/// in the state, so nothing changed, and no breadcrumb or link title was
/// refreshed. The pages now record what they owe (`tm:{S}:owed:*`) in the
/// script that writes them; the next run refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_owed_by_a_run_that_died_are_refreshed_by_the_next() {
    let mut env = Env::start(Options {
        pages: 0,
        page_size: 1,
        ..Options::default()
    })
    .await;
    let parent = env.sim.create_page("Parent", None, "<p>p</p>");
    let child = env.sim.create_page("Child", Some(&parent), "<p>c</p>");
    env.sim.create_page("Grandchild", Some(&child), "<p>g</p>");
    let body = format!("<p>See <a href=\"/wiki/spaces/ENG/pages/{parent}\">the parent</a>.</p>");
    env.sim.create_page("Linker", None, &body);
    let gone = env.sim.create_page("Gone", None, "<p>soon gone</p>");
    env.sim.create_page("Under gone", Some(&gone), "<p>u</p>");
    let state = env.app.state();
    full_sync_then_stop(&env).await;

    // Run 2 renames the parent and deletes "Gone" (its child moves up); its
    // coordinator stops once the pages are planned.
    env.sim.update_page(&parent, Some("Parent renamed"), None);
    assert!(env.sim.delete_page(&gone));
    let pid = env.spawn_process(&["coordinator"]);
    let r2 = env.enqueue(SyncMode::Incremental, "test").await;
    env.wait_feed_read(&r2).await;
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("kill")
    };
    signal("-STOP");
    // A worker applies run 2's pages; the coordinator never gets to the dependents.
    let run2 = state
        .run_for_request(&env.source, &r2)
        .await
        .expect("state")
        .expect("run 2");
    let w2 = env.worker("w2");
    wait_until("run 2's pages were applied", Duration::from_secs(20), || {
        let (state, source, run2) = (state.clone(), env.source.clone(), run2.clone());
        async move {
            let r = state.run(&source, &run2).await.expect("state").expect("run 2");
            r.pages_done == r.pages_total
        }
    })
    .await;
    signal("-KILL");
    w2.stop().await;

    // Run 3 takes the request over; nothing has changed at the source since
    // run 2's pages, yet it must refresh what run 2 owed.
    let _c2 = env.coordinator("c2");
    let _w3 = env.worker("w3");
    let third = env.wait(&r2).await;
    assert_eq!(third.status, RunStatus::Completed, "{third:?}");
    assert_ne!(third.run_id, run2);
    env.assert_sink_matches_source();
    assert!(
        state.owed(&env.source).await.expect("state").is_empty(),
        "nothing owed any more"
    );
    let fourth = env.sync(SyncMode::Incremental).await;
    assert_eq!((fourth.docs_processed, fourth.dependents), (0, 0), "{fourth:?}");
}

/// Grand > Parent > Child, a file attached to Parent, synced in full; then
/// Parent is trashed (Child moves up under Grand without a new version, the
/// attachment goes with Parent), and run 2 (its coordinator a process)
/// applies only its first page, Parent's deletion: its next page, Child's or
/// the attachment's, waits at the director while the coordinator is SIGKILLed. `meanwhile` changes the source; then run 3 takes the request
/// over (its page of run 2, resumed, is refused as stale). Returns the env,
/// run 3, the attachment's id and Child's id.
async fn deletion_half_applied(meanwhile: impl FnOnce(&Env, &str)) -> (Env, RunRecord, String, String) {
    let mut env = Env::start(Options {
        pages: 0,
        page_size: 1,
        // A complete listing every second incremental run: run 3 has none.
        source_settings: "sweep_every = 2".into(),
        ..Options::default()
    })
    .await;
    let grand = env.sim.create_page("Grand", None, "<p>g</p>");
    let parent = env.sim.create_page("Parent", Some(&grand), "<p>p</p>");
    let child = env.sim.create_page("Child", Some(&parent), "<p>c</p>");
    let attachment = env
        .sim
        .attach(&parent, files::stored(Stored::Docx, 7, "Minutes"))
        .expect("attached");
    // An hour on: the search's overlap (minutes) no longer reports these
    // pages, as it would not in a space edited an hour ago.
    env.sim.set_clock_skew(chrono::Duration::hours(1));
    let (director, mut paused) = Director::new(true);
    let director = Arc::new(director);
    env.app = env.app.clone().with_hooks(director.clone());
    full_sync_then_stop(&env).await;

    assert!(env.sim.delete_page(&parent));
    let pid = env.spawn_process(&["coordinator"]);
    // Its plan, a page per document: Parent (the trash), then its held
    // children (Child to fetch again, the attachment to delete with it):
    // paused before the second page.
    director.arm(&env.source, When::PageStart(1));
    let r2 = env.enqueue(SyncMode::Incremental, "test").await;
    let _w2 = env.worker("w2");
    let second_page = tokio::time::timeout(Duration::from_secs(30), paused.recv())
        .await
        .expect("run 2 reaches its second page")
        .expect("director alive");
    let ids = sink_ids(&env);
    assert!(
        !ids.contains(&parent) && ids.contains(&attachment),
        "run 2 deleted Parent, not yet its attachment: {ids:?}"
    );
    let held_child = env.sink_docs().into_iter().find(|d| d.id.0 == child).expect("Child");
    assert_eq!(
        held_child.breadcrumb,
        vec!["Grand".to_owned(), "Parent".to_owned()],
        "not fetched again yet"
    );
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    let _ = env.process_exited(pid);
    meanwhile(&env, &parent);

    let _c2 = env.coordinator("c2");
    let third = env.wait(&r2).await;
    assert_eq!(third.status, RunStatus::Completed, "{third:?}");
    second_page.resume();
    (env, third, attachment, child)
}

/// Found by the cluster chaos test (seed 3): a run that died after deleting
/// a page, before deleting its attachments and fetching its child pages,
/// left them held under a parent that was gone, and the next run refreshed
/// their breadcrumbs through the gap: the attachment of the trashed page
/// stayed in the sink, and the child page kept its old parent with an empty
/// breadcrumb. The next run now fetches such children again: the attachment
/// is found gone and deleted, the child is found under Grand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_of_a_deletion_a_dead_run_half_applied_are_fetched_again() {
    let (env, third, attachment, child) = deletion_half_applied(|_, _| {}).await;
    env.assert_sink_matches_source();
    let ids = sink_ids(&env);
    assert!(
        !ids.contains(&attachment),
        "the trashed page's attachment is gone: {third:?}"
    );
    let moved = env
        .sink_docs()
        .into_iter()
        .find(|d| d.id.0 == child)
        .expect("Child kept");
    assert_eq!(moved.breadcrumb, vec!["Grand".to_owned()]);
    let fourth = env.sync(SyncMode::Incremental).await;
    assert_eq!((fourth.docs_processed, fourth.dependents), (0, 0), "{fourth:?}");
}

/// The same, with Parent restored before run 3: run 3 finds the attachment
/// again (under a Parent it does not hold yet: its breadcrumb stops short),
/// and the next complete listing brings Parent back. A document created
/// while children of it are already held owes them their breadcrumbs: that
/// run refreshes the attachment, which it did not write (its version is
/// unchanged), and the sink equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_comes_back_gives_its_held_children_their_breadcrumbs() {
    let (env, _third, attachment, _child) = deletion_half_applied(|env, parent| {
        assert!(env.sim.restore_page(parent));
    })
    .await;
    let listed = env.sync(SyncMode::Incremental).await;
    assert_eq!(listed.status, RunStatus::Completed, "{listed:?}");
    env.assert_sink_matches_source();
    let doc = env
        .sink_docs()
        .into_iter()
        .find(|d| d.id.0 == attachment)
        .expect("the attachment is back");
    assert_eq!(doc.breadcrumb, vec!["Grand".to_owned(), "Parent".to_owned()]);
    let next = env.sync(SyncMode::Incremental).await;
    assert_eq!((next.docs_processed, next.dependents), (0, 0), "{next:?}");
}

/// Found by the cluster chaos test (seed 1, the web source): a page resolved
/// its link to a page the same run creates with the title the plan
/// announced (a guess: that page's probe had failed); the target's own page,
/// running beside it, fetched the real title and was written first, when
/// nobody linked to it yet, so it owed no link refresh; the linker was then
/// written with the guess, and the run died before its dependents. Nothing
/// was left to correct the link. Now a page's write records, with it, that a
/// target it names with a title from the plan is owed a link-title refresh
/// when the state already holds that target under another title.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_written_with_a_stale_planned_title_owes_a_refresh() {
    use tidemark::state::{ChildrenIndex, DocState, DocWrite};

    let env = Env::start(Options::default()).await;
    let state = env.app.state();
    let token = FencingToken(1);
    let doc = |title: &str, links: &[&DocumentId]| DocState {
        version: "1".into(),
        content_hash: "00".repeat(32),
        title: title.into(),
        parent: None,
        links: links.iter().map(|l| (*l).clone()).collect(),
        access: None,
    };
    let put = |id: &DocumentId, new: DocState| DocWrite::Put {
        id: id.clone(),
        new,
        old: None,
    };
    let (target, linker, other) = (
        DocumentId("p432".into()),
        DocumentId("p272".into()),
        DocumentId("p7".into()),
    );

    // The target, created with its real title: nobody links to it yet, nothing owed.
    state
        .apply_docs(
            &env.source,
            token,
            &[put(&target, doc("Web 433", &[]))],
            ChildrenIndex::Kept,
            &[],
        )
        .await
        .expect("target");
    assert!(state.owed(&env.source).await.expect("owed").is_empty());

    // A linker naming it with the plan's title, which is its real one: nothing owed.
    state
        .apply_docs(
            &env.source,
            token,
            &[put(&other, doc("Other", &[&target]))],
            ChildrenIndex::Kept,
            &[(target.clone(), "Web 433".into())],
        )
        .await
        .expect("other");
    assert!(state.owed(&env.source).await.expect("owed").is_empty());

    // The linker written with the plan's guess: the target owes its linkers a refresh.
    state
        .apply_docs(
            &env.source,
            token,
            &[put(&linker, doc("Web 273", &[&target]))],
            ChildrenIndex::Kept,
            &[(target.clone(), "/s1/p432.html".into())],
        )
        .await
        .expect("linker");
    let owed = state.owed(&env.source).await.expect("owed");
    assert_eq!(owed.links, vec![target.clone()], "{owed:?}");
    assert!(owed.crumbs.is_empty(), "{owed:?}");
}
