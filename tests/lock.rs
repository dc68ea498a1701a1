//! The lock: mutual exclusion, expiry, Redlock majorities over real nodes, and
//! fencing: writes under a stale token are refused by the state store, the sink
//! and the worker.

use std::time::Duration;

use tidemark::db;
use tidemark::keys::Keys;
use tidemark::lock::fencing::StaleFence;
use tidemark::lock::{self, LockManager};
use tidemark::queue::jobs::{Action, JobItem, PageJob};
use tidemark::sinks::directory::DirectorySink;
use tidemark::sinks::{self, Sink, SinkDocument};
use tidemark::sources::DocMeta;
use tidemark::state::{self, DocState};
use tidemark::types::{DocumentId, FencingToken, RunId, SourceId};
use tidemark::worker::JobError;

use crate::harness::{Env, Options, RedisServer, wait_until};

fn manager(servers: &[&RedisServer]) -> LockManager {
    let pools = servers
        .iter()
        .map(|s| db::pool(&s.url(), 4, Duration::from_millis(500)).unwrap())
        .collect();
    LockManager::new(pools, Keys::new("tm"))
}

fn src(s: &str) -> SourceId {
    SourceId::new(s).unwrap()
}

/// While one holder has the lock nobody else gets it; after it expires the next
/// holder gets a strictly greater token; release lets the next one in at once.
#[tokio::test]
async fn lock_excludes_expires_and_tokens_increase() {
    let r = RedisServer::start();
    let locks = manager(&[&r]);
    let s = src("eng");
    let a = locks
        .acquire(&s, Duration::from_millis(300))
        .await
        .unwrap()
        .expect("free lock");
    assert!(locks.acquire(&s, Duration::from_secs(5)).await.unwrap().is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let b = loop {
        if let Some(b) = locks.acquire(&s, Duration::from_secs(5)).await.unwrap() {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "lock did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(b.token > a.token);
    let mut stale = a.clone();
    assert!(
        !locks.extend(&mut stale, Duration::from_secs(5)).await,
        "an expired lease cannot be extended"
    );
    locks.release(&a).await; // not the owner: must not free b's lock
    assert!(locks.acquire(&s, Duration::from_secs(5)).await.unwrap().is_none());
    locks.release(&b).await;
    let c = locks
        .acquire(&s, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("released");
    assert!(c.token > b.token);
}

/// Redlock over three nodes: one node down still grants (majority), tokens keep
/// increasing across the failure, and two nodes down refuse with NoQuorum.
#[tokio::test]
async fn redlock_majority_over_three_nodes() {
    let mut n1 = RedisServer::start();
    let mut n2 = RedisServer::start();
    let n3 = RedisServer::start();
    let locks = manager(&[&n1, &n2, &n3]);
    let s = src("eng");
    let t1 = locks.acquire(&s, Duration::from_secs(5)).await.unwrap().unwrap();
    locks.release(&t1).await;
    n1.kill();
    let t2 = locks
        .acquire(&s, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("2 of 3 is a majority");
    assert!(t2.token > t1.token);
    assert!(
        locks.acquire(&s, Duration::from_secs(5)).await.unwrap().is_none(),
        "still exclusive with a node down"
    );
    locks.release(&t2).await;
    n2.kill();
    let err = locks.acquire(&s, Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            lock::Error::NoQuorum {
                answered: 1,
                nodes: 3,
                quorum: 2,
                ..
            }
        ),
        "{err}"
    );
    n1.restart();
    n2.restart();
    let t3 = locks.acquire(&s, Duration::from_secs(5)).await.unwrap().unwrap();
    assert!(t3.token > t2.token, "tokens never repeat after nodes come back");
}

/// A paused (SIGSTOP) Redis makes acquisition fail within the response timeout
/// instead of hanging; after SIGCONT the lock works again.
#[tokio::test]
async fn paused_redis_fails_fast_and_recovers() {
    let r = RedisServer::start();
    let locks = manager(&[&r]);
    let s = src("eng");
    r.pause();
    let started = std::time::Instant::now();
    assert!(locks.acquire(&s, Duration::from_secs(5)).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    r.resume();
    wait_until("lock works after resume", Duration::from_secs(10), || async {
        matches!(locks.acquire(&s, Duration::from_secs(5)).await, Ok(Some(_)))
    })
    .await;
}

/// Once a newer token is registered, the state store, the sink and the worker
/// all refuse writes carrying the older one, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_token_writes_are_refused_everywhere() {
    let env = Env::start(Options::default()).await;
    let state = env.app.state();
    let s = env.source.clone();
    let old = env
        .app
        .locks
        .acquire(&s, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    state.register_token(&s, old.token).await.unwrap();
    env.app.locks.release(&old).await;
    let new = env
        .app
        .locks
        .acquire(&s, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    state.register_token(&s, new.token).await.unwrap();

    let doc = DocState {
        version: "1".into(),
        content_hash: "h".into(),
        title: "T".into(),
        parent: None,
        breadcrumb: vec![],
        links: vec![],
        token: old.token,
        synced_at: chrono::Utc::now(),
    };
    let id = DocumentId("1".into());
    let err = state.put_doc(&s, old.token, &id, &doc).await.unwrap_err();
    assert!(
        matches!(err, state::Error::StaleFence(StaleFence { ours, current }) if ours == old.token && current == new.token),
        "{err}"
    );
    assert!(matches!(
        state.commit_checkpoint(&s, old.token, &Default::default()).await,
        Err(state::Error::StaleFence(_))
    ));
    assert!(
        state.docs(&s, &[&id]).await.unwrap()[0].is_none(),
        "nothing was written"
    );

    let sink = DirectorySink::new(env.sink_dir.path());
    let mut sdoc = SinkDocument {
        source: s.clone(),
        id: id.clone(),
        title: "T".into(),
        breadcrumb: vec![],
        parent: None,
        version: "1".into(),
        content: "new".into(),
        content_hash: "h1".into(),
        fencing_token: new.token,
        links: vec![],
    };
    sink.upsert(&sdoc).await.unwrap();
    sdoc.content = "stale".into();
    sdoc.content_hash = "h2".into();
    sdoc.fencing_token = old.token;
    assert!(matches!(sink.upsert(&sdoc).await, Err(sinks::Error::StaleFence(_))));
    assert!(matches!(
        sink.delete(&s, &id, old.token).await,
        Err(sinks::Error::StaleFence(_))
    ));
    assert_eq!(sink.read_all(&s).unwrap()[0].content, "new");

    // A job of the superseded run, still in flight, is refused as a whole.
    let page = env.sim.pages()[0].clone();
    let job = PageJob {
        run: RunId("old-run".into()),
        source: s.clone(),
        token: old.token,
        page: 0,
        items: vec![JobItem {
            meta: DocMeta {
                id: DocumentId(page.id.clone()),
                version: page.version.to_string(),
                title: page.title.clone(),
                parent: None,
                modified_at: None,
            },
            action: Action::Upsert,
            breadcrumb: vec![],
        }],
    };
    let worker = env.app.worker("w");
    let source = env.app.sources[&s].clone();
    let calls_before = env.sim.total_calls();
    let r = worker.apply(&job, source.as_ref(), &Default::default()).await;
    assert!(matches!(r, Err(JobError::Stale(_))), "{r:?}");
    assert_eq!(
        env.sim.total_calls(),
        calls_before,
        "the fence is checked before fetching: a stale job spends none of the source's quota"
    );
    assert!(state.docs(&s, &[&DocumentId(page.id)]).await.unwrap()[0].is_none());
    let _ = FencingToken(0);
}

/// A run whose lock cannot be extended (its lock node paused with SIGSTOP)
/// stops with "lock lost" and commits no checkpoint; once the node is back, the
/// next run syncs what the failed one did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_that_loses_its_lock_commits_nothing() {
    use tidemark::state::RunStatus;
    use tidemark::types::SyncMode;
    let env = Env::start(Options {
        lock_nodes: 1,
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    let w1 = env.worker("w1");
    env.sync(SyncMode::Full).await;
    w1.stop().await;
    let state = env.app.state();
    let before = state.checkpoint(&env.source).await.unwrap();
    let pages = env.sim.pages();
    env.sim.update_page(&pages[2].id, None, Some("<p>new</p>"));
    let request = env.enqueue(SyncMode::Incremental, "test").await;
    env.wait_feed_read(&request).await;
    env.lock_nodes[0].pause();
    let failed = env.wait(&request).await;
    env.lock_nodes[0].resume();
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    assert!(failed.last_error.contains("lock"), "{failed:?}");
    assert_eq!(
        state.checkpoint(&env.source).await.unwrap(),
        before,
        "nothing committed"
    );
    env.worker("w2");
    let next = env.sync(SyncMode::Incremental).await;
    assert_eq!(next.status, RunStatus::Completed, "{next:?}");
    env.assert_sink_matches_source();
}
