//! The engine on a 3-primary Redis Cluster the harness starts itself
//! (`redis-server --cluster-enabled yes` ×3, `redis-cli --cluster create`),
//! unchanged: the problem statement's sync, the lock's exclusion, fencing, and
//! a worker's death mid-page, a coordinator's death and takeover with a stale
//! deletion in flight, a primary killed and replaced by its replica between
//! runs and in the middle of one (the convergence test has a cluster variant too).
//! Every multi-key script and transaction touches one hash slot (a source's
//! keys share its `{source}` tag), or the cluster would refuse it (CROSSSLOT).

use std::sync::Arc;
use std::time::Duration;

use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::points::{Director, When};
use crate::harness::redis_server::RedisCluster;
use crate::harness::{Env, Options, RedisServer, wait_until};

fn on_a_cluster(opts: Options) -> Options {
    Options { cluster: true, ..opts }
}

/// Full sync, then 3 created, 2 updated, 1 deleted: the incremental run
/// processes exactly those and the sink equals the source, with the page jobs
/// on one of three job streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_statement_on_a_cluster() {
    let env = Env::fleet(on_a_cluster(Options {
        pages: 500,
        page_size: 50,
        queue: "job_partitions = 3".into(),
        ..Options::default()
    }))
    .await;
    let nodes = std::iter::once(&env.redis).chain(&env.cluster_nodes);
    let slots: Vec<String> = nodes
        .map(|n| {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut n.conn())
                .expect("CLUSTER INFO")
        })
        .collect();
    assert!(slots.iter().all(|i| i.contains("cluster_state:ok")), "{slots:?}");
    crate::sync::problem_statement_in(env).await;
}

/// Writes under a superseded token are refused by the state (on the cluster),
/// the sink and the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_token_writes_are_refused_on_a_cluster() {
    crate::lock::stale_token_writes_are_refused_in(Env::start(on_a_cluster(Options::default())).await).await;
}

/// While one holder has a source's lock nobody else gets it; released, the
/// next holder gets a greater token. Two runs requested at once never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_on_a_cluster() {
    let env = Env::start(on_a_cluster(Options::default())).await;
    let locks = &env.app.locks;
    let a = locks
        .acquire(&env.source, Duration::from_secs(5))
        .await
        .expect("the cluster answers")
        .expect("a free lock");
    assert!(
        locks
            .acquire(&env.source, Duration::from_secs(5))
            .await
            .expect("answers")
            .is_none()
    );
    locks.release(&a).await;
    let b = locks
        .acquire(&env.source, Duration::from_secs(5))
        .await
        .expect("answers")
        .expect("free again");
    assert!(b.token > a.token);
    locks.release(&b).await;

    env.coordinator("c1");
    env.coordinator("c2");
    env.worker("w1");
    let first = env.enqueue(SyncMode::Full, "a").await;
    let second = env.enqueue(SyncMode::Full, "b").await;
    let (r1, r2) = (env.wait(&first).await, env.wait(&second).await);
    let overlap = r1.run_id != r2.run_id && r1.started_at < r2.ended_at && r2.started_at < r1.ended_at;
    assert!(!overlap, "two runs of one source overlapped: {r1:?} {r2:?}");
    env.assert_sink_matches_source();
}

/// A worker process SIGKILLed mid-page: its page stays pending on the
/// cluster, another worker claims it once idle, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_page_is_redelivered_on_a_cluster() {
    crate::queue::worker_killed_mid_page_is_redelivered_in(Env::start(on_a_cluster(Options::default())).await).await;
}

/// A coordinator SIGKILLed after planning a deletion, and a takeover with a
/// higher token: the stale deletion reaches neither the sink nor the state
/// (`failover::stale_deletion_after_failover_never_reaches_the_sink`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_deletion_after_failover_on_a_cluster() {
    crate::failover::stale_deletion_after_failover_never_reaches_the_sink_in(on_a_cluster(Options::default())).await;
}

