//! `make bench`, second part: scale. What one very large source costs per
//! connector, a small sync beside a large one, and a thousand scheduled sources.
//!
//! 1. Connectors at scale.
//!
//! For each connector a source of `TIDEMARK_BENCH_DOCS` documents (default
//! 1,000,000; the same files on disk serve the filesystem and, through nginx,
//! the HTTP connector (a sitemap index over child sitemaps of 50,000); the
//! Confluence simulator holds a space of as many pages, the Drive simulator as
//! many files in folders of 1,000):
//! the state is filled as a full sync would leave it (the connector's own
//! complete listing, every document recorded through the same fenced script
//! workers use), then a coordinator *process* runs a no-op incremental sync
//! and we read, from the same run:
//! - Redis bytes per held document (`used_memory` before and after the fill);
//! - the coordinator's resident memory idle and its peak (`VmHWM`) after the run;
//! - the no-op run's wall time and API calls.
//!
//! Target (issue 12.2): coordinator peak RSS at most 100 MB, at most 200 Redis
//! bytes per held document. `cargo bench --bench scale -- fs|http|confluence|gdrive`
//! runs one connector; `TIDEMARK_BENCH_DOCS=20000` makes a quick run.
//!
//! 2. A first full sync (`-- first`): what the coordinator process holds while
//!    it plans and pages out a 1,000,000-page space it has never synced (the
//!    plan is kept in Redis, read back a stretch at a time), and Redis' peak.
//! 3. Fairness (`-- fairness`): a 5-document incremental sync alone and while
//!    a 100,000-page full sync runs, wall times side by side.
//! 4. Many sources (`-- sources`): 1,000 sources scheduled on two coordinator
//!    replicas; runs per replica and per source, lateness after due times.

#[allow(dead_code)]
#[path = "../tests/harness/mod.rs"]
mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use tidemark::queue::{self, jobs::SyncRequest};

use tidemark::simulators::gdrive::{GdriveSim, SimConfig as DriveConfig};
use tidemark::sources::{self, ApiCalls, Checkpoint, Observation};
use tidemark::state::{ChildrenIndex, DocState, DocWrite};
use tidemark::types::{FencingToken, SourceId, SyncMode};

use harness::nginx::{Nginx, write_with_mtime};
use harness::{Env, Options};

/// Files per directory (and per Drive folder), as a tidy source would keep them.
const PER_FOLDER: usize = 1000;
/// URLs per child sitemap (the sitemap protocol's limit is 50,000).
const PER_SITEMAP: usize = 50_000;

