//! Shared integration-test harness: a real redis-server, the Confluence
//! simulator on a free port, a temp sink, and coordinators/workers run
//! in-process (or as child processes of the real binary) against them.

pub mod nginx;
pub mod points;
pub mod postgres;
pub mod receiver;
pub mod redis_server;
pub mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidemark::app::App;
use tidemark::config::Config;
use tidemark::queue;
use tidemark::queue::jobs::SyncRequest;
use tidemark::simulators::confluence::{ConfluenceSim, SimConfig};
use tidemark::sinks::SinkDocument;
use tidemark::sinks::directory::DirectorySink;
use tidemark::state::RunRecord;
use tidemark::types::{SourceId, SyncMode};
use tokio_util::sync::CancellationToken;

pub use self::redis_server::{RedisCluster, RedisServer};

/// Knobs for one test environment.
#[derive(Clone)]
pub struct Options {
    /// Pages seeded in the simulated space.
    pub pages: usize,
    /// Documents per job.
    pub page_size: usize,
    /// Extra lines for `[sources.settings]`.
    pub source_settings: String,
    /// Extra lines for the Confluence `[[sources]]` entry itself (e.g. `max_delete_share = 0.2`).
    pub source_fields: String,
    /// Extra lines for `[sync]`.
    pub sync: String,
    /// Extra lines for `[queue]` (stream retention).
    pub queue: String,
    /// Simulator settings.
    pub sim: SimConfig,
    /// Redis `appendfsync` (tests: `always`, so a killed Redis loses nothing).
    pub appendfsync: &'static str,
    /// Separate Redis nodes for the lock (`redis.lock_urls`); 0 means the main Redis.
    pub lock_nodes: usize,
    /// `[sync] lock_ttl_ms` (a run survives a Redis outage shorter than its lease).
    pub lock_ttl_ms: u64,
    /// `[sync] job_idle_timeout_ms`: how long a delivered page may go
    /// untouched before another worker claims it (short, so tests of a
    /// killed worker are quick).
    pub job_idle_timeout_ms: u64,
    /// Replaces the Confluence `[[sources]]` block: a whole `[[sources]]` entry
    /// (id must be `eng`) for another connector. The Confluence simulator still runs.
    pub source_toml: Option<String>,
    /// Replaces the directory sink: the body of `[sink]` (e.g. a `postgres` URL).
    pub sink_toml: Option<String>,
    /// More sinks after `[sink]`: whole `[[sinks]]` entries.
    pub more_sinks: String,
    /// More sources after the Confluence one: whole `[[sources]]` entries.
    pub more_sources: String,
    /// Redis over TLS as an ACL user ([`RedisServer::start_secure`]).
    pub secure_redis: bool,
    /// A 3-primary Redis Cluster instead of one server ([`RedisCluster`]):
    /// `Env::redis` is its first node, `Env::cluster` the whole.
    pub cluster: bool,
    /// With `cluster`: a replica per primary, for failover.
    pub cluster_replicas: bool,
    /// Extra lines for `[redis]` (e.g. `wait_replicas = 1`).
    pub more_redis: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pages: 60,
            page_size: 20,
            source_settings: String::new(),
            source_fields: String::new(),
            sync: String::new(),
            queue: String::new(),
            sim: SimConfig::default(),
            appendfsync: "always",
            lock_nodes: 0,
            lock_ttl_ms: 3000,
            job_idle_timeout_ms: 1000,
            source_toml: None,
            sink_toml: None,
            more_sinks: String::new(),
            more_sources: String::new(),
            secure_redis: false,
            cluster: false,
            cluster_replicas: false,
            more_redis: String::new(),
        }
    }
}

