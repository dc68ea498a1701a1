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

fn manager_of(nodes: &[RedisServer]) -> LockManager {
    manager(&nodes.iter().collect::<Vec<_>>())
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
    // Fresh nodes count once they have been up for a lock TTL (they might have
    // restarted empty); the TTL is short to keep the test quick.
    let ttl = Duration::from_secs(2);
    let t1 = acquire_eventually(&locks, &s, ttl).await;
    locks.release(&t1).await;
    // A lock granted by two mature nodes does not mean the third is mature:
    // the majority that survives n1 must be (n2 and n3), so wait for every node.
    wait_mature(&[&n1, &n2, &n3], ttl).await;
    n1.kill();
    let t2 = locks.acquire(&s, ttl).await.unwrap().expect("2 of 3 is a majority");
    assert!(t2.token > t1.token);
    assert!(
        locks.acquire(&s, ttl).await.unwrap().is_none(),
        "still exclusive with a node down"
    );
    locks.release(&t2).await;
    n2.kill();
    let err = locks.acquire(&s, ttl).await.unwrap_err();
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
    // The restarted nodes' grants count once they have been up for a lock TTL.
    let t3 = acquire_eventually(&locks, &s, ttl).await;
    assert!(t3.token > t2.token, "tokens never repeat after nodes come back");
}

