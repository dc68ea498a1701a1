//! One seed's world: its setup (the simulators, directories, the `App` with
//! its four sources, one coordinator and two workers, and the run points they
//! announce to a `Director`), its scenario (a first sync, rounds of operations
//! racing the syncs at seeded run points, a quiet sync, a no-op sync), the
//! check of every run, and the final comparison of the sink with every source.
//!
//! Races are placed, not timed: in a racing round each source's run is paused
//! at a point drawn from the seed (after feed page n, after the plan, before
//! page k, before the dependents, before the commit) and that source's
//! operations are applied there, from a stream of their own (`Ops::fork`), so
//! whichever run gets to its point first, every source sees the same operations
//! at the same place of its run. Pages of one run are applied one at a time in
//! page order; runs of different sources still run at once (they share no
//! data). A replay (`TIDEMARK_SEED=n`) therefore repeats the interleaving. One
//! seed in eight instead lets the pages of a run go in parallel (logged as
//! "free page order"): random concurrency still finds what placement cannot,
//! but such a seed may replay differently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use tidemark::app::App;
use tidemark::config::Config;
use tidemark::queue::jobs::SyncRequest;
use tidemark::state::{RunRecord, RunStatus, StateStore};
use tidemark::types::{SourceId, SyncMode};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::compare::{diff, sink_docs};
use super::confluence::Confluence;
use super::filesystem::Filesystem;
use super::gdrive::Drive;
use super::http::Web;
use super::ops::{Ops, SimulatedSource};
use super::rng::Rng;
use crate::harness::points::{Director, Paused, When};

/// Longest one sync (or one wait for a run to reach a phase) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const CONF: &str = "eng";
const DRIVE: &str = "drive";
const FILES: &str = "files";
const WEB: &str = "web";
pub const SOURCES: [&str; 4] = [CONF, DRIVE, FILES, WEB];

/// What every seed shares: Redis and nginx.
pub struct Shared {
    pub redis_url: String,
    /// `redis_url` is a seed node of a Redis Cluster.
    pub redis_cluster: bool,
    pub nginx_root: PathBuf,
    pub nginx_base: String,
}

/// One seed's world.
pub struct World {
    /// The seed's RNG, counter and operation log.
    pub ops: Ops,
    conf: Confluence,
    drive: Drive,
    files: Filesystem,
    pub web: Web,
    sink_dir: tempfile::TempDir,
    pub app: App,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Runs this seed waited for and checked.
    pub runs: usize,
    /// What each checked run did, in order: what a replay must repeat.
    pub trace: Vec<String>,
    /// Pages of a run go in parallel (a replay may differ).
    pub free: bool,
    started: Instant,
    /// Pauses runs at armed points (and orders pages unless `free`).
    director: Arc<Director>,
    /// Runs paused at their armed points.
    paused: Option<UnboundedReceiver<Paused>>,
    /// Where racing operations go, drawn apart from `ops` so the main stream
    /// of operations does not depend on the schedule.
    schedule: Rng,
}

/// How a round's syncs meet its mutations.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mid {
    /// Everything is applied before the syncs are enqueued.
    Before,
    /// Part is applied at a seeded point of each feed (after feed page n, or after the plan).
    AfterEnqueue,
    /// Part is applied at a seeded point after the feed (before page k, before
    /// the dependents, or before the commit).
    AfterFeed,
}

/// Where one source's racing operations land in its run.
fn draw_point(rng: &mut Rng, mid: Mid) -> When {
    match mid {
        Mid::AfterEnqueue if rng.chance(25) => When::Planned,
        Mid::AfterEnqueue => When::FeedPage(rng.below(3) as u32),
        _ => match rng.below(100) {
            0..=59 => When::PageStart(rng.below(4) as u32),
            60..=84 => When::PagesDone,
            _ => When::BeforeCommit,
        },
    }
}

/// Waits for the run serving `request` of `source` to end.
async fn wait_request(state: StateStore, source: &'static str, request: String) -> Result<RunRecord, String> {
    state
        .wait_for_request(&sid(source), &request, Duration::from_millis(10), RUN_TIMEOUT)
        .await
        .map_err(|e| format!("state: {e}"))?
        .ok_or_else(|| format!("[{source}] request {request} did not finish within {RUN_TIMEOUT:?}"))
}

pub fn sid(s: &str) -> SourceId {
    SourceId::new(s).expect("valid source id")
}