/// One isolated environment: its own Redis, simulator, sink directory and config.
pub struct Env {
    /// The Redis server; with `Options::cluster`, the cluster's seed node.
    pub redis: RedisServer,
    /// With `Options::cluster`: the cluster's other nodes, for assertions
    /// through [`Env::cluster_conn`].
    pub cluster_nodes: Vec<RedisServer>,
    pub lock_nodes: Vec<RedisServer>,
    pub sim: ConfluenceSim,
    pub sink_dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub app: App,
    pub source: SourceId,
    stop: CancellationToken,
    children: Vec<Child>,
}

impl Env {
    /// [`Env::start`] with one coordinator and two workers running.
    pub async fn fleet(opts: Options) -> Env {
        let env = Env::start(opts).await;
        env.coordinator("c1");
        env.worker("w1");
        env.worker("w2");
        env
    }

    /// The problem statement's set-up: a 500-page space (pages of 50 documents)
    /// with one coordinator and two workers running.
    pub async fn five_hundred_pages() -> Env {
        Env::fleet(Options {
            pages: 500,
            page_size: 50,
            ..Options::default()
        })
        .await
    }

    /// Starts Redis and the simulator and writes a config pointing at them. No processes yet.
    pub async fn start(opts: Options) -> Env {
        let (redis, cluster_nodes) = if opts.cluster {
            let mut nodes = RedisCluster::start_with_replicas(3, usize::from(opts.cluster_replicas)).nodes;
            let seed = nodes.remove(0);
            (seed, nodes)
        } else if opts.secure_redis {
            (RedisServer::start_secure(), Vec::new())
        } else {
            (RedisServer::start_with_fsync(opts.appendfsync), Vec::new())
        };
        let sim = ConfluenceSim::new(SimConfig {
            pages: opts.pages,
            ..opts.sim.clone()
        });
        let (addr, _handle) = sim
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator binds");
        let lock_nodes: Vec<RedisServer> = (0..opts.lock_nodes).map(|_| RedisServer::start()).collect();
        let lock_urls = if lock_nodes.is_empty() {
            String::new()
        } else {
            let urls: Vec<String> = lock_nodes.iter().map(|n| format!("{:?}", n.url())).collect();
            format!("lock_urls = [{}]", urls.join(", "))
        };
        let sink_dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            r#"
[redis]
{redis}
response_timeout_ms = 2000
{lock_urls}
{more_redis}

[sync]
page_size = {page_size}
lock_ttl_ms = {lock_ttl_ms}
job_idle_timeout_ms = {job_idle_timeout_ms}
block_ms = 200
max_deliveries = 3
stall_timeout_secs = 60
{sync}

[queue]
{queue}

[sink]
{sink}

{more_sinks}

[api]
listen = ""

{source}
{more_sources}
"#,
            redis = if opts.cluster {
                let seeds: Vec<String> = cluster_nodes.iter().map(|n| format!("{:?}", n.url())).collect();
                format!(
                    "{}\ncluster = true\ncluster_seeds = [{}]",
                    redis.client_toml(),
                    seeds.join(", ")
                )
            } else {
                redis.client_toml()
            },
            lock_urls = lock_urls,
            more_redis = opts.more_redis,
            page_size = opts.page_size,
            lock_ttl_ms = opts.lock_ttl_ms,
            job_idle_timeout_ms = opts.job_idle_timeout_ms,
            sync = opts.sync,
            queue = opts.queue,
            sink = opts
                .sink_toml
                .clone()
                .unwrap_or_else(|| format!("kind = \"directory\"\npath = \"{}\"", sink_dir.path().display())),
            more_sinks = opts.more_sinks,
            more_sources = opts.more_sources,
            source = opts.source_toml.clone().unwrap_or_else(|| format!(
                "[[sources]]\nid = \"eng\"\nkind = \"confluence\"\n{}\n[sources.settings]\nbase_url = \"http://{addr}\"\nspace_key = \"{}\"\n{}\n",
                opts.source_fields, opts.sim.space_key, opts.source_settings
            )),
        );
        let config_path = sink_dir.path().join("tidemark.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::load(&config_path).expect("test config is valid");
        let app = App::new(config).expect("app wires up");
        Env {
            redis,
            cluster_nodes,
            lock_nodes,
            sim,
            sink_dir,
            config_path,
            app,
            source: SourceId::new("eng").unwrap(),
            stop: CancellationToken::new(),
            children: Vec::new(),
        }
    }