/// Acquires `source` with `ttl`, retrying while nodes are recovering (young);
/// panics on any other outcome but "held" within 10 s.
/// Waits until every node has been up for `ttl` (Redis `uptime_in_seconds`):
/// from then on none of them is young, whichever of them a lock relies on.
async fn wait_mature(nodes: &[&RedisServer], ttl: Duration) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for n in nodes {
        loop {
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query(&mut n.conn())
                .unwrap_or_default();
            let uptime: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if uptime >= ttl.as_secs() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node not up for {ttl:?} within 20s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn acquire_eventually(locks: &LockManager, source: &SourceId, ttl: Duration) -> lock::Lease {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match locks.acquire(source, ttl).await {
            Ok(Some(lease)) => return lease,
            Ok(None) | Err(lock::Error::Recovering { .. }) => {}
            Err(e) => panic!("acquire failed: {e}"),
        }
        assert!(std::time::Instant::now() < deadline, "lock not granted within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets every node's token counter of `source` to `value`, far above the clock
/// term (now in ms * 1000, about 1.8e15), so that only the counters order the
/// tokens: what follows then proves the counter argument without the clock.
fn counters_above_the_clock(nodes: &[&RedisServer], source: &SourceId, value: u64) {
    for n in nodes {
        let _: () = redis::cmd("SET")
            .arg(Keys::new("tm").lock_tokens(source))
            .arg(value)
            .query(&mut n.conn())
            .unwrap();
    }
}

/// Three nodes without persistence. Each node in turn is restarted empty and
/// the lock taken again: every token is strictly greater than all before it,
/// both while the clock term orders them and with counters far above the
/// clock (where only the trusted majority of counters can order them).
#[tokio::test]
async fn tokens_increase_when_any_node_restarts_empty() {
    let mut nodes = [
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
    ];
    let s = src("eng");
    let ttl = Duration::from_secs(1);
    let mut last = {
        let locks = manager_of(&nodes);
        let l = acquire_eventually(&locks, &s, ttl).await;
        locks.release(&l).await;
        l.token
    };
    for big in [false, true] {
        if big {
            counters_above_the_clock(&nodes.iter().collect::<Vec<_>>(), &s, 8_000_000_000_000_000);
        }
        for i in 0..3 {
            nodes[i].restart_empty();
            let locks = manager_of(&nodes);
            let l = acquire_eventually(&locks, &s, ttl).await;
            locks.release(&l).await;
            assert!(
                l.token > last,
                "node {i} restarted empty (counters above the clock: {big}):\nbefore: {last}\nafter:  {}",
                l.token
            );
            if big {
                assert!(
                    l.token.0 > 8_000_000_000_000_000,
                    "ordered by the counters: {}",
                    l.token
                );
            }
            last = l.token;
        }
    }
}

/// Two nodes restarted empty one after the other, with counters above the
/// clock so that the counters alone must order the tokens: still increasing.
#[tokio::test]
async fn tokens_increase_when_two_nodes_restart_empty_in_sequence() {
    let mut nodes = [
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
    ];
    let s = src("eng");
    let take = async |nodes: &[RedisServer; 3]| {
        let locks = manager_of(nodes);
        let l = acquire_eventually(&locks, &s, Duration::from_secs(1)).await;
        locks.release(&l).await;
        l.token
    };
    let mut tokens = vec![take(&nodes).await];
    counters_above_the_clock(&nodes.iter().collect::<Vec<_>>(), &s, 8_000_000_000_000_000);
    tokens.push(take(&nodes).await);
    nodes[0].restart_empty();
    tokens.push(take(&nodes).await);
    nodes[1].restart_empty();
    tokens.push(take(&nodes).await);
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "{tokens:?}");
    assert!(
        tokens[3].0 > 8_000_000_000_000_000,
        "ordered by the counters: {tokens:?}"
    );
}

/// Every node restarted empty at once (total loss): the clock term keeps the
/// next token above every earlier one.
#[tokio::test]
async fn tokens_increase_after_every_node_restarts_empty() {
    let mut nodes = [
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
    ];
    let s = src("eng");
    let locks = manager_of(&nodes);
    let before = acquire_eventually(&locks, &s, Duration::from_secs(1)).await;
    locks.release(&before).await;
    for n in nodes.iter_mut() {
        n.restart_empty();
    }
    let locks = manager_of(&nodes);
    let after = acquire_eventually(&locks, &s, Duration::from_secs(1)).await;
    assert!(
        after.token > before.token,
        "before: {}\nafter:  {}",
        before.token,
        after.token
    );
}

/// The example: a token written back only to {A, B} (C was down),
/// then A restarts empty and B goes down. The majority {A, C} has never seen
/// that token (C's counter is older), yet the next token is greater: A is
/// not trusted after its restart, so the token is ordered by the clock term.
#[tokio::test]
async fn token_known_only_to_a_lost_majority_is_still_exceeded() {
    let mut nodes = [
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
    ];
    let s = src("eng");
    // Long enough to outlast the paused node's timeouts inside one attempt.
    let ttl = Duration::from_secs(3);
    let t0 = acquire_eventually(&manager_of(&nodes), &s, ttl).await;
    manager_of(&nodes).release(&t0).await;
    nodes[2].pause();
    let locks = manager_of(&nodes);
    let t1 = acquire_eventually(&locks, &s, ttl).await;
    locks.release(&t1).await;
    nodes[2].resume();
    let c_counter: u64 = redis::cmd("GET")
        .arg(Keys::new("tm").lock_tokens(&s))
        .query(&mut nodes[2].conn())
        .unwrap();
    assert!(c_counter < t1.token.0, "C never saw t1: {c_counter} vs {}", t1.token);
    nodes[0].restart_empty();
    nodes[1].kill();
    let t2 = acquire_eventually(&manager_of(&nodes), &s, ttl).await;
    assert!(t2.token > t1.token, "t1: {}\nt2: {}", t1.token, t2.token);
}

/// The classic Redlock hazard: a lock held on {A, B} (C was down); A restarts
/// empty and C comes back, so A and C would both grant it to someone else.
/// A's grant does not count while A is younger than the lock TTL, so the
/// second acquirer is refused with `Recovering` while the lease is valid.
#[tokio::test]
async fn restarted_empty_node_cannot_grant_a_held_lock_twice() {
    let mut nodes = [
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
        RedisServer::start_ephemeral(),
    ];
    let s = src("eng");
    let ttl = Duration::from_secs(3);
    // Fresh nodes are young too: let them come of age first (all of them: the
    // lock below must be granted by A and B alone).
    let first = acquire_eventually(&manager_of(&nodes), &s, ttl).await;
    manager_of(&nodes).release(&first).await;
    wait_mature(&[&nodes[0], &nodes[1], &nodes[2]], ttl).await;
    nodes[2].pause();
    let holder = manager_of(&nodes)
        .acquire(&s, ttl)
        .await
        .unwrap()
        .expect("A and B grant");
    nodes[2].resume();
    nodes[0].restart_empty();
    let other = manager_of(&nodes);
    while std::time::Instant::now() < holder.valid_until {
        match other.acquire(&s, ttl).await {
            Err(lock::Error::Recovering {
                young: 1, quorum: 2, ..
            }) => {}
            r => panic!("the lock is held elsewhere until {:?}: got {r:?}", holder.valid_until),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let next = acquire_eventually(&other, &s, ttl).await;
    assert!(next.token > holder.token);
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
    stale_token_writes_are_refused_in(Env::start(Options::default()).await).await;
}

/// [`stale_token_writes_are_refused_everywhere`] in `env` (also run on a Redis Cluster).
pub(crate) async fn stale_token_writes_are_refused_in(env: Env) {
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
        links: vec![],
        access: None,
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
        schema_version: tidemark::sinks::SCHEMA_VERSION,
        source: s.clone(),
        id: id.clone(),
        title: "T".into(),
        breadcrumb: vec![],
        parent: None,
        version: "1".into(),
        content: "new".into(),
        about: tidemark::sinks::About::default(),
        permissions: Default::default(),
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
                ..DocMeta::default()
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