fn documents() -> usize {
    std::env::var("TIDEMARK_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    let n = documents();
    let connectors = ["fs", "http", "confluence", "gdrive"];
    if only.is_empty() || only.iter().any(|a| connectors.contains(&a.as_str())) {
        rt.block_on(connectors_at_scale(n, &wanted));
    }
    if wanted("first") {
        rt.block_on(first_full_sync());
    }
    if wanted("fairness") {
        rt.block_on(small_sync_beside_a_large_one());
    }
    if wanted("sources") {
        rt.block_on(thousand_scheduled_sources());
    }
}

/// Section 1: one source of `n` documents per connector `wanted`.
async fn connectors_at_scale(n: usize, wanted: &dyn Fn(&str) -> bool) {
    println!("== one source of {n} documents, per connector: a no-op incremental run in a coordinator process");
    println!(
        "{:<11} {:>10} {:>12} {:>13} {:>13} {:>11} {:>9}",
        "connector", "documents", "Redis B/doc", "coord idle MB", "coord peak MB", "no-op ms", "API calls"
    );
    {
        if wanted("fs") || wanted("http") {
            let nginx = Nginx::start();
            let started = Instant::now();
            write_files(&nginx, n);
            eprintln!("({n} files written in {:.0} s)", started.elapsed().as_secs_f64());
            if wanted("fs") {
                let toml = format!(
                    "[[sources]]\nid = \"eng\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\nextensions = [\"html\"]\n",
                    nginx.root().display().to_string()
                );
                measure("filesystem", &toml).await;
            }
            if wanted("http") {
                let toml = format!(
                    "[[sources]]\nid = \"eng\"\nkind = \"http\"\n[sources.settings]\nsitemap = {:?}\nconcurrency = 64\n",
                    nginx.url("sitemap.xml")
                );
                measure("http", &toml).await;
            }
        }
        if wanted("confluence") {
            measure_env("confluence", None, n).await;
        }
        if wanted("gdrive") {
            let sim = GdriveSim::new(DriveConfig::default());
            let root = sim.root_folder_id();
            let mut folder = String::new();
            for i in 0..n {
                if i % PER_FOLDER == 0 {
                    folder = sim
                        .create_folder(&format!("Folder {}", i / PER_FOLDER), &root)
                        .expect("folder");
                }
                sim.create_file(&format!("Document {i}.txt"), &folder, "text/plain", "x")
                    .expect("file");
            }
            let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
            let toml = format!(
                "[[sources]]\nid = \"eng\"\nkind = \"gdrive\"\n[sources.settings]\nbase_url = \"http://{addr}\"\nfolder_id = \"{root}\"\n"
            );
            measure("gdrive", &toml).await;
        }
    }
}

/// `n` small HTML pages in folders of [`PER_FOLDER`], and a sitemap index
/// over child sitemaps of [`PER_SITEMAP`] URLs.
fn write_files(nginx: &Nginx, n: usize) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let root = nginx.root();
    let mut children = Vec::new();
    let mut sitemap = String::new();
    for i in 0..n {
        let rel = format!("d{:04}/p{i:07}.html", i / PER_FOLDER);
        let body = format!("<html><head><title>Page {i}</title></head><body><p>Page {i}</p></body></html>");
        write_with_mtime(&root.join(&rel), &body, t0);
        sitemap.push_str(&format!("<url><loc>{}</loc></url>", nginx.url(&rel)));
        if (i + 1) % PER_SITEMAP == 0 || i + 1 == n {
            let name = format!("sitemap-{}.xml", children.len());
            let xml = format!(
                "<?xml version=\"1.0\"?><urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{sitemap}</urlset>"
            );
            std::fs::write(root.join(&name), xml).expect("write sitemap");
            children.push(format!("<sitemap><loc>{}</loc></sitemap>", nginx.url(&name)));
            sitemap.clear();
        }
    }
    let index = format!(
        "<?xml version=\"1.0\"?><sitemapindex xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{}</sitemapindex>",
        children.concat()
    );
    std::fs::write(root.join("sitemap.xml"), index).expect("write sitemap index");
}

/// Fills the state as a full sync of the connector would leave it, then runs
/// a no-op incremental sync in a coordinator process, and prints the figures.
async fn measure(name: &str, source_toml: &str) {
    measure_env(name, Some(source_toml.to_owned()), 0).await;
}