    /// A connection following the cluster's redirections (`Options::cluster`).
    #[allow(dead_code)]
    pub fn cluster_conn(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = std::iter::once(&self.redis)
            .chain(&self.cluster_nodes)
            .map(|n| n.url())
            .collect();
        redis::cluster::ClusterClient::new(urls)
            .and_then(|c| c.get_connection())
            .expect("connect to the test cluster")
    }

    /// Starts a coordinator task.
    pub fn coordinator(&self, name: &str) -> Running {
        let token = self.stop.child_token();
        let c = self.app.coordinator(name);
        let t = token.clone();
        let handle = tokio::spawn(async move {
            let _ = c.run(t, Duration::from_secs(5)).await;
        });
        Running { token, handle }
    }

    /// Starts a worker task.
    pub fn worker(&self, name: &str) -> Running {
        let token = self.stop.child_token();
        let w = self.app.worker(name);
        let t = token.clone();
        let handle = tokio::spawn(async move {
            let _ = w.run(t, Duration::from_secs(5)).await;
        });
        Running { token, handle }
    }

    /// Starts the real binary as a child process (`tidemark <args> --config ...`);
    /// its warnings and errors go to [`Env::process_log`].
    pub fn spawn_process(&mut self, args: &[&str]) -> u32 {
        let log = std::fs::File::create(self.process_log_path(self.children.len())).expect("create process log");
        let child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tidemark");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn process_log_path(&self, index: usize) -> PathBuf {
        self.sink_dir.path().join(format!("process-{index}.log"))
    }

    fn child_index(&self, pid: u32) -> usize {
        self.children
            .iter()
            .position(|c| c.id() == pid)
            .unwrap_or_else(|| panic!("no child process {pid}"))
    }

    /// What the child process `pid` wrote to stderr so far.
    #[allow(dead_code)]
    pub fn process_log(&self, pid: u32) -> String {
        std::fs::read_to_string(self.process_log_path(self.child_index(pid))).unwrap_or_default()
    }

    /// The exit status of child process `pid`, if it has exited.
    #[allow(dead_code)]
    pub fn process_exited(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let i = self.child_index(pid);
        self.children[i].try_wait().expect("child status")
    }

    /// Enqueues a request and returns its id.
    pub async fn enqueue(&self, mode: SyncMode, by: &str) -> String {
        let req = SyncRequest::new(self.source.clone(), mode, by);
        queue::enqueue(&self.app.pool, &self.app.keys, &req)
            .await
            .expect("enqueue")
    }

    /// Waits for the run serving `request_id` to end.
    pub async fn wait(&self, request_id: &str) -> RunRecord {
        let done = self
            .app
            .state()
            .wait_for_request(
                &self.source,
                request_id,
                Duration::from_millis(20),
                // Generous: on a loaded CI machine a run of a light test can
                // wait a long while for the CPU; a hang still fails.
                Duration::from_secs(180),
            )
            .await
            .expect("state readable");
        match done {
            Some(record) => record,
            None => {
                // What the run got to, for whoever reads the failure.
                let state = self.app.state();
                let latest = state.request_outcome(&self.source, request_id).await;
                let queues = tidemark::report::queue_status(&self.app).await;
                panic!("request {request_id} did not finish within 180s; its run: {latest:?}; queues: {queues:?}")
            }
        }
    }