/// A primary killed between runs (SIGKILL) on a cluster with a replica per
/// primary: the cluster promotes its replica, and the next run's lock, state
/// reads and writes and checkpoint go to it. The primary killed holds the
/// source's keys (its `{eng}` slot) and is the node `url` names (the config's
/// `cluster_seeds` name the others). An incremental run after the failover
/// syncs creations, an edit and a deletion, and the sink equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_between_runs_is_replaced_and_nothing_is_lost() {
    let mut env = Env::fleet(on_a_cluster(Options {
        cluster_replicas: true,
        ..Options::default()
    }))
    .await;
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");

    let (slot, primary) = source_primary(&env);
    let observer = {
        let victim = node(&mut env, &primary);
        // The replica has every write of the last run before the kill
        // (replication is asynchronous; this test is about the failover, not
        // about that window: see the next test).
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(10_000)
            .query(&mut victim.conn())
            .expect("WAIT");
        assert_eq!(acked, 1, "the replica acknowledged the primary's writes");
        victim.kill();
        env.cluster_nodes
            .iter()
            .find(|n| !n.url().ends_with(&primary))
            .expect("another node")
            .url()
    };
    await_promotion(&observer, slot, &primary).await;

    let pages = env.sim.pages();
    env.sim
        .create_page("After failover A", Some(&pages[1].id), "<p>new</p>");
    env.sim.create_page("After failover B", None, "<p>new</p>");
    env.sim
        .update_page(&pages[5].id, None, Some("<p>edited after the failover</p>"));
    let leaf = pages
        .iter()
        .rev()
        .find(|p| !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .expect("a leaf page");
    env.sim.delete_page(&leaf.id);
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert_eq!((inc.upserted, inc.deleted), (3, 1), "{inc:?}");
    env.assert_sink_matches_source();
}

/// The slot of `env`'s source keys and the `host:port` of its primary.
fn source_primary(env: &Env) -> (u16, String) {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(env.app.keys.docs(&env.source))
        .query(&mut env.redis.conn())
        .expect("CLUSTER KEYSLOT");
    let primary = RedisCluster::primary_of(&env.redis, slot).expect("the slot is served");
    (slot, primary)
}

/// The cluster node whose URL ends with `addr` (`host:port`).
fn node<'a>(env: &'a mut Env, addr: &str) -> &'a mut RedisServer {
    std::iter::once(&mut env.redis)
        .chain(env.cluster_nodes.iter_mut())
        .find(|n| n.url().ends_with(addr))
        .unwrap_or_else(|| panic!("no node at {addr}"))
}

/// The `host:port` of the replica of the primary at `primary` (`host:port`).
fn replica_of(env: &Env, primary: &str) -> String {
    let port = primary.rsplit(':').next().expect("host:port");
    replicas(env)
        .into_iter()
        .find(|(_, primary_port)| primary_port == port)
        .map(|(replica, _)| replica)
        .expect("the primary has a replica")
}

/// Every replica's `host:port`, with its primary's port, as `INFO replication` says.
fn replicas(env: &Env) -> Vec<(String, String)> {
    std::iter::once(&env.redis)
        .chain(&env.cluster_nodes)
        .filter_map(|n| {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut n.conn())
                .unwrap_or_default();
            let primary_port = info.lines().find_map(|l| l.trim().strip_prefix("master_port:"))?;
            info.contains("role:slave").then(|| {
                let addr = n.url().rsplit('/').next().unwrap_or_default().to_owned();
                (addr, primary_port.to_owned())
            })
        })
        .collect()
}

/// Waits until `observer` (a node's URL) sees the cluster whole again with
/// `slot` served by another primary than `old`.
async fn await_promotion(observer: &str, slot: u16, old: &str) {
    wait_until(
        "a replica promoted in the killed primary's place",
        Duration::from_secs(60),
        || async move {
            let Ok(mut c) = redis::Client::open(observer).and_then(|c| c.get_connection()) else {
                return false;
            };
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
            let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).unwrap_or_default();
            info.contains("cluster_state:ok") && RedisCluster::primary_in(&slots, slot).is_some_and(|p| p != old)
        },
    )
    .await;
}