/// As [`measure`]; `None` is the harness's Confluence space of `pages` pages.
async fn measure_env(name: &str, source_toml: Option<String>, pages: usize) {
    let mut env = Env::start(Options {
        pages,
        page_size: 50,
        source_toml,
        appendfsync: "everysec",
        ..Options::default()
    })
    .await;
    let before = used_memory(&env);
    let started = Instant::now();
    let held = fill(&env).await;
    eprintln!(
        "({name}: {held} documents recorded in {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let per_doc = (used_memory(&env).saturating_sub(before)) as f64 / held.max(1) as f64;
    eprintln!(
        "({name}: Redis bytes per document by key class: {})",
        key_classes(&env, held)
    );

    let (run, idle, peak) = sync_in_a_coordinator_process(&mut env, SyncMode::Incremental, 1).await;
    println!(
        "{:<11} {:>10} {:>12.0} {:>13.1} {:>13.1} {:>11} {:>9}",
        name,
        held,
        per_doc,
        idle,
        peak,
        run.wall_ms.unwrap_or(0),
        run.api_calls
    );
    if run.docs_processed > 0 || run.deleted > 0 || !matches!(run.status, tidemark::state::RunStatus::Completed) {
        println!(
            "  (not a no-op: {:?}, {} processed, {} deleted: {:?})",
            run.status, run.docs_processed, run.deleted, run.note
        );
    }
}

/// What a full sync would leave: the connector's complete listing, each page's
/// documents recorded under a registered token, and the feed's checkpoint.
async fn fill(env: &Env) -> usize {
    let source = env
        .app
        .sources
        .get(&env.source)
        .cloned()
        .expect("the source is configured");
    let state = env.app.state();
    let token = FencingToken(1);
    state.register_token(&env.source, token).await.expect("register");
    let mut feed = source
        .open_feed(
            &Checkpoint::default(),
            SyncMode::Full,
            sources::nothing_held(),
            ApiCalls::default(),
        )
        .await
        .expect("feed opens");
    let now = chrono::Utc::now();
    let mut held = 0;
    while let Some(page) = feed.next_page().await.expect("feed page") {
        let writes: Vec<DocWrite> = page
            .observations
            .into_iter()
            .filter_map(|o| match o {
                Observation::Present(m) => Some(m),
                _ => None,
            })
            .map(|m| DocWrite::Put {
                new: DocState {
                    version: m.version,
                    content_hash: sources::sha256_hex(m.id.0.as_bytes()),
                    title: m.title,
                    parent: m.parent,
                    links: Vec::new(),
                    // What a worker keeps: who may read, as a fingerprint.
                    access: Some(m.permissions.unwrap_or_default().fingerprint()),
                },
                id: m.id,
                old: None,
            })
            .collect();
        held += writes.len();
        let children = ChildrenIndex::if_needed(source.needs_children_index());
        state
            .apply_docs(&env.source, token, &writes, children, &[])
            .await
            .expect("record");
    }
    let mut checkpoint = feed.end().checkpoint;
    // As a full run commits it: no reconciliation due.
    checkpoint.last_full_at = Some(now);
    checkpoint.committed_at = Some(now);
    state
        .commit_checkpoint(&env.source, token, &checkpoint)
        .await
        .expect("checkpoint");
    held
}

fn used_memory(env: &Env) -> u64 {
    memory_info(env, "used_memory:")
}

/// `MEMORY USAGE` of every key, summed by the key's class (the last part of
/// its name with document ids dropped: `docs`, `kids`, ...) and divided by
/// `held`: where a document's bytes go.
fn key_classes(env: &Env, held: usize) -> String {
    let mut c = env.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS");
    let mut by_class: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for key in keys {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query(&mut c)
            .expect("MEMORY USAGE");
        let class = key.split_once("}:").map_or(key.as_str(), |(_, rest)| rest);
        let class = class.split(':').next().unwrap_or(class).to_owned();
        *by_class.entry(class).or_default() += bytes.unwrap_or(0);
    }
    let docs = env.app.keys.docs(&env.source);
    // Fields and values, alternating.
    let (_, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
        .arg(&docs)
        .arg(0)
        .arg("COUNT")
        .arg(1000)
        .query(&mut c)
        .expect("HSCAN");
    let n = (flat.len() / 2).max(1) as f64;
    let id_len = flat.iter().step_by(2).map(Vec::len).sum::<usize>() as f64 / n;
    let value_len = flat.iter().skip(1).step_by(2).map(Vec::len).sum::<usize>() as f64 / n;
    let classes = by_class
        .iter()
        .map(|(class, bytes)| format!("{class} {:.0}", *bytes as f64 / held.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{classes}; a held document's id {id_len:.0} B and state {value_len:.0} B on average")
}

/// A field of the Redis server's `INFO memory`, in bytes.
fn memory_info(env: &Env, field: &str) -> u64 {
    let mut c = redis::Client::open(env.redis.url().as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let info: String = redis::cmd("INFO").arg("memory").query(&mut c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs one `mode` sync of `env`'s source with the coordinator as a process of
/// its own (beside `workers` in-process workers): the run, and the
/// coordinator's resident memory idle before it and at its peak, in MiB.
async fn sync_in_a_coordinator_process(
    env: &mut Env,
    mode: SyncMode,
    workers: usize,
) -> (tidemark::state::RunRecord, f64, f64) {
    let pid = env.spawn_process(&["coordinator"]);
    for i in 1..=workers {
        env.worker(&format!("w{i}"));
    }
    // Idle means started and settled, not a synchronisation: the figure is
    // the process's resident memory before it has any run to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_mib(pid, "VmRSS:");
    let request = env.enqueue(mode, "bench").await;
    // Longer than `Env::wait`'s 180 s: a first sync of a million pages takes minutes.
    let run = env
        .app
        .state()
        .wait_for_request(
            &env.source,
            &request,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )
        .await
        .expect("state readable")
        .expect("the run ends within an hour");
    (run, idle, status_mib(pid, "VmHWM:"))
}

/// A `/proc/PID/status` field (`VmRSS:`, `VmHWM:`) in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A first full sync of a 1,000,000-page Confluence space (simulated, no
/// latency; `TIDEMARK_BENCH_FIRST_PAGES` for another size) by a coordinator
/// process and two in-process workers into the directory sink: the
/// coordinator's resident memory idle and at its peak, per planned document,
/// and Redis' memory at its peak (the plan is kept there while the run lasts)
/// and after the run.
async fn first_full_sync() {
    let pages: usize = std::env::var("TIDEMARK_BENCH_FIRST_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut env = Env::start(Options {
        pages,
        page_size: 50,
        appendfsync: "everysec",
        ..Options::default()
    })
    .await;
    let redis_before = used_memory(&env);
    let (run, idle, peak) = sync_in_a_coordinator_process(&mut env, SyncMode::Full, 2).await;
    let mib = |b: u64| b.saturating_sub(redis_before) as f64 / (1024.0 * 1024.0);
    println!();
    println!("== a first full sync of a {pages}-page space: the coordinator process");
    println!(
        "{} documents in {} ms ({:?}); coordinator idle {idle:.1} MB, peak {peak:.1} MB: {:.0} bytes per planned document",
        run.upserted,
        run.wall_ms.unwrap_or(0),
        run.status,
        (peak - idle) * 1024.0 * 1024.0 / run.upserted.max(1) as f64
    );
    println!(
        "Redis above its start: peak {:.0} MB during the run (state, plan, jobs), {:.0} MB after it (state)",
        mib(memory_info(&env, "used_memory_peak:")),
        mib(used_memory(&env))
    );
}

/// Fairness (issue 12.6), the small sync: a 5-document filesystem source's
/// incremental run alone, then while a 100,000-page Confluence full sync runs
/// on the same coordinator and worker (every Confluence call answered after
/// 20 ms, `max_pages_in_flight = 4`), wall times side by side.
async fn small_sync_beside_a_large_one() {
    const LARGE: usize = 100_000;
    let files = tempfile::tempdir().expect("tmp");
    for i in 0..5 {
        std::fs::write(files.path().join(format!("note-{i}.md")), format!("# Note {i}\n")).expect("write");
    }
    let env = Env::start(Options {
        pages: LARGE,
        page_size: 50,
        sync: "worker_concurrency = 2\nmax_pages_in_flight = 4".into(),
        appendfsync: "everysec",
        more_sources: format!(
            "[[sources]]\nid = \"files\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\n",
            files.path().display().to_string()
        ),
        ..Options::default()
    })
    .await;
    env.sim.set_latency(Duration::from_millis(20));
    env.coordinator("c1");
    env.worker("w1");
    let small = SourceId::new("files").expect("id");
    let state = env.app.state();
    let note = files.path().join("note-0.md");
    let small_run = |label: &'static str| {
        let (env, small, state, note) = (&env, small.clone(), state.clone(), note.clone());
        async move {
            std::fs::write(&note, format!("# Note 0, {label}\n")).expect("edit");
            let request = SyncRequest::new(small.clone(), SyncMode::Incremental, label);
            let started = Instant::now();
            let id = queue::enqueue(&env.app.pool, &env.app.keys, &request)
                .await
                .expect("enqueue");
            state
                .wait_for_request(&small, &id, Duration::from_millis(10), Duration::from_secs(300))
                .await
                .expect("state readable")
                .expect("the small run finishes");
            started.elapsed()
        }
    };
    let alone = small_run("alone").await;
    let big = env.enqueue(SyncMode::Full, "large").await;
    harness::wait_for_pages_done(&env, &env.source, 2, Duration::from_secs(300)).await;
    let beside = small_run("beside").await;
    let large = state.recent_runs(&env.source, 1).await.expect("runs");
    let large = large.first().expect("the large run");
    println!();
    println!(
        "== fairness: a 5-document incremental sync, alone and while a {LARGE}-page full sync runs (20 ms per call)"
    );
    println!("alone:                {:>7} ms", alone.as_millis());
    println!(
        "beside the large run: {:>7} ms (the large run at {} of {} pages, {:?})",
        beside.as_millis(),
        large.pages_done,
        large.pages_total,
        large.status
    );
    drop(big);
}

/// Many sources (issue 12.6): 1,000 filesystem sources scheduled every 20 s
/// on two coordinator replicas and two workers, for three periods. Printed:
/// runs per replica, runs per source (fewest, most), and how late each
/// scheduled run started after its due time (its phase in the period).
async fn thousand_scheduled_sources() {
    const SOURCES: usize = 1000;
    const PERIOD_SECS: i64 = 20;
    let files = tempfile::tempdir().expect("tmp");
    std::fs::write(files.path().join("note.md"), "# Note\n").expect("write");
    let ids: Vec<String> = (0..SOURCES).map(|i| format!("team-{i:04}")).collect();
    let more_sources = harness::scheduled_filesystem_sources(&ids, files.path(), PERIOD_SECS as u64);
    let env = Env::start(Options {
        pages: 1,
        more_sources,
        sync: "max_concurrent_runs = 16".into(),
        appendfsync: "everysec",
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.coordinator("c2");
    env.worker("w1");
    env.worker("w2");
    tokio::time::sleep(Duration::from_secs(3 * PERIOD_SECS as u64)).await;
    let state = env.app.state();
    let period_ms = PERIOD_SECS * 1000;
    let mut by_replica: HashMap<String, usize> = HashMap::new();
    let mut per_source = Vec::new();
    let mut late_ms = Vec::new();
    for id in &ids {
        let source = SourceId::new(id).expect("id");
        let runs = state.recent_runs(&source, 50).await.expect("runs");
        per_source.push(runs.len());
        let phase = i64::from(fnv1a(id)) % period_ms;
        let mut started: Vec<i64> = runs
            .iter()
            .filter(|r| r.requested_by == "schedule")
            .filter_map(|r| r.started_at.map(|t| t.timestamp_millis()))
            .collect();
        started.sort();
        // The first run is the registration's, at once; the others are due on the grid.
        for t in started.iter().skip(1) {
            late_ms.push((t - phase).rem_euclid(period_ms) as f64);
        }
        for r in &runs {
            *by_replica.entry(r.coordinator.clone()).or_default() += 1;
        }
    }
    late_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        late_ms
            .get(((late_ms.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!();
    println!(
        "== many sources: {SOURCES} filesystem sources every {PERIOD_SECS} s, 2 coordinators, 2 workers, 3 periods"
    );
    let mut replicas: Vec<_> = by_replica.into_iter().collect();
    replicas.sort();
    println!("runs by coordinator: {replicas:?}");
    println!(
        "runs per source: fewest {}, most {} (sources with no run: {})",
        per_source.iter().min().unwrap_or(&0),
        per_source.iter().max().unwrap_or(&0),
        per_source.iter().filter(|n| **n == 0).count()
    );
    println!(
        "start after due time: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} scheduled runs)",
        pct(0.5),
        pct(0.99),
        late_ms.last().copied().unwrap_or(0.0),
        late_ms.len()
    );
}

/// The schedule's phase hash (32-bit FNV-1a of the source id), from its definition.
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}
