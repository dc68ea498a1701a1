//! Schedules across coordinator replicas (issue 12.6): many scheduled
//! sources on two coordinators, each due time served once, the runs spread
//! over the period and over both replicas, no source starved.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tidemark::queue::schedule;
use tidemark::state::RunStatus;
use tidemark::types::SourceId;

use crate::harness::{Env, Options, scheduled_filesystem_sources, wait_until};

const SOURCES: usize = 40;
const PERIOD_SECS: u64 = 4;

/// Forty filesystem sources, each scheduled every 4 s, on two coordinators
/// and two workers: each source syncs at once when first scheduled, then on
/// its own phase of the period; after a few periods every source has run
/// more than once, none more often than its due times allow (no due time
/// served twice), both replicas ran a fair share, and the due times are
/// spread over the period rather than bunched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_scheduled_sources_spread_over_two_coordinators() {
    let files = tempfile::tempdir().expect("tmp");
    std::fs::write(files.path().join("note.md"), "# Note\n\nbody\n").expect("write");
    let ids: Vec<String> = (0..SOURCES).map(|i| format!("team-{i:02}")).collect();
    let more_sources = scheduled_filesystem_sources(&ids, files.path(), PERIOD_SECS);
    let env = Env::start(Options {
        pages: 1,
        more_sources,
        sync: "max_concurrent_runs = 8".into(),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let registered_ms = epoch_ms();
    env.coordinator("c1");
    env.coordinator("c2");
    env.worker("w1");
    env.worker("w2");
    let state = env.app.state();
    let sources: Vec<SourceId> = ids.iter().map(|id| SourceId::new(id).expect("id")).collect();

    // Three periods, then every source must have completed at least twice.
    tokio::time::sleep(Duration::from_secs(3 * PERIOD_SECS)).await;
    wait_until("every source completed twice", Duration::from_secs(60), || {
        let (state, sources) = (state.clone(), sources.clone());
        async move {
            for s in &sources {
                let runs = state.recent_runs(s, 50).await.unwrap_or_default();
                if runs.iter().filter(|r| r.status == RunStatus::Completed).count() < 2 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let elapsed = started.elapsed();

    // One first request, then at most one per point of the source's grid
    // (phase + k x period) since it was registered: more would mean a due
    // time served twice (two replicas both enqueueing it, or the first run
    // enqueued twice). A request that found its source busy is served by a
    // follow-up run.
    let period_ms = (PERIOD_SECS * 1000) as i64;
    let mut by_coordinator: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for s in &sources {
        let runs = state.recent_runs(s, 50).await.expect("runs");
        // Read after the runs: the schedules go on while the sources are
        // read, and the bound must cover every due time a counted run served.
        let now_ms = epoch_ms();
        // A follow-up run's first request id is its own, not a schedule's.
        let requests: std::collections::HashSet<&String> = runs
            .iter()
            .flat_map(|r| r.request_ids.iter().skip(usize::from(r.requested_by == "follow-up")))
            .collect();
        let phase = i64::from(fnv1a(s.as_str())) % period_ms;
        let grid = |t: i64| (t - phase).div_euclid(period_ms);
        let most = 1 + grid(now_ms) - grid(registered_ms);
        assert!(
            requests.len() as i64 <= most,
            "{s}: {} requests in {elapsed:?}, at most {most} due times: {runs:?}",
            requests.len()
        );
        for r in &runs {
            assert!(["schedule", "follow-up"].contains(&r.requested_by.as_str()), "{r:?}");
            *by_coordinator.entry(r.coordinator.clone()).or_default() += 1;
            total += 1;
        }
    }
    eprintln!("schedules: {total} runs of {SOURCES} sources in {elapsed:?}, by coordinator {by_coordinator:?}");
    for replica in ["c1", "c2"] {
        let share = by_coordinator.get(replica).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            share >= 0.25,
            "{replica} ran {share:.2} of the runs: {by_coordinator:?}"
        );
    }

    // Spread: the next due times fall all over the period, not in one burst.
    let due = schedule::next_due(&env.app.pool, &env.app.keys)
        .await
        .expect("due times");
    assert_eq!(due.len(), SOURCES, "every scheduled source is on the schedule: {due:?}");
    let mut quarters = [0usize; 4];
    for (_, at) in &due {
        quarters[(at.timestamp_millis().rem_euclid(period_ms) * 4 / period_ms) as usize] += 1;
    }
    assert!(
        quarters.iter().all(|q| *q <= SOURCES / 2),
        "due times bunched in the period's quarters: {quarters:?}"
    );
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// The phase hash the schedule uses (32-bit FNV-1a of the source id), written
/// out here from its definition rather than borrowed from the code under test.
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// A coordinator that registered a new scheduled source (or claimed a due
/// time) and died before enqueueing its request does not lose that run: the
/// claim's lease runs out and the next coordinator claims and enqueues it,
/// though the source's next due time is an hour away. Here the dead
/// coordinator is played by calling `register` directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_coordinator_died_is_enqueued_by_the_next() {
    let files = tempfile::tempdir().expect("tmp");
    std::fs::write(files.path().join("note.md"), "# Note\n").expect("write");
    let env = Env::start(Options {
        pages: 1,
        more_sources: format!(
            "[[sources]]\nid = \"hourly\"\nkind = \"filesystem\"\nschedule_every_secs = 3600\n\
             [sources.settings]\nroot = {:?}\n",
            files.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    let hourly = SourceId::new("hourly").expect("id");
    let registered = schedule::register(
        &env.app.pool,
        &env.app.keys,
        &[(hourly.clone(), Duration::from_secs(3600))],
    )
    .await
    .expect("register");
    assert_eq!(
        registered,
        vec![hourly.clone()],
        "its first run is ours to enqueue, and we die"
    );
    let died = Instant::now();

    env.coordinator("c1");
    env.worker("w1");
    let state = env.app.state();
    wait_until(
        "the first run of the source enqueued by another coordinator",
        schedule::CLAIM_LEASE + Duration::from_secs(30),
        || {
            let (state, hourly) = (state.clone(), hourly.clone());
            async move {
                let runs = state.recent_runs(&hourly, 5).await.unwrap_or_default();
                runs.iter()
                    .any(|r| r.status == RunStatus::Completed && r.requested_by == "schedule")
            }
        },
    )
    .await;
    assert!(
        died.elapsed() >= schedule::CLAIM_LEASE,
        "enqueued only once the dead claim's lease ran out ({:?})",
        died.elapsed()
    );
    let runs = state.recent_runs(&hourly, 5).await.expect("runs");
    assert_eq!(runs.len(), 1, "one run for that first due time: {runs:?}");
}

/// A source that left every coordinator's config leaves the schedule: once
/// no coordinator has registered it for `FORGET_AFTER`, its next due time
/// forgets it instead of being claimed (and dropped by its claimer) every
/// period forever. A source still registered is claimed as before, and a
/// forgotten one registered again is new to the schedule (its first run at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_no_coordinator_registers_leaves_the_schedule() {
    let env = Env::start(Options {
        pages: 1,
        ..Options::default()
    })
    .await;
    let (kept, gone) = (SourceId::new("kept").expect("id"), SourceId::new("gone").expect("id"));
    let every = Duration::from_secs(1);
    let (pool, keys) = (&env.app.pool, &env.app.keys);
    let first = schedule::register(pool, keys, &[(kept.clone(), every), (gone.clone(), every)])
        .await
        .expect("register");
    assert_eq!(first.len(), 2, "both new: {first:?}");
    schedule::enqueued(pool, keys, &first)
        .await
        .expect("first runs enqueued");

    // `gone` was last registered long ago: as though every replica's config dropped it.
    let [.., registered] = keys.schedule();
    let past = (epoch_ms() - schedule::FORGET_AFTER.as_millis() as i64 - 1_000).to_string();
    let _: i64 = redis::cmd("HSET")
        .arg(&registered)
        .arg("gone")
        .arg(past)
        .query(&mut env.redis.conn())
        .expect("HSET");

    // Each falls due on its own phase of the period: claim until both have.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut claimed = Vec::new();
    let mut due = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        claimed.extend(schedule::claim_due(pool, keys, 100).await.expect("claim"));
        due = schedule::next_due(pool, keys)
            .await
            .expect("next due")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        if claimed.contains(&kept) && !due.contains(&gone) {
            break;
        }
    }
    assert!(
        !claimed.is_empty() && claimed.iter().all(|s| *s == kept),
        "only the registered source is claimed: {claimed:?}"
    );
    assert_eq!(due, vec![kept.clone()], "gone left the due times");
    let [_, every_key, phase, claimed_key, registered] = keys.schedule();
    let mut conn = env.redis.conn();
    for key in [every_key, phase, registered] {
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query(&mut conn).expect("HKEYS");
        assert_eq!(fields, vec!["kept".to_owned()], "{key}");
    }
    let claims: Vec<String> = redis::cmd("ZRANGE")
        .arg(&claimed_key)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("ZRANGE");
    assert_eq!(claims, vec!["kept".to_owned()], "{claimed_key}: gone is not claimed");

    let again = schedule::register(pool, keys, &[(gone.clone(), every)])
        .await
        .expect("register");
    assert_eq!(again, vec![gone], "registered again, it is new: its first run at once");
}