    /// Waits until the run serving `request_id` has read its feed and enqueued its pages.
    pub async fn wait_feed_read(&self, request_id: &str) {
        let state = self.app.state();
        // The feed is recorded read before the pages go out (a few at a time,
        // up to `max_pages_in_flight`), so both are waited for.
        let window = self.app.config.sync.max_pages_in_flight.get() as u64;
        wait_until(
            "the run read its feed and enqueued its pages",
            Duration::from_secs(20),
            || async {
                let Some(run) = state
                    .run_for_request(&self.source, request_id)
                    .await
                    .expect("state readable")
                else {
                    return false;
                };
                match state.run(&self.source, &run).await.expect("state readable") {
                    // Pages already finished may have been trimmed off the stream.
                    Some(r) if r.feed_done => {
                        let out = self.pages_enqueued(&run).max(r.pages_done + r.pages_failed);
                        out >= r.pages_total.min(window)
                    }
                    _ => false,
                }
            },
        )
        .await;
    }

    /// How many distinct pages of `run` are on the job streams.
    fn pages_enqueued(&self, run: &tidemark::types::RunId) -> u64 {
        let mut pages = std::collections::BTreeSet::new();
        for stream in self.app.keys.job_streams() {
            let range = redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").clone();
            let reply: redis::streams::StreamRangeReply = if self.cluster_nodes.is_empty() {
                range.query(&mut self.redis.conn())
            } else {
                range.query(&mut self.cluster_conn())
            }
            .expect("job stream readable");
            for entry in reply.ids {
                let field = |name: &str| match entry.map.get(name) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                if field("run") == run.0 {
                    pages.insert(field("page"));
                }
            }
        }
        pages.len() as u64
    }

    /// Enqueues a sync and waits for its run.
    pub async fn sync(&self, mode: SyncMode) -> RunRecord {
        let id = self.enqueue(mode, "test").await;
        self.wait(&id).await
    }

    /// Everything in the sink for the test source.
    /// Adds an entry of raw `fields` to `stream` by hand (a malformed request
    /// or job, a dead letter): what no tidemark code would write.
    #[allow(dead_code)]
    pub fn xadd_raw(&self, stream: &str, fields: &[(&str, &[u8])]) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        let _: String = cmd.query(&mut self.redis.conn()).expect("XADD");
    }

    pub fn sink_docs(&self) -> Vec<SinkDocument> {
        DirectorySink::new(self.sink_dir.path())
            .read_all(&self.source)
            .expect("sink readable")
    }

    /// Who may read `id` by the simulator's space permissions and
    /// restrictions: readers, then each further list.
    pub fn expected_readers(&self, id: &str) -> Vec<Vec<String>> {
        readers_of(&self.sim.expected_permissions(id).unwrap_or_default())
    }

    /// Asserts the sink holds exactly the simulator's pages: ids, versions,
    /// titles, content, breadcrumbs, links and readers.
    pub fn assert_sink_matches_source(&self) {
        let pages = self.sim.pages();
        let titles: BTreeMap<String, (String, Option<String>)> = pages
            .iter()
            .map(|p| (p.id.clone(), (p.title.clone(), p.parent_id.clone())))
            .collect();
        type Expected = (
            String,
            String,
            String,
            Vec<String>,
            Vec<(String, Option<String>)>,
            Vec<Vec<String>>,
        );
        let expected: BTreeMap<String, Expected> = pages
            .iter()
            .map(|p| {
                let mut crumbs = Vec::new();
                let mut cur = p.parent_id.clone();
                while let Some(id) = cur {
                    match titles.get(&id) {
                        Some((t, parent)) => {
                            crumbs.push(t.clone());
                            cur = parent.clone();
                        }
                        None => break,
                    }
                }
                crumbs.reverse();
                let links = tidemark::sources::confluence::page_links(&p.body)
                    .into_iter()
                    .map(|t| {
                        let title = titles.get(&t.0).map(|(title, _)| title.clone());
                        (t.0, title)
                    })
                    .collect();
                (
                    p.id.clone(),
                    (
                        p.version.to_string(),
                        p.title.clone(),
                        tidemark::extract::storage_text(&p.body),
                        crumbs,
                        links,
                        self.expected_readers(&p.id),
                    ),
                )
            })
            .collect();
        // Attachments: under their page, so their breadcrumb is the page's plus its title.
        let mut expected = expected;
        for a in self.sim.attachments() {
            let Some((_, _, _, page_crumbs, _, _)) = expected.get(&a.page_id).cloned() else {
                continue;
            };
            let mut crumbs = page_crumbs;
            crumbs.extend(titles.get(&a.page_id).map(|(t, _)| t.clone()));
            expected.insert(
                a.id.clone(),
                (
                    a.version.to_string(),
                    a.title.clone(),
                    a.text.clone(),
                    crumbs,
                    Vec::new(),
                    self.expected_readers(&a.id),
                ),
            );
        }
        let got: BTreeMap<String, Expected> = self
            .sink_docs()
            .into_iter()
            .map(|d| {
                let links = d.links.into_iter().map(|l| (l.target.0, l.title)).collect();
                let readers = readers_of(&d.permissions);
                (d.id.0, (d.version, d.title, d.content, d.breadcrumb, links, readers))
            })
            .collect();
        assert_same_docs("source", &expected, &got);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Readers as compared: `readers`, then `also_required`.
pub fn readers_of(p: &tidemark::permissions::Permissions) -> Vec<Vec<String>> {
    std::iter::once(p.readers.clone())
        .chain(p.also_required.iter().cloned())
        .collect()
}

/// Text compared by its words: extraction may lay lines out differently (a
/// PDF's line breaks, trailing newlines) without the text being different.
pub fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Panics with a readable diff (missing, extra, and up to 5 differing ids) if
/// the sink's documents (`got`) are not exactly those of the source (`expected`).
pub fn assert_same_docs<V: PartialEq + std::fmt::Debug>(
    source: &str,
    expected: &BTreeMap<String, V>,
    got: &BTreeMap<String, V>,
) {
    if expected == got {
        return;
    }
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, v)| format!("{k}: expected {v:?}\n      got {:?}", got[k]))
        .take(5)
        .collect();
    panic!(
        "sink differs from {source}\n  missing from sink: {missing:?}\n  not in {source}: {extra:?}\n  differing:\n    {}",
        differ.join("\n    ")
    );
}

