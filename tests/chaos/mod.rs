//! The chaos test (issue 8, point 9): four sources change and are synced all
//! the time while a seeded driver SIGKILLs and SIGSTOPs worker and coordinator
//! processes of the real binary, restarts, stops and pauses redis-server (AOF,
//! `appendfsync always`), restarts lock nodes (Redlock over three) and makes
//! the sources fail. Then the faults stop, every process runs again, the
//! queues drain, each source is synced once more (`tidemark enqueue --wait`),
//! and:
//! - the sink equals every source exactly (the convergence test's
//!   expectations and comparison: `convergence::compare`);
//! - `tidemark verify SOURCE --source` finds no drift (exit 0) for each;
//! - one more sync finds nothing to do;
//! - no process exited by itself (only our SIGKILLs end them).
//!
//! A second variant runs the same on a 3-primary Redis Cluster with a replica
//! per primary (`sources_converge_through_faults_on_a_cluster`): the faults of
//! Redis hit any node, and a primary gone past the node timeout fails over.
//!
//! A report always prints (`--nocapture` shows it on success): seed, duration,
//! faults by kind, runs by status, documents re-processed, stale pages
//! refused, documents lost (must be 0), drift (must be 0).
//!
//! The seed (`TIDEMARK_CHAOS_SEED`, default 1) decides the sources' initial
//! content and operations, the order of sync requests, and every fault: its
//! kind, victim, duration and the pause before it. It cannot decide how these
//! interleave with the processes' own timing, so a replay repeats the faults,
//! not the exact races. `TIDEMARK_CHAOS_SECS` sets how long faults go on
//! (default 30: `make test`); `make chaos DURATION=600 SEED=n` runs a long one.

mod fleet;
mod report;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use tidemark::app::App;
use tidemark::queue::{self, jobs::SyncRequest, streams};
use tidemark::state::{RunRecord, RunStatus};
use tidemark::types::{SourceId, SyncMode};
use tokio_util::sync::CancellationToken;

use self::fleet::Fleet;
use self::report::Report;
use crate::convergence::compare::{Docs, diff, sink_docs};
use crate::convergence::confluence::Confluence;
use crate::convergence::filesystem::Filesystem;
use crate::convergence::gdrive::Drive;
use crate::convergence::http::Web;
use crate::convergence::ops::{Ops, SimulatedSource};
use crate::convergence::rng::Rng;
use crate::harness::nginx::Nginx;
use crate::harness::{Env, Options};

const DEFAULT_SEED: u64 = 1;
const DEFAULT_SECS: u64 = 30;
/// The sources, as named in the config (the convergence test's names).
const SOURCES: [&str; 4] = ["eng", "drive", "files", "web"];
const COORDINATORS: usize = 2;
const WORKERS: usize = 3;
/// How long the queues may take to drain once the faults stop (a killed
/// coordinator's request is taken over after 3 lock TTLs, 9 s here).
const SETTLE: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn sid(s: &str) -> SourceId {
    SourceId::new(s).expect("valid source id")
}

/// The four changing sources (the convergence test's), and the stream of
/// operations they draw from.
struct Sources {
    ops: Ops,
    conf: Confluence,
    drive: Drive,
    files: Filesystem,
    web: Web,
    /// Operations applied.
    applied: u64,
}

impl Sources {
    /// Starts the simulators, writes the initial files and pages; returns the
    /// `[[sources]]` blocks of the config.
    async fn start(seed: u64, nginx: &Nginx) -> (Sources, String) {
        let mut ops = Ops::new(seed);
        let (mut conf, conf_addr) = Confluence::start(&mut ops.rng, seed, chrono_tz::Tz::UTC, 0).await;
        // Every run lists the space, so deletions are seen (and made).
        conf.sweep = 1;
        let (drive, drive_addr) = Drive::start(&mut ops.rng, seed).await;
        // Slow enough that faults land inside runs and pages, not between them.
        conf.sim.set_latency(Duration::from_millis(200));
        drive.sim.set_latency(Duration::from_millis(200));
        let files = Filesystem::new();
        let mut web = Web::new(&nginx.root(), &nginx.url(""), seed);
        files.populate(&mut ops);
        web.populate(&mut ops);
        let toml = format!(
            r#"
[[sources]]
id = "eng"
kind = "confluence"
max_delete_share = 1.0
[sources.settings]
base_url = "http://{conf_addr}"
space_key = "ENG"
sweep_every = 1
page_limit = 4
rate = {{ backoff_start_ms = 100 }}

[[sources]]
id = "drive"
kind = "gdrive"
max_delete_share = 1.0
[sources.settings]
base_url = "http://{drive_addr}"
folder_id = "root-folder"
page_size = 4
rate = {{ backoff_start_ms = 100 }}

[[sources]]
id = "files"
kind = "filesystem"
max_delete_share = 1.0
[sources.settings]
root = {root:?}

[[sources]]
id = "web"
kind = "http"
max_delete_share = 1.0
[sources.settings]
sitemap = "{base}sitemap.xml"
"#,
            root = files.root.path().display().to_string(),
            base = web.base,
        );
        let s = Sources {
            ops,
            conf,
            drive,
            files,
            web,
            applied: 0,
        };
        (s, toml)
    }