impl World {
    pub async fn start(seed: u64, shared: &Shared) -> World {
        let mut ops = Ops::new(seed);
        let tz = *ops
            .rng
            .pick(&[Tz::UTC, Tz::America__New_York, Tz::Asia__Kolkata, Tz::Europe__Berlin])
            .expect("zones");
        let skew_secs = ops.rng.range(0, 600) as i64 - 300;
        let (conf, conf_addr) = Confluence::start(&mut ops.rng, seed, tz, skew_secs).await;
        let (drive, drive_addr) = Drive::start(&mut ops.rng, seed).await;

        let files = Filesystem::new();
        let web = Web::new(&shared.nginx_root, &shared.nginx_base, seed);
        let sink_dir = tempfile::tempdir().expect("tmp");
        let page_size = ops.rng.range(2, 4);
        let conf_limit = ops.rng.range(2, 4);
        let drive_page = ops.rng.range(2, 4);
        let conf_sweep = conf.sweep;
        let web_base = &web.base;
        let text = format!(
            r#"
[redis]
url = "{redis}"
cluster = {cluster}
namespace = "s{seed}"
pool_size = 8
response_timeout_ms = 5000

[queue]
job_partitions = {partitions}

[sync]
page_size = {page_size}
lock_ttl_ms = 10000
job_idle_timeout_ms = 2000
block_ms = 100
max_deliveries = 5
stall_timeout_secs = 60

[sink]
kind = "directory"
path = "{sink}"

[api]
listen = ""

[[sources]]
id = "{CONF}"
kind = "confluence"
max_delete_share = 1.0
[sources.settings]
base_url = "http://{conf_addr}"
space_key = "ENG"
timezone = "{tz}"
sweep_every = {conf_sweep}
page_limit = {conf_limit}
# Injected throttles back off from 100 ms, not 1 s: the seeds stay quick.
rate = {{ backoff_start_ms = 100 }}

[[sources]]
id = "{DRIVE}"
kind = "gdrive"
max_delete_share = 1.0
[sources.settings]
base_url = "http://{drive_addr}"
folder_id = "root-folder"
page_size = {drive_page}
rate = {{ backoff_start_ms = 100 }}

[[sources]]
id = "{FILES}"
kind = "filesystem"
max_delete_share = 1.0
[sources.settings]
root = {fs_root:?}

[[sources]]
id = "{WEB}"
kind = "http"
max_delete_share = 1.0
[sources.settings]
sitemap = "{web_base}sitemap.xml"
"#,
            redis = shared.redis_url,
            cluster = shared.redis_cluster,
            // On the cluster, three job streams: the sources' jobs on several shards.
            partitions = if shared.redis_cluster { 3 } else { 1 },
            sink = sink_dir.path().display(),
            tz = tz.name(),
            fs_root = files.root.path().display().to_string(),
        );
        // Apart from `ops`: the schedule of racing points does not shift the operations.
        let mut schedule = Rng::new(seed ^ 0x5ced_u64.rotate_left(40));
        let free = schedule.chance(12);
        let (director, paused) = Director::new(!free);
        let director = Arc::new(director);
        let mut w = World {
            director: director.clone(),
            paused: Some(paused),
            schedule,
            ops,
            conf,
            drive,
            files,
            web,
            sink_dir,
            app: App::new(
                Config::parse(&text, Path::new("unused.toml"), |_| None)
                    .unwrap_or_else(|e| panic!("seed {seed}: config: {e}")),
            )
            .expect("app")
            .with_hooks(director),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            runs: 0,
            trace: Vec::new(),
            free,
            started: Instant::now(),
        };
        w.ops.log.push(format!(
            "settings: tz {}, skew {skew_secs}s, sweep_every {conf_sweep}, page_size {page_size}, confluence page_limit {conf_limit}, drive page_size {drive_page}",
            tz.name()
        ));
        if free {
            w.ops
                .log
                .push("free page order: pages of a run go in parallel (a replay may interleave differently)".into());
        }
        // Initial filesystem and web content.
        w.files.populate(&mut w.ops);
        w.web.populate(&mut w.ops);
        w.ops.log.push("-- initial content written".into());

        let c = w.app.coordinator("c1");
        let t = w.stop.child_token();
        w.tasks.push(tokio::spawn(async move {
            let _ = c.run(t, Duration::from_secs(5)).await;
        }));
        for name in ["w1", "w2"] {
            let wk = w.app.worker(name);
            let t = w.stop.child_token();
            w.tasks.push(tokio::spawn(async move {
                let _ = wk.run(t, Duration::from_secs(5)).await;
            }));
        }
        w
    }

