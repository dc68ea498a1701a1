//! Randomized convergence: after any sequence of source changes, once the
//! sources go quiet and one more incremental sync completes, the sink equals
//! every source exactly.
//!
//! One redis-server and one nginx serve the whole test. Each seed gets fresh
//! simulators (Confluence, Drive) on free ports, a fresh directory tree, its own
//! nginx subdirectory with a sitemap, a fresh sink, its own Redis namespace
//! (`s{seed}`), and an `App` with four sources, one coordinator and two workers
//! in-process. A deterministic PRNG seeded by the seed drives everything: the
//! initial sizes, the settings (clock skew, time zone, `sweep_every`, page
//! sizes), the operations of each round, which rounds mutate while the syncs
//! run, token expiry and failure bursts.
//!
//! What "equal" means per source (what each connector promises):
//! - Confluence (`eng`): every page, with its version number, title, parent,
//!   body, ancestor titles as breadcrumb, and each link target with the
//!   target's current title (`None` when it does not exist).
//! - Drive (`drive`): every syncable file of the folder tree, with
//!   `<kind>:<version>`, name, parent folder and content; no breadcrumb (folders
//!   are not documents) and no links.
//! - Filesystem (`files`): every non-hidden file, id = relative path, title =
//!   file name, parent = directory, breadcrumb = directory names, version =
//!   `size:mtime_ns:sha256/16`.
//! - HTTP (`web`): every sitemap URL that nginx serves (not 404), with
//!   `etag:"<mtime hex>-<size hex>"\n<title>`, `<title>`, body, and the `<a href>`
//!   targets that are in the sitemap, with their titles.
//!
//! Seeds: `TIDEMARK_SEED=n` runs one, `TIDEMARK_SEEDS=n` runs n (default 200)
//! starting at `TIDEMARK_SEED_FROM` (default 1),
//! always together with every seed in `regression_seeds.txt` (each seed that
//! ever failed, with why); `TIDEMARK_SEED_JOBS=n` sets how many run at once
//! (default 10), `TIDEMARK_VERBOSE=1` prints every seed's operations, not only
//! failing ones.
//!
//! Replaying a seed repeats its operations *and where they land in the runs*:
//! the racing operations are applied at run points drawn from the seed, with
//! the run paused there (`harness::points`, `tidemark::hooks`), and the pages of
//! a run are applied in order, one at a time — see `world`. Timing decides
//! nothing but how long it takes (except in the one seed in eight logged
//! "free page order").
//!
//! Where things are: `world` sets a seed up, runs its scenario and checks it;
//! `confluence`, `gdrive`, `filesystem` and `http` each change one source at
//! random and say what the sink must hold for it; `ops` is what those changes
//! draw from (the seed's `rng`, a counter, the operation log); `compare` reads
//! the sink and reports differences.

// The sources, their expectations and the comparison are shared with `chaos`.
pub mod compare;
pub mod confluence;
pub mod filesystem;
pub mod gdrive;
pub mod http;
pub mod ops;
pub mod rng;
mod world;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::harness::RedisServer;
use crate::harness::nginx::Nginx;

use self::world::{SOURCES, Shared, World, sid};

/// Seeds run by default (`make test`).
const DEFAULT_SEEDS: u64 = 200;
/// Seeds in flight at once by default.
const DEFAULT_JOBS: usize = 10;
/// Every seed that ever failed, one per line (`#` starts a comment): run
/// besides the random ones, always.
const REGRESSION_SEEDS: &str = include_str!("regression_seeds.txt");

fn regression_seeds() -> Vec<u64> {
    REGRESSION_SEEDS
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs one seed to its end; `Err` carries the report.
async fn run_seed(seed: u64, shared: Arc<Shared>) -> Result<usize, String> {
    let mut w = World::start(seed, &shared).await;
    let outcome = w.scenario().await;
    let t = Instant::now();
    w.stop().await;
    w.ops
        .log
        .push(format!("-- stopped in {:.2}s", t.elapsed().as_secs_f64()));
    let _ = std::fs::remove_dir_all(&w.web.dir);
    match outcome {
        Ok(()) => {
            if std::env::var_os("TIDEMARK_VERBOSE").is_some() {
                eprintln!("seed {seed} converged:\n    {}", w.ops.log.join("\n    "));
            }
            Ok(w.runs)
        }
        Err(e) => {
            let mut report = format!("seed {seed} FAILED: {e}\n  operations:\n");
            for l in &w.ops.log {
                let _ = writeln!(report, "    {l}");
            }
            let state = w.app.state();
            for s in SOURCES {
                if let Ok(runs) = state.recent_runs(&sid(s), 3).await {
                    for r in runs {
                        let _ = writeln!(
                            report,
                            "  [{s}] run {} {:?} {:?}: processed {}, upserted {}, deleted {}, dependents {}; {:?}",
                            r.run_id, r.status, r.mode, r.docs_processed, r.upserted, r.deleted, r.dependents, r.note
                        );
                    }
                }
            }
            let _ = writeln!(
                report,
                "  replay: TIDEMARK_SEED={seed} cargo test --test it convergence -- --nocapture"
            );
            Err(report)
        }
    }
}

/// The convergence property over many random seeds (see the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_operations_converge() {
    let _turn = crate::harness::heavy().await;
    let seeds: Vec<u64> = match env_u64("TIDEMARK_SEED") {
        Some(s) => vec![s],
        None => {
            let n = env_u64("TIDEMARK_SEEDS").unwrap_or(DEFAULT_SEEDS);
            // A long soak can be cut into slices: seeds FROM..FROM+n-1.
            let from = env_u64("TIDEMARK_SEED_FROM").unwrap_or(1).max(1);
            let mut seeds: Vec<u64> = (from..from + n).collect();
            seeds.extend(regression_seeds().into_iter().filter(|s| !(from..from + n).contains(s)));
            seeds
        }
    };
    let jobs = env_u64("TIDEMARK_SEED_JOBS").map_or(DEFAULT_JOBS, |j| j.max(1) as usize);
    let redis = RedisServer::start_with_fsync("no");
    let nginx = Nginx::start();
    let shared = Arc::new(Shared {
        redis_url: redis.url(),
        redis_cluster: false,
        nginx_root: nginx.root(),
        nginx_base: nginx.url(""),
    });
    run_seeds(seeds, jobs, shared).await;
}