    /// Creates, edits, renames, moves and deletes at random until `stop`.
    async fn mutate_until(mut self, stop: CancellationToken) -> Sources {
        loop {
            let pause = Duration::from_millis(self.ops.rng.range(100, 400) as u64);
            tokio::select! {
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(pause) => {}
            }
            let i = self.ops.rng.below(SOURCES.len());
            let n = self.ops.rng.range(1, 4);
            let Sources {
                ops,
                conf,
                drive,
                files,
                web,
                ..
            } = &mut self;
            let source: &mut dyn SimulatedSource = match i {
                0 => conf,
                1 => drive,
                2 => files,
                _ => web,
            };
            source.mutate(ops, n);
            self.applied += n as u64;
        }
    }

    fn expected(&self, i: usize) -> Docs {
        match i {
            0 => self.conf.expected(),
            1 => self.drive.expected(),
            2 => self.files.expected(),
            _ => self.web.expected(),
        }
    }
}

/// Asks for a sync of a drawn source (incremental, one in four full) every 200-600 ms until
/// `stop` (each source about every 1.6 s); returns (enqueued, refused by an
/// unreachable Redis).
async fn request_until(app: App, seed: u64, stop: CancellationToken) -> (u64, u64) {
    let mut rng = Rng::new(seed ^ 0x5e9c_0000);
    let (mut enqueued, mut refused) = (0, 0);
    loop {
        let pause = Duration::from_millis(rng.range(200, 600) as u64);
        tokio::select! {
            _ = stop.cancelled() => return (enqueued, refused),
            _ = tokio::time::sleep(pause) => {}
        }
        let source = SOURCES[rng.below(SOURCES.len())];
        // Full runs put every document into pages: work for faults to interrupt.
        let mode = if rng.chance(25) {
            SyncMode::Full
        } else {
            SyncMode::Incremental
        };
        let req = SyncRequest::new(sid(source), mode, "chaos");
        match tokio::time::timeout(Duration::from_secs(3), queue::enqueue(&app.pool, &app.keys, &req)).await {
            Ok(Ok(_)) => enqueued += 1,
            _ => refused += 1,
        }
    }
}

/// Every run record seen, by (source, run id): the state keeps the last 50 per
/// source, so the driver reads them every few seconds.
async fn collect_runs(app: &App, runs: &mut BTreeMap<(String, String), RunRecord>) {
    let state = app.state();
    for s in SOURCES {
        if let Ok(Ok(recent)) = tokio::time::timeout(Duration::from_secs(3), state.recent_runs(&sid(s), 50)).await {
            for r in recent {
                runs.insert((s.to_owned(), r.run_id.0.clone()), r);
            }
        }
    }
}