    /// Stops the coordinator and workers and waits for them.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        let tasks = futures::future::join_all(self.tasks.drain(..));
        let _ = tokio::time::timeout(Duration::from_secs(20), tasks).await;
    }

    /// The four sources, in `SOURCES` order.
    fn sources(&self) -> [(&'static str, &dyn SimulatedSource); 4] {
        [
            (CONF, &self.conf),
            (DRIVE, &self.drive),
            (FILES, &self.files),
            (WEB, &self.web),
        ]
    }

    async fn enqueue(&self, source: &str) -> String {
        let req = SyncRequest::new(sid(source), SyncMode::Incremental, "convergence");
        tidemark::queue::enqueue(&self.app.pool, &self.app.keys, &req)
            .await
            .expect("enqueue")
    }

    async fn wait(&self, source: &str, request: &str) -> Result<RunRecord, String> {
        self.app
            .state()
            .wait_for_request(&sid(source), request, Duration::from_millis(10), RUN_TIMEOUT)
            .await
            .map_err(|e| format!("state: {e}"))?
            .ok_or_else(|| format!("[{source}] request {request} did not finish within {RUN_TIMEOUT:?}"))
    }

    /// Checks one ended run: completed, and fell back to a listing when tokens were expired.
    fn check_run(&mut self, source: &str, rec: &RunRecord, expired: bool) -> Result<(), String> {
        self.trace.push(format!(
            "[{source}] {:?}: processed {}, upserted {}, deleted {}, skipped {}, dependents {} ({} updated)",
            rec.status,
            rec.docs_processed,
            rec.upserted,
            rec.deleted,
            rec.skipped,
            rec.dependents,
            rec.dependents_updated,
        ));
        if rec.status != RunStatus::Completed {
            return Err(format!(
                "[{source}] run {} ended {:?}: error {:?}, note {:?}",
                rec.run_id, rec.status, rec.last_error, rec.note
            ));
        }
        if expired && source == DRIVE && !rec.note.contains("fell back to a full listing") {
            return Err(format!(
                "[{source}] tokens were expired but run {} did not fall back to a listing: {:?}",
                rec.run_id, rec.note
            ));
        }
        Ok(())
    }

    /// A drawn number of operations on each source in turn (`SOURCES` order).
    fn apply_ops(&mut self, scale: usize) {
        let World {
            ops,
            conf,
            drive,
            files,
            web,
            ..
        } = self;
        let sources: [&mut dyn SimulatedSource; 4] = [conf, drive, files, web];
        for source in sources {
            let n = ops.rng.range(1, 3 * scale);
            source.mutate(ops, n);
        }
    }

    /// One round: operations, syncs of all four sources (maybe racing part of the
    /// operations), every run checked.
    async fn round(&mut self, round: usize) -> Result<(), String> {
        let mid = match self.ops.rng.below(3) {
            0 => Mid::Before,
            1 => Mid::AfterEnqueue,
            _ => Mid::AfterFeed,
        };
        let expire = self.ops.rng.chance(30);
        let conf_500 = self.ops.rng.chance(25);
        let conf_429 = self.ops.rng.chance(3);
        let drive_429 = self.ops.rng.chance(25);
        self.ops.log.push(format!(
            "-- round {round} (at {:.2}s): {mid:?}{}{}{}{}",
            self.started.elapsed().as_secs_f64(),
            if expire {
                [
                    ", drive tokens expired (400)",
                    ", drive tokens expired (404)",
                    ", drive tokens expired (410)",
                ][round % 3]
            } else {
                ""
            },
            if conf_500 { ", confluence 2x500" } else { "" },
            if conf_429 {
                ", confluence 2x429 (Retry-After 1s)"
            } else {
                ""
            },
            if drive_429 { ", drive 2x429" } else { "" },
        ));
        if mid != Mid::Before {
            self.ops.log.push(format!(
                "   (part of the operations races the syncs {}:)",
                if mid == Mid::AfterEnqueue {
                    "in their feeds"
                } else {
                    "after their feeds"
                }
            ));
        }
        self.apply_ops(2);
        if expire {
            // Each way Google says "start over" in turn (no extra draw: seeds keep their sequences).
            self.drive.sim.set_token_refusal([400, 404, 410][round % 3]);
            self.drive.sim.expire_all_tokens();
        }
        if conf_429 {
            self.conf.sim.fail_next(2, 429);
        } else if conf_500 {
            self.conf.sim.fail_next(2, 500);
        }
        if drive_429 {
            self.drive.sim.fail_next(2, 429);
        }
        // Racing operations: per source, a point of its run and a stream of its own.
        let mut racing: Vec<(When, usize, Option<Ops>)> = Vec::new();
        if mid != Mid::Before {
            for (i, s) in SOURCES.iter().enumerate() {
                let when = draw_point(&mut self.schedule, mid);
                let n = self.schedule.range(1, 3);
                let fork = self
                    .ops
                    .fork(Rng::new(self.schedule.below(usize::MAX) as u64), i as u64);
                self.director.arm(&sid(s), when);
                racing.push((when, n, Some(fork)));
            }
        }
        let mut requests = Vec::new();
        for s in SOURCES {
            requests.push((s, self.enqueue(s).await));
        }
        let state = self.app.state();
        let waits = futures::future::join_all(requests.iter().map(|(s, r)| wait_request(state.clone(), s, r.clone())));
        tokio::pin!(waits);
        let mut paused = self.paused.take().expect("one round at a time");
        let mut logs: Vec<Vec<String>> = vec![Vec::new(); SOURCES.len()];
        let records = loop {
            tokio::select! {
                records = &mut waits => break records,
                Some(p) = paused.recv() => {
                    if let Some(i) = SOURCES.iter().position(|s| sid(s) == p.source)
                        && let Some((when, n, fork)) = racing.get_mut(i)
                        && let Some(mut ops) = fork.take()
                    {
                        self.mutate_one(i, &mut ops, *n);
                        logs[i].push(format!("   [{}] paused {when}:", SOURCES[i]));
                        logs[i].extend(self.ops.join(ops).into_iter().map(|l| format!("     {l}")));
                    }
                    p.resume();
                }
            }
        };
        self.paused = Some(paused);
        // A point the run never reached (fewer pages, a shorter feed): the
        // operations land after the run, still at one place a replay repeats.
        for (i, (when, n, fork)) in racing.iter_mut().enumerate() {
            self.director.disarm(&sid(SOURCES[i]));
            if let Some(mut ops) = fork.take() {
                self.mutate_one(i, &mut ops, *n);
                logs[i].push(format!("   [{}] never reached {when}; after the run:", SOURCES[i]));
                logs[i].extend(self.ops.join(ops).into_iter().map(|l| format!("     {l}")));
            }
        }
        for l in logs {
            self.ops.log.extend(l);
        }
        for ((s, _), rec) in requests.iter().zip(records) {
            let rec = rec?;
            self.runs += 1;
            self.check_run(s, &rec, expire)?;
        }
        Ok(())
    }

    /// Applies `n` operations drawn from `ops` to source `i` (`SOURCES` order).
    fn mutate_one(&mut self, i: usize, ops: &mut Ops, n: usize) {
        let source: &mut dyn SimulatedSource = match i {
            0 => &mut self.conf,
            1 => &mut self.drive,
            2 => &mut self.files,
            _ => &mut self.web,
        };
        source.mutate(ops, n);
    }

    /// Syncs all four sources at once; returns their records.
    async fn sync_all(&mut self) -> Result<BTreeMap<&'static str, RunRecord>, String> {
        let mut requests = Vec::new();
        for s in SOURCES {
            requests.push((s, self.enqueue(s).await));
        }
        let mut out = BTreeMap::new();
        for (s, r) in &requests {
            let rec = self.wait(s, r).await?;
            self.runs += 1;
            self.check_run(s, &rec, false)?;
            out.insert(*s, rec);
        }
        Ok(out)
    }

    fn compare(&self) -> Result<(), String> {
        let mut out = String::new();
        for (s, source) in self.sources() {
            let (e, g) = (source.expected(), sink_docs(self.sink_dir.path(), &sid(s)));
            out.push_str(&diff(s, &e, &g));
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(format!("sink differs from source:\n{out}"))
        }
    }

    /// The whole scenario of one seed.
    pub async fn scenario(&mut self) -> Result<(), String> {
        self.ops
            .log
            .push("-- first sync (no checkpoint yet: complete listings)".into());
        self.sync_all().await?;
        self.compare()
            .map_err(|e| format!("after the first sync, nothing changed since: {e}"))?;
        let rounds = self.ops.rng.range(3, 5);
        for round in 1..=rounds {
            self.round(round).await?;
        }
        self.ops.log.push(format!(
            "-- quiet (at {:.2}s): one more sync of every source",
            self.started.elapsed().as_secs_f64()
        ));
        self.sync_all().await?;
        self.compare()?;
        // Converged means stable: with nothing changed, the next run has nothing to do.
        self.ops.log.push(format!(
            "-- quiet again (at {:.2}s): a no-op sync",
            self.started.elapsed().as_secs_f64()
        ));
        let recs = self.sync_all().await?;
        let busy: Vec<String> = recs
            .iter()
            .filter(|(_, r)| r.docs_processed != 0 || r.dependents != 0)
            .map(|(s, r)| {
                format!(
                    "[{s}] processed {} document(s), {} dependent(s): {:?}",
                    r.docs_processed, r.dependents, r.note
                )
            })
            .collect();
        if !busy.is_empty() {
            return Err(format!(
                "a sync after convergence still had work:\n  {}",
                busy.join("\n  ")
            ));
        }
        self.compare()?;
        // Every run any of these sources had (follow-ups included) completed.
        let state = self.app.state();
        for s in SOURCES {
            let runs = state.recent_runs(&sid(s), 100).await.map_err(|e| e.to_string())?;
            if let Some(bad) = runs.iter().find(|r| r.status != RunStatus::Completed) {
                return Err(format!(
                    "[{s}] run {} ended {:?}: {:?}",
                    bad.run_id, bad.status, bad.last_error
                ));
            }
        }
        Ok(())
    }
}