/// The convergence property on a 3-primary Redis Cluster, over a few seeds
/// (`TIDEMARK_CLUSTER_SEEDS`, default 12): four sources' keys in their own
/// slots, their page jobs on three job streams read by every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_operations_converge_on_a_cluster() {
    let _turn = crate::harness::heavy().await;
    let n = env_u64("TIDEMARK_CLUSTER_SEEDS").unwrap_or(12);
    let cluster = crate::harness::RedisCluster::start(3);
    let nginx = Nginx::start();
    let shared = Arc::new(Shared {
        redis_url: cluster.nodes[0].url(),
        redis_cluster: true,
        nginx_root: nginx.root(),
        nginx_base: nginx.url(""),
    });
    run_seeds((1..=n).collect(), 4, shared).await;
    let keys = cluster.keys_per_node();
    assert!(
        keys.iter().filter(|k| **k > 0).count() >= 2,
        "the sources' keys should spread over the shards: {keys:?}"
    );
}

/// Runs `seeds`, `jobs` at once, in worlds sharing `shared`; panics naming every seed that failed.
async fn run_seeds(seeds: Vec<u64>, jobs: usize, shared: Arc<Shared>) {
    let started = Instant::now();
    let total = seeds.len();
    let mut pending = seeds.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut failures: Vec<(u64, String)> = Vec::new();
    let mut runs = 0usize;
    loop {
        while running.len() < jobs
            && let Some(seed) = pending.next()
        {
            let shared = shared.clone();
            // Its own task, so a panic is reported with its seed.
            running.spawn(async move { (seed, tokio::spawn(run_seed(seed, shared)).await) });
        }
        let Some(joined) = running.join_next().await else { break };
        let (seed, outcome) = joined.expect("the wrapper task does not panic");
        match outcome {
            Ok(Ok(n)) => runs += n,
            Ok(Err(report)) => {
                eprintln!("{report}");
                failures.push((seed, report));
            }
            Err(e) => {
                let report = format!(
                    "seed {seed} PANICKED: {e}\n  replay: TIDEMARK_SEED={seed} cargo test --test it convergence -- --nocapture"
                );
                eprintln!("{report}");
                failures.push((seed, report));
            }
        }
    }
    eprintln!(
        "convergence: {total} seed(s), {runs} runs checked, {} failed, {:.1}s ({jobs} at once)",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|(s, _)| s.to_string()).collect();
        panic!(
            "{} of {total} seed(s) did not converge: {}\nreplay one with: TIDEMARK_SEED=<seed> cargo test --test it convergence -- --nocapture",
            failures.len(),
            seeds.join(", ")
        );
    }
}

/// A seed's operations (timings left out) and the figures of every run it
/// checked: what a replay must repeat.
fn transcript(w: &World) -> Vec<String> {
    let untimed = |l: &String| match (l.find(" (at "), l.find("s)")) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &l[..a], &l[b + 2..]),
        _ => l.clone(),
    };
    w.ops
        .log
        .iter()
        .filter(|l| !l.starts_with("-- stopped"))
        .map(untimed)
        .chain(w.trace.iter().cloned())
        .collect()
}

/// Runs `seed` in a world of its own (its own Redis and nginx) and returns its transcript.
async fn transcript_of(seed: u64) -> (bool, Vec<String>) {
    let redis = RedisServer::start_with_fsync("no");
    let nginx = Nginx::start();
    let shared = Shared {
        redis_url: redis.url(),
        redis_cluster: false,
        nginx_root: nginx.root(),
        nginx_base: nginx.url(""),
    };
    let mut w = World::start(seed, &shared).await;
    let outcome = w.scenario().await;
    w.stop().await;
    let _ = std::fs::remove_dir_all(&w.web.dir);
    if let Err(e) = outcome {
        panic!("seed {seed} did not converge: {e}\n    {}", w.ops.log.join("\n    "));
    }
    (w.free, transcript(&w))
}

/// A replayed seed repeats its interleaving: the same operations land at the
/// same run points and every run does the same work (issue 8: seed 334 failed
/// under load and passed when replayed, because timing placed the races).
/// Checked on the regression seeds and a few others, each run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_seed_repeats_its_interleaving() {
    let _turn = crate::harness::heavy().await;
    let mut checked = 0;
    for seed in regression_seeds().into_iter().chain([3, 5]) {
        let (free, first) = transcript_of(seed).await;
        if free {
            continue; // Pages in parallel: not promised to replay.
        }
        let (_, second) = transcript_of(seed).await;
        if first != second {
            let diff: Vec<String> = first
                .iter()
                .zip(&second)
                .filter(|(a, b)| a != b)
                .take(8)
                .map(|(a, b)| format!("first:  {a}\n  replay: {b}"))
                .collect();
            panic!(
                "seed {seed}: the replay differs ({} vs {} lines):\n  {}",
                first.len(),
                second.len(),
                diff.join("\n  ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} seed(s) were replayable");
}