/// A failover in the middle of a run loses what its primary had not yet
/// replicated; with `[redis] wait_replicas`, none of that may be a sink
/// write the state never heard of. The source's replica is SIGSTOPped, and
/// its link to the primary cut, just before the run's page starts (so
/// nothing the primary writes from then on reaches it): the page's unsettled marks are not
/// acknowledged in time, so it does not touch the sink. (Without that wait
/// the page wrote the sink, and the state on the primary alone, and the run
/// completed there; after the failover the state had never held the new
/// page, so its deletion at the source deleted nothing and the sink kept it.)
/// Then the primary is killed, the replica resumed and promoted, the old
/// primary restarted (it rejoins as a replica), and the page created before
/// the failover deleted at the source: the next runs leave the sink equal to
/// the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_during_a_run_leaves_no_sink_write_the_state_lost() {
    let mut env = Env::start(on_a_cluster(Options {
        cluster_replicas: true,
        more_redis: "wait_replicas = 1\nwait_replicas_ms = 500".into(),
        ..Options::default()
    }))
    .await;
    let (director, mut paused) = Director::new(true);
    let director = Arc::new(director);
    env.app = env.app.clone().with_hooks(director.clone());
    env.coordinator("c1");
    env.worker("w1");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    let (slot, primary) = source_primary(&env);
    let replica = replica_of(&env, &primary);

    let created = env.sim.create_page("Written before the failover", None, "<p>new</p>");
    director.arm(&env.source, When::PageStart(0));
    env.enqueue(SyncMode::Incremental, "failover-test").await;
    let pause = tokio::time::timeout(Duration::from_secs(30), paused.recv())
        .await
        .expect("the run reaches its page")
        .expect("director alive");
    // Stopped, the replica would still find the primary's next writes in its
    // socket's receive buffer when resumed; cut off first, it cannot.
    node(&mut env, &replica).pause();
    let cut: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut node(&mut env, &primary).conn())
        .expect("CLIENT KILL");
    assert_eq!(cut, 1, "the primary's one replica link is cut");
    pause.resume();

    // The run's page now waits for its marks to replicate (and says so in
    // the run's last error), or, without the wait, the run completes on the
    // primary alone: either way, what the primary holds is settled.
    let state = env.app.state();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runs = state.recent_runs(&env.source, 1).await.unwrap_or_default();
        let run = runs.into_iter().next().filter(|r| r.run_id != full.run_id);
        if run
            .as_ref()
            .is_some_and(|r| r.status.is_terminal() || r.last_error.contains("replica"))
        {
            eprintln!("before the failover: {run:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run neither waited nor ended: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    node(&mut env, &primary).kill();
    node(&mut env, &replica).resume();
    let observer = std::iter::once(&env.redis)
        .chain(&env.cluster_nodes)
        .map(|n| n.url())
        .find(|u| !u.ends_with(&primary) && !u.ends_with(&replica))
        .expect("a third node");
    await_promotion(&observer, slot, &primary).await;
    node(&mut env, &primary).restart();

    env.sim.delete_page(&created);
    let mut last = None;
    for _ in 0..3 {
        let run = env.sync(SyncMode::Incremental).await;
        let done = run.status == RunStatus::Completed;
        last = Some(run);
        if done {
            break;
        }
    }
    let last = last.expect("a run");
    assert_eq!(last.status, RunStatus::Completed, "{last:?}");
    env.assert_sink_matches_source();
}

/// With `wait_replicas = 1`, a shard whose replica is down holds back only
/// the sources whose keys it holds: the WAIT goes to the primary of the
/// source's slot. (Sent to the whole cluster, WAIT answers the fewest
/// acknowledgements of all primaries, and one stopped replica anywhere kept
/// every run from starting; that a stopped replica of the source's own shard
/// holds its runs and pages back is the test above and
/// `redis_faults::a_raised_fence_reaches_a_replica_before_the_run_goes_on`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_on_another_shard_holds_no_source_back() {
    let mut env = Env::fleet(on_a_cluster(Options {
        cluster_replicas: true,
        more_redis: "wait_replicas = 1\nwait_replicas_ms = 500".into(),
        ..Options::default()
    }))
    .await;
    let (_, primary) = source_primary(&env);
    let (elsewhere, _) = replicas(&env)
        .into_iter()
        .find(|(_, primary_port)| !primary.ends_with(&format!(":{primary_port}")))
        .expect("a replica of another shard");
    node(&mut env, &elsewhere).pause();
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    env.assert_sink_matches_source();
    node(&mut env, &elsewhere).resume();
}
