//! Every per-run key expires (issue 8, point 7): a run's record, its done set,
//! seen set and wake list, and any record a late or stale writer touches after
//! the run ended, so Redis does not fill with keys nobody deletes.

use tidemark::state::{RunCounter, RunUpdate};
use tidemark::types::{FencingToken, RunId, SyncMode};

use crate::harness::{Env, Options};

/// Keys of the test source's runs that have no TTL.
fn run_keys_without_ttl(env: &Env) -> Vec<String> {
    let mut conn = env.redis.conn();
    let pattern = format!("{}*", env.app.keys.run(&env.source, &RunId(String::new())));
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).expect("KEYS");
    assert!(!keys.is_empty(), "no run keys matched {pattern}");
    keys.into_iter()
        .filter(|k| redis::cmd("TTL").arg(k).query::<i64>(&mut conn).expect("TTL") < 0)
        .collect()
}

/// After real runs, and after late writes to records that no longer exist (a
/// counter from a redelivered page, an error from a stale worker), every key
/// of the source's runs has a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_per_run_key_expires() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.sync(SyncMode::Incremental).await;

    let state = env.app.state();
    let gone = RunId("expired-run".into());
    state
        .add_run_counter(&env.source, &gone, RunCounter::ApiCalls, 3)
        .await
        .expect("counter");
    let fence = state.current_fence(&env.source).await.expect("fence");
    let late = RunId("late-run".into());
    state
        .update_run(&env.source, &late, FencingToken(fence.0), &RunUpdate::error("late"))
        .await
        .expect("update");
    assert_eq!(run_keys_without_ttl(&env), Vec::<String>::new());
}