/// Whether nothing is left to do: both streams drained and acked, no run running.
async fn quiet(app: &App) -> Result<bool, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    for (stream, group) in [
        (app.keys.requests(), queue::REQUESTS_GROUP),
        (app.keys.job_streams()[0].clone(), queue::JOBS_GROUP),
    ] {
        let g = streams::group_info(&app.pool, &stream, group)
            .await
            .map_err(|x| e(&x))?;
        if g.pending != 0 || g.lag.unwrap_or(0) != 0 {
            return Ok(false);
        }
    }
    let state = app.state();
    for s in SOURCES {
        if state.run_in_progress(&sid(s)).await.map_err(|x| e(&x))?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the binary with `args --config <config>`; returns exit code, stdout, stderr.
async fn tidemark(env: &Env, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.args(args).arg("--config").arg(&env.config_path);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run tidemark");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The whole scenario; findings go into `report`, a failure is returned.
async fn scenario(seed: u64, secs: u64, cluster: bool, report: &mut Report) -> Result<(), String> {
    let nginx = Nginx::start();
    let (sources, toml) = Sources::start(seed, &nginx).await;
    let mut env = Env::start(Options {
        // The harness's own Confluence space is not configured: keep it tiny.
        pages: 1,
        page_size: 3,
        // Pages queue up behind busy workers: a takeover finds some still to do.
        sync: "worker_concurrency = 2".into(),
        // On a cluster the lock lives in the source's slot, failed over with it.
        lock_nodes: if cluster { 0 } else { 3 },
        cluster,
        cluster_replicas: cluster,
        more_redis: if cluster {
            "wait_replicas = 1\nwait_replicas_ms = 1000".into()
        } else {
            String::new()
        },
        source_toml: Some(toml),
        ..Options::default()
    })
    .await;
    let (conf_sim, drive_sim) = (sources.conf.sim.clone(), sources.drive.sim.clone());
    let mut fleet = Fleet::start(&mut env, seed, COORDINATORS, WORKERS, conf_sim, drive_sim);
    let outcome = run(&mut env, &mut fleet, sources, seed, secs, report).await;
    report.faults = fleet.injected.clone();
    report.unexpected_exits = fleet.unexpected_exits.clone();
    let verbose = std::env::var_os("TIDEMARK_VERBOSE").is_some();
    if verbose || outcome.is_err() || !fleet.unexpected_exits.is_empty() {
        report.detail.push(format!("faults:\n    {}", fleet.log.join("\n    ")));
        report.detail.push(fleet.logs(&env));
    }
    outcome
}

async fn run(
    env: &mut Env,
    fleet: &mut Fleet,
    sources: Sources,
    seed: u64,
    secs: u64,
    report: &mut Report,
) -> Result<(), String> {
    let app = env.app.clone();
    let mut runs = BTreeMap::new();

    // A first sync of everything, before any fault: the baseline.
    for s in SOURCES {
        let (code, out, err) = tidemark(env, &["enqueue", s, "--wait", "--timeout", "120"]).await;
        if code != 0 {
            return Err(format!("[{s}] first sync exited {code}: {out}{err}"));
        }
    }

    // Chaos: sources change, syncs are asked for, faults are injected.
    let stop = CancellationToken::new();
    let mutator = tokio::spawn(sources.mutate_until(stop.clone()));
    let requester = tokio::spawn(request_until(app.clone(), seed, stop.clone()));
    let started = fleet.begin();
    let end = started + Duration::from_secs(secs);
    let mut next_fault = Instant::now() + fleet.gap();
    let mut next_collect = Instant::now();
    while Instant::now() < end {
        fleet.tend(env, false);
        if Instant::now() >= next_fault {
            fleet.inject(env).await;
            next_fault = Instant::now() + fleet.gap();
        }
        if Instant::now() >= next_collect {
            collect_runs(&app, &mut runs).await;
            next_collect = Instant::now() + Duration::from_secs(2);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.chaos_secs = started.elapsed().as_secs_f64();
    stop.cancel();
    let sources = mutator.await.map_err(|e| format!("the mutator panicked: {e}"))?;
    let (enqueued, refused) = requester.await.map_err(|e| format!("the requester panicked: {e}"))?;
    report.operations = sources.applied;
    report.requests = (enqueued, refused);

    // Faults stop; every process runs; the queues drain.
    fleet.heal(env);
    let settle_start = Instant::now();
    loop {
        collect_runs(&app, &mut runs).await;
        if matches!(quiet(&app).await, Ok(true)) {
            break;
        }
        if settle_start.elapsed() > SETTLE {
            report.runs = runs.into_values().collect();
            return Err(format!(
                "the queues did not drain within {SETTLE:?} after the faults stopped"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.settle_secs = settle_start.elapsed().as_secs_f64();

    // One more sync of each source, as an operator would ask for it.
    for s in SOURCES {
        let (code, out, err) = tidemark(env, &["enqueue", s, "--wait", "--timeout", "120"]).await;
        if code != 0 {
            collect_runs(&app, &mut runs).await;
            report.runs = runs.into_values().collect();
            return Err(format!("[{s}] the final sync exited {code}: {out}{err}"));
        }
    }

    // The sink equals every source.
    let mut diffs = String::new();
    for (i, s) in SOURCES.iter().enumerate() {
        let expected = sources.expected(i);
        let got = sink_docs(env.sink_dir.path(), &sid(s));
        report.documents += expected.len() as u64;
        report.missing += expected.keys().filter(|k| !got.contains_key(*k)).count() as u64;
        report.extra += got.keys().filter(|k| !expected.contains_key(*k)).count() as u64;
        report.stale += expected
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .count() as u64;
        diffs.push_str(&diff(s, &expected, &got));
    }

    // `verify --source` agrees, for each source.
    for s in SOURCES {
        let (code, out, err) = tidemark(env, &["verify", s, "--source", "--json"]).await;
        let json: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("[{s}] verify printed no JSON ({e}): {out}{err}"))?;
        let findings = json["report"]["findings"].as_array().cloned().unwrap_or_default();
        let drift: u64 = findings.iter().filter_map(|f| f["count"].as_u64()).sum();
        report.drift += drift;
        if code != 0 || drift != 0 {
            report
                .detail
                .push(format!("[{s}] verify exited {code}: {}", json["report"]));
        }
    }

    // Converged means stable: one more sync has nothing to do.
    let state = app.state();
    let mut busy = Vec::new();
    for s in SOURCES {
        let req = SyncRequest::new(sid(s), SyncMode::Incremental, "chaos: no-op check");
        let id = queue::enqueue(&app.pool, &app.keys, &req)
            .await
            .map_err(|e| e.to_string())?;
        let rec = state
            .wait_for_request(&sid(s), &id, Duration::from_millis(20), Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("[{s}] the no-op sync did not end within 120 s"))?;
        if rec.status != RunStatus::Completed || rec.docs_processed != 0 || rec.dependents != 0 {
            busy.push(format!(
                "[{s}] {:?}: processed {}, dependents {}; {:?}",
                rec.status, rec.docs_processed, rec.dependents, rec.note
            ));
        }
    }
    collect_runs(&app, &mut runs).await;
    report.runs = runs.into_values().collect();
    fleet.tend(env, false);

    let mut failures = Vec::new();
    if !diffs.is_empty() {
        failures.push(format!("the sink differs from the sources:\n{diffs}"));
    }
    if report.drift != 0 {
        failures.push(format!("verify reported {} drifted document(s)", report.drift));
    }
    if !busy.is_empty() {
        failures.push(format!(
            "a sync after convergence still had work:\n  {}",
            busy.join("\n  ")
        ));
    }
    if !fleet.unexpected_exits.is_empty() {
        failures.push(format!(
            "{} process(es) exited by themselves",
            fleet.unexpected_exits.len()
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Sources sync through SIGKILLed and SIGSTOPped processes, Redis restarts,
/// pauses and outages, lock-node restarts and source errors; once the faults
/// stop, one more sync makes the sink equal every source, `verify` finds no
/// drift, and nothing was lost (see the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_converge_through_process_and_redis_faults() {
    chaos(false, "sources_converge_through_process").await;
}

/// The same on a 3-primary Redis Cluster with a replica per primary and
/// `[redis] wait_replicas = 1` (the redis-cluster overlay's setting): the
/// faults of Redis hit any node, primary or replica, and a primary down or
/// stopped past the cluster's node timeout (2 s) is replaced by its replica
/// and comes back as a replica. (Faults last `TIDEMARK_CHAOS_SECS`, default
/// 30 s, as for one server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_converge_through_faults_on_a_cluster() {
    chaos(true, "sources_converge_through_faults_on_a_cluster").await;
}

/// One chaos run, on one server or a cluster; `name` filters the test to replay it.
async fn chaos(cluster: bool, name: &str) {
    let _turn = crate::harness::heavy().await;
    let seed = env_u64("TIDEMARK_CHAOS_SEED").unwrap_or(DEFAULT_SEED);
    let secs = env_u64("TIDEMARK_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    let mut report = Report::new(seed, secs);
    if cluster {
        report.redis = "Redis Cluster of 3 primaries with a replica each (AOF always, wait_replicas = 1)";
    }
    let outcome = scenario(seed, secs, cluster, &mut report).await;
    eprintln!("{report}");
    if let Err(e) = outcome {
        panic!(
            "chaos seed {seed} FAILED: {e}\n  replay: TIDEMARK_CHAOS_SEED={seed} TIDEMARK_CHAOS_SECS={secs} cargo test --test it {name} -- --nocapture"
        );
    }
    assert_eq!(report.lost(), 0, "documents lost");
}