/// A coordinator or worker task started by the harness.
pub struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Asks it to stop and waits until it has (in-flight work finished).
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }
}

/// Tests that load the whole machine (the chaos fleet, the convergence seeds)
/// take turns: run together on a 2-core CI machine they starve each other and
/// every light test running beside them. Hold the guard for the test's length.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Polls `check` until it returns true or `timeout` passes (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Serves on a thread of its own with a runtime of its own, so a server in a
/// test (a receiver, a proxy) keeps answering whatever the test's runtime
/// does: `serve` gets `listener`, made async.
pub fn serve_on_own_thread<F, Fut>(listener: std::net::TcpListener, serve: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            serve(listener).await;
        });
    })
}

/// `[[sources]]` entries for filesystem sources `ids`, all over `root`, each
/// scheduled every `period_secs` (the many-sources schedule test and bench).
pub fn scheduled_filesystem_sources(ids: &[String], root: &std::path::Path, period_secs: u64) -> String {
    ids.iter()
        .map(|id| {
            format!(
                "[[sources]]\nid = \"{id}\"\nkind = \"filesystem\"\nschedule_every_secs = {period_secs}\n\
                 [sources.settings]\nroot = {:?}\n\n",
                root.display().to_string()
            )
        })
        .collect()
}

/// Waits until the latest run of `source` has read its feed and finished
/// `pages` pages (a large run under way, for the fairness test and bench).
pub async fn wait_for_pages_done(env: &Env, source: &SourceId, pages: u64, timeout: Duration) {
    let state = env.app.state();
    wait_until("the large run is working through its pages", timeout, || {
        let (state, source) = (state.clone(), source.clone());
        async move {
            let runs = state.recent_runs(&source, 1).await.unwrap_or_default();
            runs.first().is_some_and(|r| r.feed_done && r.pages_done >= pages)
        }
    })
    .await;
}
