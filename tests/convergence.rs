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
//! Seeds: `TIDEMARK_SEED=n` runs one, `TIDEMARK_SEEDS=n` runs n (default 200),
//! `TIDEMARK_SEED_JOBS=n` sets how many run at once (default 10),
//! `TIDEMARK_VERBOSE=1` prints every seed's operations, not only failing ones.
//! Replaying a seed repeats the same operations; the interleaving with the
//! running syncs is up to the scheduler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono_tz::Tz;
use sha2::{Digest, Sha256};
use tidemark::app::App;
use tidemark::config::Config;
use tidemark::queue::jobs::SyncRequest;
use tidemark::simulators::confluence::{self, ConfluenceSim};
use tidemark::simulators::gdrive::{self, DOC_MIME, FORM_MIME, GdriveSim, SHEET_MIME};
use tidemark::sinks::directory::DirectorySink;
use tidemark::sources::gdrive::{Kind, version_string};
use tidemark::state::{RunRecord, RunStatus};
use tidemark::types::{SourceId, SyncMode};
use tokio_util::sync::CancellationToken;

use crate::harness::RedisServer;
use crate::harness::nginx::Nginx;

/// Seeds run by default (`make test`).
const DEFAULT_SEEDS: u64 = 200;
/// Seeds in flight at once by default.
const DEFAULT_JOBS: usize = 10;
/// Longest one sync (or one wait for a run to reach a phase) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const CONF: &str = "eng";
const DRIVE: &str = "drive";
const FILES: &str = "files";
const WEB: &str = "web";
const SOURCES: [&str; 4] = [CONF, DRIVE, FILES, WEB];

/// Directories the filesystem generator puts files in (created on demand).
const FS_DIRS: &[&str] = &[
    "",
    "docs",
    "docs/guides",
    "docs/guides/deep",
    "notes",
    "notes/old",
    "misc",
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// One PRNG per seed: splitmix64 to spread the seed, xorshift64* after.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// A document as compared: what the source says it should be, or what the sink holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Doc {
    version: String,
    title: String,
    parent: Option<String>,
    breadcrumb: Vec<String>,
    content: String,
    links: Vec<(String, Option<String>)>,
}

type Docs = BTreeMap<String, Doc>;

fn short(s: &str) -> String {
    let flat = s.replace('\n', "\\n");
    if flat.chars().count() > 90 {
        format!("{}…", flat.chars().take(90).collect::<String>())
    } else {
        flat
    }
}

/// A compact diff of one source; empty when equal.
fn diff(source: &str, expected: &Docs, got: &Docs) -> String {
    let mut out = String::new();
    for (id, e) in expected {
        match got.get(id) {
            None => {
                let _ = writeln!(
                    out,
                    "  [{source}] missing from sink: {id} (v {:?}, {:?})",
                    e.version, e.title
                );
            }
            Some(g) if g != e => {
                let _ = writeln!(out, "  [{source}] differs: {id}");
                let mut field = |name: &str, want: String, have: String| {
                    if want != have {
                        let _ = writeln!(
                            out,
                            "      {name}: expected {}\n      {:>w$}  got {}",
                            want,
                            "",
                            have,
                            w = name.len()
                        );
                    }
                };
                field("version", short(&e.version), short(&g.version));
                field("title", format!("{:?}", e.title), format!("{:?}", g.title));
                field("parent", format!("{:?}", e.parent), format!("{:?}", g.parent));
                field(
                    "breadcrumb",
                    format!("{:?}", e.breadcrumb),
                    format!("{:?}", g.breadcrumb),
                );
                field("content", short(&e.content), short(&g.content));
                field("links", format!("{:?}", e.links), format!("{:?}", g.links));
            }
            Some(_) => {}
        }
    }
    for (id, g) in got {
        if !expected.contains_key(id) {
            let _ = writeln!(
                out,
                "  [{source}] not in source: {id} (v {:?}, {:?})",
                g.version, g.title
            );
        }
    }
    out
}

/// Writes `body` at `path` atomically (a hidden temp file renamed into place)
/// with modification time `mtime`, so no reader ever sees a half-written file.
fn write_atomic(path: &Path, body: &str, mtime: SystemTime) {
    let dir = path.parent().expect("a file has a parent");
    std::fs::create_dir_all(dir).expect("create parent dirs");
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, body).expect("write temp file");
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// What every seed shares: Redis and nginx.
struct Shared {
    redis_url: String,
    nginx_root: PathBuf,
    nginx_base: String,
}

/// One seed's world.
struct World {
    seed: u64,
    rng: Rng,
    log: Vec<String>,
    /// Makes names, contents and mtimes unique within the seed.
    counter: u64,
    conf: ConfluenceSim,
    conf_sweep: u32,
    /// Every Confluence page id ever created (links may point at deleted ones).
    conf_ids: Vec<String>,
    drive: GdriveSim,
    fs_root: tempfile::TempDir,
    web_dir: PathBuf,
    /// `http://127.0.0.1:<port>/s<seed>/`.
    web_base: String,
    /// Page names in the sitemap, in order.
    sitemap: Vec<String>,
    /// Every page name ever used.
    web_names: Vec<String>,
    /// Titles of the page files that exist.
    web_titles: BTreeMap<String, String>,
    sink_dir: tempfile::TempDir,
    app: App,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Runs this seed waited for and checked.
    runs: usize,
    started: Instant,
}

/// How a round's syncs meet its mutations.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mid {
    /// Everything is applied before the syncs are enqueued.
    Before,
    /// Part is applied right after enqueueing (racing the feeds).
    AfterEnqueue,
    /// Part is applied once every feed has been read (racing the workers).
    AfterFeed,
}

fn sid(s: &str) -> SourceId {
    SourceId::new(s).expect("valid source id")
}

impl World {
    async fn start(seed: u64, shared: &Shared) -> World {
        let mut rng = Rng::new(seed);
        let tz = *rng
            .pick(&[Tz::UTC, Tz::America__New_York, Tz::Asia__Kolkata, Tz::Europe__Berlin])
            .expect("zones");
        let skew_secs = rng.range(0, 600) as i64 - 300;
        let conf_sweep = if rng.chance(50) { 1 } else { 3 };
        let conf = ConfluenceSim::new(confluence::SimConfig {
            pages: rng.range(5, 12),
            seed,
            user_timezone: tz,
            clock_skew: chrono::Duration::seconds(skew_secs),
            ..confluence::SimConfig::default()
        });
        let (conf_addr, _) = conf.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let drive = GdriveSim::new(gdrive::SimConfig {
            files: rng.range(5, 12),
            subfolders: rng.range(2, 4),
            seed,
            ..gdrive::SimConfig::default()
        });
        let (drive_addr, _) = drive.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let outside = drive
            .create_folder("Elsewhere", &drive.drive_root_id())
            .expect("outside folder");
        drive
            .create_file("Outside.txt", &outside, "text/plain", "outside, for now")
            .expect("outside file");

        let fs_root = tempfile::tempdir().expect("tmp");
        let web_dir = shared.nginx_root.join(format!("s{seed}"));
        let _ = std::fs::remove_dir_all(&web_dir);
        std::fs::create_dir_all(&web_dir).expect("web dir");
        let sink_dir = tempfile::tempdir().expect("tmp");
        let page_size = rng.range(2, 4);
        let conf_limit = rng.range(2, 4);
        let drive_page = rng.range(2, 4);
        let web_base = format!("{}s{seed}/", shared.nginx_base);
        let conf_ids = conf.pages().into_iter().map(|p| p.id).collect();
        let text = format!(
            r#"
[redis]
url = "{redis}"
namespace = "s{seed}"
pool_size = 8
response_timeout_ms = 5000

[sync]
page_size = {page_size}
lock_ttl_ms = 3000
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

[[sources]]
id = "{DRIVE}"
kind = "gdrive"
max_delete_share = 1.0
[sources.settings]
base_url = "http://{drive_addr}"
folder_id = "root-folder"
page_size = {drive_page}

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
            sink = sink_dir.path().display(),
            tz = tz.name(),
            fs_root = fs_root.path().display().to_string(),
        );
        let mut w = World {
            seed,
            rng,
            log: Vec::new(),
            counter: 0,
            conf,
            conf_sweep,
            conf_ids,
            drive,
            fs_root,
            web_dir,
            web_base,
            sitemap: Vec::new(),
            web_names: Vec::new(),
            web_titles: BTreeMap::new(),
            sink_dir,
            app: App::new(
                Config::parse(&text, Path::new("unused.toml"), |_| None)
                    .unwrap_or_else(|e| panic!("seed {seed}: config: {e}")),
            )
            .expect("app"),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            runs: 0,
            started: Instant::now(),
        };
        w.log.push(format!(
            "settings: tz {}, skew {skew_secs}s, sweep_every {conf_sweep}, page_size {page_size}, confluence page_limit {conf_limit}, drive page_size {drive_page}",
            tz.name()
        ));
        // Initial filesystem and web content.
        for _ in 0..w.rng.range(5, 12) {
            w.fs_create();
        }
        for _ in 0..w.rng.range(5, 12) {
            w.web_create(true);
        }
        w.web_write_sitemap();
        w.log.push("-- initial content written".into());

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
    async fn stop(&mut self) {
        self.stop.cancel();
        let tasks = futures::future::join_all(self.tasks.drain(..));
        let _ = tokio::time::timeout(Duration::from_secs(20), tasks).await;
    }

    fn tick(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A fresh, strictly increasing modification time (whole seconds, so nginx's ETag moves).
    fn mtime(&mut self) -> SystemTime {
        let n = self.tick();
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + n * 7)
    }

    // ---------------------------------------------------------------- Confluence

    fn conf_body(&mut self) -> (String, Vec<String>) {
        let n = self.tick();
        let mut links = Vec::new();
        let mut body = format!("<p>Body {n} of seed {}.</p>", self.seed);
        for _ in 0..self.rng.range(0, 3) {
            let target = if self.rng.chance(10) {
                "999999".to_owned() // never exists
            } else {
                self.rng
                    .pick(&self.conf_ids)
                    .cloned()
                    .unwrap_or_else(|| "999999".into())
            };
            let _ = write!(
                body,
                "<p>See <a href=\"/wiki/spaces/ENG/pages/{target}\">page {target}</a>.</p>"
            );
            links.push(target);
        }
        (body, links)
    }

    fn conf_ops(&mut self, n: usize) {
        for _ in 0..n {
            let pages = self.conf.pages();
            let ids: Vec<String> = pages.iter().map(|p| p.id.clone()).collect();
            let roll = self.rng.below(100);
            let target = self.rng.pick(&ids).cloned();
            match (roll, target) {
                (0..=29, _) | (_, None) => {
                    let parent = if self.rng.chance(25) {
                        None
                    } else {
                        self.rng.pick(&ids).cloned()
                    };
                    let k = self.tick();
                    let title = format!("Conf page {k}");
                    let (body, links) = self.conf_body();
                    let id = self.conf.create_page(&title, parent.as_deref(), &body);
                    self.log
                        .push(format!("conf create {id} {title:?} parent={parent:?} links={links:?}"));
                    self.conf_ids.push(id);
                }
                (30..=59, Some(id)) => {
                    let (body, links) = self.conf_body();
                    self.conf.update_page(&id, None, Some(&body));
                    self.log.push(format!("conf edit {id} links={links:?}"));
                }
                (60..=79, Some(id)) => {
                    let k = self.tick();
                    let title = format!("Renamed {k}");
                    self.conf.update_page(&id, Some(&title), None);
                    self.log.push(format!("conf rename {id} -> {title:?}"));
                }
                (80..=87, Some(id)) => {
                    let k = self.tick();
                    let title = format!("Rewritten {k}");
                    let (body, links) = self.conf_body();
                    self.conf.update_page(&id, Some(&title), Some(&body));
                    self.log
                        .push(format!("conf rename+edit {id} -> {title:?} links={links:?}"));
                }
                (_, Some(id)) => {
                    if self.conf_sweep == 1 {
                        self.conf.delete_page(&id);
                        self.log.push(format!("conf delete {id} (children move up)"));
                    } else {
                        // CQL cannot see deletions between sweeps (documented): edit instead.
                        let (body, links) = self.conf_body();
                        self.conf.update_page(&id, None, Some(&body));
                        self.log.push(format!("conf edit {id} links={links:?}"));
                    }
                }
            }
        }
    }

    fn conf_expected(&self) -> Docs {
        let pages = self.conf.pages();
        let by_id: HashMap<&str, (&str, Option<&str>)> = pages
            .iter()
            .map(|p| (p.id.as_str(), (p.title.as_str(), p.parent_id.as_deref())))
            .collect();
        pages
            .iter()
            .map(|p| {
                let mut crumbs = Vec::new();
                let mut cur = p.parent_id.as_deref();
                while let Some(id) = cur {
                    let Some((title, parent)) = by_id.get(id) else { break };
                    crumbs.push((*title).to_owned());
                    cur = *parent;
                    if crumbs.len() > pages.len() {
                        break;
                    }
                }
                crumbs.reverse();
                let links = tidemark::sources::confluence::page_links(&p.body)
                    .into_iter()
                    .map(|t| {
                        let title = by_id.get(t.0.as_str()).map(|(title, _)| (*title).to_owned());
                        (t.0, title)
                    })
                    .collect();
                (
                    p.id.clone(),
                    Doc {
                        version: p.version.to_string(),
                        title: p.title.clone(),
                        parent: p.parent_id.clone(),
                        breadcrumb: crumbs,
                        content: p.body.clone(),
                        links,
                    },
                )
            })
            .collect()
    }

    // ---------------------------------------------------------------- Drive

    fn drive_ops(&mut self, n: usize) {
        let root = self.drive.root_folder_id();
        let drive_root = self.drive.drive_root_id();
        for _ in 0..n {
            let files = self.drive.files();
            let folders: Vec<String> = files
                .iter()
                .filter(|f| f.is_folder() && f.id != drive_root)
                .map(|f| f.id.clone())
                .collect();
            let movable_folders: Vec<String> = folders.iter().filter(|f| **f != root).cloned().collect();
            let docs: Vec<(String, bool)> = files
                .iter()
                .filter(|f| !f.is_folder())
                .map(|f| (f.id.clone(), f.trashed))
                .collect();
            let roll = self.rng.below(100);
            let doc = self.rng.pick(&docs).cloned();
            let mut dest = self.rng.pick(&folders).cloned().unwrap_or_else(|| root.clone());
            if self.rng.chance(15) {
                dest = drive_root.clone();
            }
            match (roll, doc) {
                (0..=19, _) | (_, None) => {
                    let k = self.tick();
                    let mime = *self
                        .rng
                        .pick(&[
                            "text/plain",
                            "text/plain",
                            DOC_MIME,
                            "text/markdown",
                            SHEET_MIME,
                            FORM_MIME,
                        ])
                        .expect("mimes");
                    let name = format!("File {k}");
                    let id = self.drive.create_file(&name, &dest, mime, &format!("content {k}"));
                    self.log.push(format!("drive create {id:?} {name:?} {mime} in {dest}"));
                }
                (20..=39, Some((id, _))) => {
                    let k = self.tick();
                    self.drive.update_file(&id, None, Some(&format!("edited {k}")));
                    self.log.push(format!("drive edit {id}"));
                }
                (40..=49, Some((id, _))) => {
                    let k = self.tick();
                    let name = format!("Renamed {k}");
                    self.drive.update_file(&id, Some(&name), None);
                    self.log.push(format!("drive rename {id} -> {name:?}"));
                }
                (50..=57, Some((id, trashed))) => {
                    if trashed {
                        self.drive.untrash_file(&id);
                        self.log.push(format!("drive untrash {id}"));
                    } else {
                        self.drive.trash_file(&id);
                        self.log.push(format!("drive trash {id}"));
                    }
                }
                (58..=63, Some((id, _))) => {
                    self.drive.delete_file(&id);
                    self.log.push(format!("drive delete {id}"));
                }
                (64..=79, Some((id, _))) => {
                    let ok = self.drive.move_file(&id, &dest);
                    self.log.push(format!("drive move {id} -> {dest} ({ok})"));
                }
                (80..=87, _) if !movable_folders.is_empty() => {
                    let f = self.rng.pick(&movable_folders).cloned().expect("non-empty");
                    let ok = self.drive.move_file(&f, &dest);
                    self.log.push(format!("drive move folder {f} -> {dest} ({ok})"));
                }
                (88..=92, _) if !movable_folders.is_empty() => {
                    let f = self.rng.pick(&movable_folders).cloned().expect("non-empty");
                    let trashed = files.iter().any(|x| x.id == f && x.trashed);
                    if trashed {
                        self.drive.untrash_file(&f);
                        self.log.push(format!("drive untrash folder {f}"));
                    } else {
                        self.drive.trash_file(&f);
                        self.log.push(format!("drive trash folder {f}"));
                    }
                }
                (93..=96, _) => {
                    let k = self.tick();
                    let id = self.drive.create_folder(&format!("Folder {k}"), &dest);
                    self.log.push(format!("drive create folder {id:?} in {dest}"));
                }
                (_, _) if !movable_folders.is_empty() => {
                    let f = self.rng.pick(&movable_folders).cloned().expect("non-empty");
                    self.drive.delete_file(&f);
                    self.log.push(format!("drive delete folder {f} (and its subtree)"));
                }
                (_, Some((id, _))) => {
                    let k = self.tick();
                    self.drive.update_file(&id, None, Some(&format!("edited {k}")));
                    self.log.push(format!("drive edit {id}"));
                }
            }
        }
    }

    fn drive_expected(&self) -> Docs {
        self.drive
            .files_in_tree()
            .into_iter()
            .filter_map(|f| {
                let kind = Kind::of_mime(&f.mime_type)?;
                Some((
                    f.id,
                    Doc {
                        version: version_string(kind, &f.version.to_string()),
                        title: f.name,
                        parent: f.parent,
                        breadcrumb: Vec::new(),
                        content: f.content,
                        links: Vec::new(),
                    },
                ))
            })
            .collect()
    }

    // ---------------------------------------------------------------- Filesystem

    /// Every non-hidden file under the root, relative, `/`-separated.
    fn fs_files(&self) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let r = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    walk(&e.path(), &r, out);
                } else if ft.is_file() {
                    out.push(r);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.fs_root.path(), "", &mut out);
        out.sort();
        out
    }

    fn fs_dirs(&self) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let r = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                out.push(r.clone());
                walk(&e.path(), &r, out);
            }
        }
        let mut out = Vec::new();
        walk(self.fs_root.path(), "", &mut out);
        out.sort();
        out
    }

    fn fs_content(&mut self, what: &str) -> String {
        let k = self.tick();
        // Lengths vary too, so size alone often tells edits apart.
        format!("{what} {k} of seed {}\n{}", self.seed, "x".repeat(self.rng.below(40)))
    }

    fn fs_dir(&mut self) -> String {
        let mut dirs: Vec<String> = FS_DIRS.iter().map(|d| (*d).to_owned()).collect();
        dirs.extend(self.fs_dirs());
        self.rng.pick(&dirs).cloned().expect("dirs")
    }

    fn fs_path(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    }

    fn fs_create(&mut self) {
        let dir = self.fs_dir();
        let k = self.tick();
        let rel = Self::fs_path(&dir, &format!("f{k}.md"));
        let body = self.fs_content("file");
        let mtime = self.mtime();
        write_atomic(&self.fs_root.path().join(&rel), &body, mtime);
        self.log.push(format!("fs create {rel}"));
    }

    fn fs_ops(&mut self, n: usize) {
        for _ in 0..n {
            let files = self.fs_files();
            let roll = self.rng.below(100);
            let file = self.rng.pick(&files).cloned();
            let root = self.fs_root.path().to_owned();
            match (roll, file) {
                (0..=24, _) | (_, None) => self.fs_create(),
                (25..=49, Some(rel)) => {
                    let body = self.fs_content("edited");
                    let mtime = self.mtime();
                    write_atomic(&root.join(&rel), &body, mtime);
                    self.log.push(format!("fs edit {rel}"));
                }
                (50..=61, Some(rel)) => {
                    std::fs::remove_file(root.join(&rel)).expect("rm");
                    self.log.push(format!("fs delete {rel}"));
                }
                (62..=79, Some(rel)) => {
                    let dir = self.fs_dir();
                    let k = self.tick();
                    let to = Self::fs_path(&dir, &format!("m{k}.md"));
                    std::fs::create_dir_all(root.join(&to).parent().expect("parent")).expect("mkdir");
                    std::fs::rename(root.join(&rel), root.join(&to)).expect("rename");
                    self.log.push(format!("fs move {rel} -> {to}"));
                }
                (80..=87, Some(rel)) => {
                    let dir = self.fs_dir();
                    let k = self.tick();
                    let to = Self::fs_path(&dir, &format!("m{k}.md"));
                    std::fs::create_dir_all(root.join(&to).parent().expect("parent")).expect("mkdir");
                    std::fs::rename(root.join(&rel), root.join(&to)).expect("rename");
                    let body = self.fs_content("moved and edited");
                    let mtime = self.mtime();
                    write_atomic(&root.join(&to), &body, mtime);
                    self.log.push(format!("fs move+edit {rel} -> {to}"));
                }
                (_, Some(_)) => {
                    let dirs = self.fs_dirs();
                    let Some(from) = self.rng.pick(&dirs).cloned() else {
                        self.fs_create();
                        continue;
                    };
                    let parent = self.fs_dir();
                    if parent == from || parent.starts_with(&format!("{from}/")) {
                        self.log.push(format!("fs rename dir {from} skipped (into itself)"));
                        continue;
                    }
                    let k = self.tick();
                    let to = Self::fs_path(&parent, &format!("d{k}"));
                    std::fs::create_dir_all(root.join(&parent)).expect("mkdir");
                    std::fs::rename(root.join(&from), root.join(&to)).expect("rename dir");
                    self.log.push(format!("fs rename dir {from} -> {to}"));
                }
            }
        }
    }

    fn fs_expected(&self) -> Docs {
        self.fs_files()
            .into_iter()
            .map(|rel| {
                let path = self.fs_root.path().join(&rel);
                let bytes = std::fs::read(&path).expect("read");
                let meta = std::fs::metadata(&path).expect("stat");
                let mtime_ns = meta
                    .modified()
                    .expect("mtime")
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after the epoch")
                    .as_nanos();
                let mut hash = hex::encode(Sha256::digest(&bytes));
                hash.truncate(16);
                let (dir, name) = match rel.rsplit_once('/') {
                    Some((d, n)) => (Some(d.to_owned()), n.to_owned()),
                    None => (None, rel.clone()),
                };
                let breadcrumb = dir
                    .as_deref()
                    .map(|d| d.split('/').map(str::to_owned).collect())
                    .unwrap_or_default();
                (
                    rel.clone(),
                    Doc {
                        version: format!("{}:{mtime_ns}:{hash}", bytes.len()),
                        title: name,
                        parent: dir,
                        breadcrumb,
                        content: String::from_utf8_lossy(&bytes).into_owned(),
                        links: Vec::new(),
                    },
                )
            })
            .collect()
    }

    // ---------------------------------------------------------------- HTTP (nginx)

    /// Writes page `name` with a fresh title and links; returns the link targets.
    fn web_page(&mut self, name: &str) -> Vec<String> {
        let k = self.tick();
        let title = format!("Web {k}");
        let mut links = String::new();
        let mut targets = Vec::new();
        for _ in 0..self.rng.range(0, 3) {
            let target = if self.rng.chance(15) {
                name.to_owned()
            } else {
                self.rng
                    .pick(&self.web_names)
                    .cloned()
                    .unwrap_or_else(|| name.to_owned())
            };
            let href = match self.rng.below(3) {
                0 => target.clone(),
                1 => format!("{target}#part"),
                _ => format!("/s{}/{target}", self.seed),
            };
            let _ = write!(links, "<a href=\"{href}\">{target}</a> ");
            targets.push(href);
        }
        let body = format!(
            "<html><head><title>{title}</title></head><body><p>{title}, revision {k}.</p>{links}</body></html>"
        );
        let mtime = self.mtime();
        write_atomic(&self.web_dir.join(name), &body, mtime);
        self.web_titles.insert(name.to_owned(), title);
        targets
    }

    fn web_create(&mut self, listed: bool) {
        let k = self.tick();
        let name = format!("p{k}.html");
        self.web_names.push(name.clone());
        let links = self.web_page(&name);
        if listed {
            self.sitemap.push(name.clone());
        }
        self.log
            .push(format!("web create {name} (in sitemap: {listed}) links={links:?}"));
    }

    fn web_write_sitemap(&mut self) {
        let entries: String = self
            .sitemap
            .iter()
            .map(|n| format!("<url><loc>{}{n}</loc></url>", self.web_base))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\"?><urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{entries}</urlset>"
        );
        let mtime = self.mtime();
        write_atomic(&self.web_dir.join("sitemap.xml"), &body, mtime);
    }

    fn web_ops(&mut self, n: usize) {
        for _ in 0..n {
            let roll = self.rng.below(100);
            let existing: Vec<String> = self.web_titles.keys().cloned().collect();
            let page = self.rng.pick(&existing).cloned();
            match (roll, page) {
                (0..=24, _) | (_, None) => {
                    let listed = self.rng.chance(85);
                    self.web_create(listed);
                }
                (25..=54, Some(name)) => {
                    let links = self.web_page(&name);
                    self.log.push(format!("web edit {name} links={links:?}"));
                }
                (55..=64, Some(name)) => {
                    std::fs::remove_file(self.web_dir.join(&name)).expect("rm");
                    self.web_titles.remove(&name);
                    self.log.push(format!(
                        "web delete file {name} (in sitemap: {})",
                        self.sitemap.contains(&name)
                    ));
                }
                (65..=74, Some(_)) if !self.sitemap.is_empty() => {
                    let i = self.rng.below(self.sitemap.len());
                    let name = self.sitemap.remove(i);
                    self.log.push(format!("web drop {name} from the sitemap"));
                }
                (75..=89, Some(_)) => {
                    // Lists a page not listed yet: one that exists, or sometimes one that does not.
                    let unlisted: Vec<String> = self
                        .web_names
                        .iter()
                        .filter(|n| !self.sitemap.contains(n))
                        .cloned()
                        .collect();
                    match self.rng.pick(&unlisted).cloned() {
                        Some(name) => {
                            self.log.push(format!(
                                "web list {name} in the sitemap (file exists: {})",
                                self.web_titles.contains_key(&name)
                            ));
                            self.sitemap.push(name);
                        }
                        None => self.web_create(true),
                    }
                }
                (_, Some(_)) => {
                    // Restores a page file that is gone.
                    let gone: Vec<String> = self
                        .web_names
                        .iter()
                        .filter(|n| !self.web_titles.contains_key(*n))
                        .cloned()
                        .collect();
                    match self.rng.pick(&gone).cloned() {
                        Some(name) => {
                            let links = self.web_page(&name);
                            self.log.push(format!("web restore file {name} links={links:?}"));
                        }
                        None => self.web_create(true),
                    }
                }
            }
        }
        self.web_write_sitemap();
    }

    fn web_expected(&self) -> Docs {
        let listed: Vec<&String> = {
            let mut seen = BTreeSet::new();
            self.sitemap.iter().filter(|n| seen.insert(n.as_str())).collect()
        };
        let present: BTreeMap<&str, &str> = listed
            .iter()
            .filter_map(|n| self.web_titles.get(*n).map(|t| (n.as_str(), t.as_str())))
            .collect();
        let mut out = Docs::new();
        for (name, title) in &present {
            let path = self.web_dir.join(name);
            let content = std::fs::read_to_string(&path).expect("read page");
            let meta = std::fs::metadata(&path).expect("stat page");
            let secs = meta
                .modified()
                .expect("mtime")
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after the epoch")
                .as_secs();
            let etag = format!("\"{secs:x}-{:x}\"", meta.len());
            // Links: `href="<name>"`, `"<name>#part"` or `"/s<seed>/<name>"`, all the same page.
            let mut links = Vec::new();
            let mut seen = BTreeSet::new();
            let mut rest = content.as_str();
            while let Some(at) = rest.find("<a href=\"") {
                rest = &rest[at + 9..];
                let href = &rest[..rest.find('"').expect("closing quote")];
                let target = href
                    .trim_start_matches(&format!("/s{}/", self.seed))
                    .split('#')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                // Every same-site link is kept; a target tidemark does not hold
                // (outside the sitemap, or listed with no file behind it) has no title.
                if target != *name && seen.insert(target.clone()) {
                    let t = present.get(target.as_str()).map(|t| (*t).to_owned());
                    links.push((format!("{}{target}", self.web_base), t));
                }
            }
            out.insert(
                format!("{}{name}", self.web_base),
                Doc {
                    version: format!("etag:{etag}\n{title}"),
                    title: (*title).to_owned(),
                    parent: None,
                    breadcrumb: Vec::new(),
                    content,
                    links,
                },
            );
        }
        out
    }

    // ---------------------------------------------------------------- Sync and compare

    fn expected(&self, source: &str) -> Docs {
        match source {
            CONF => self.conf_expected(),
            DRIVE => self.drive_expected(),
            FILES => self.fs_expected(),
            WEB => self.web_expected(),
            other => unreachable!("unknown source {other}"),
        }
    }

    fn sink(&self, source: &str) -> Docs {
        DirectorySink::new(self.sink_dir.path())
            .read_all(&sid(source))
            .expect("sink readable")
            .into_iter()
            .map(|d| {
                (
                    d.id.0,
                    Doc {
                        version: d.version,
                        title: d.title,
                        parent: d.parent.map(|p| p.0),
                        breadcrumb: d.breadcrumb,
                        content: d.content,
                        links: d.links.into_iter().map(|l| (l.target.0, l.title)).collect(),
                    },
                )
            })
            .collect()
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

    /// Waits until every request's run has read its feed (or ended).
    async fn wait_feeds_read(&self, requests: &[(&str, String)]) -> Result<(), String> {
        let state = self.app.state();
        let deadline = Instant::now() + RUN_TIMEOUT;
        for (source, request) in requests {
            let source = sid(source);
            loop {
                if let Some(run) = state
                    .run_for_request(&source, request)
                    .await
                    .map_err(|e| e.to_string())?
                    && state
                        .run(&source, &run)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_some_and(|r| r.feed_done || r.status.is_terminal())
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("[{source}] run of {request} did not read its feed in time"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Checks one ended run: completed, and fell back to a listing when tokens were expired.
    fn check_run(&self, source: &str, rec: &RunRecord, expired: bool) -> Result<(), String> {
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

    fn apply_ops(&mut self, scale: usize) {
        let n = self.rng.range(1, 3 * scale);
        self.conf_ops(n);
        let n = self.rng.range(1, 3 * scale);
        self.drive_ops(n);
        let n = self.rng.range(1, 3 * scale);
        self.fs_ops(n);
        let n = self.rng.range(1, 3 * scale);
        self.web_ops(n);
    }

    /// One round: operations, syncs of all four sources (maybe racing part of the
    /// operations), every run checked.
    async fn round(&mut self, round: usize) -> Result<(), String> {
        let mid = match self.rng.below(3) {
            0 => Mid::Before,
            1 => Mid::AfterEnqueue,
            _ => Mid::AfterFeed,
        };
        let expire = self.rng.chance(30);
        let conf_500 = self.rng.chance(25);
        let conf_429 = self.rng.chance(3);
        let drive_429 = self.rng.chance(25);
        self.log.push(format!(
            "-- round {round} (at {:.2}s): {mid:?}{}{}{}{}",
            self.started.elapsed().as_secs_f64(),
            if expire { ", drive tokens expired" } else { "" },
            if conf_500 { ", confluence 2x500" } else { "" },
            if conf_429 {
                ", confluence 2x429 (Retry-After 1s)"
            } else {
                ""
            },
            if drive_429 { ", drive 2x429" } else { "" },
        ));
        self.apply_ops(2);
        if expire {
            self.drive.expire_all_tokens();
        }
        if conf_429 {
            self.conf.fail_next(2, 429);
        } else if conf_500 {
            self.conf.fail_next(2, 500);
        }
        if drive_429 {
            self.drive.fail_next(2, 429);
        }
        let mut requests = Vec::new();
        for s in SOURCES {
            requests.push((s, self.enqueue(s).await));
        }
        match mid {
            Mid::Before => {}
            Mid::AfterEnqueue => {
                self.log.push("   (syncs enqueued; racing the feeds:)".into());
                self.apply_ops(1);
            }
            Mid::AfterFeed => {
                self.wait_feeds_read(&requests).await?;
                self.log.push("   (feeds read; racing the workers:)".into());
                self.apply_ops(1);
            }
        }
        for (s, r) in &requests {
            let rec = self.wait(s, r).await?;
            self.runs += 1;
            self.check_run(s, &rec, expire)?;
        }
        Ok(())
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
        for s in SOURCES {
            let (e, g) = (self.expected(s), self.sink(s));
            out.push_str(&diff(s, &e, &g));
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(format!("sink differs from source:\n{out}"))
        }
    }

    /// The whole scenario of one seed.
    async fn scenario(&mut self) -> Result<(), String> {
        self.log
            .push("-- first sync (no checkpoint yet: complete listings)".into());
        self.sync_all().await?;
        self.compare()
            .map_err(|e| format!("after the first sync, nothing changed since: {e}"))?;
        let rounds = self.rng.range(3, 5);
        for round in 1..=rounds {
            self.round(round).await?;
        }
        self.log.push(format!(
            "-- quiet (at {:.2}s): one more sync of every source",
            self.started.elapsed().as_secs_f64()
        ));
        self.sync_all().await?;
        self.compare()?;
        // Converged means stable: with nothing changed, the next run has nothing to do.
        self.log.push(format!(
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

/// Runs one seed to its end; `Err` carries the report.
async fn run_seed(seed: u64, shared: Arc<Shared>) -> Result<usize, String> {
    let mut w = World::start(seed, &shared).await;
    let outcome = w.scenario().await;
    let t = Instant::now();
    w.stop().await;
    w.log.push(format!("-- stopped in {:.2}s", t.elapsed().as_secs_f64()));
    let _ = std::fs::remove_dir_all(&w.web_dir);
    match outcome {
        Ok(()) => {
            if std::env::var_os("TIDEMARK_VERBOSE").is_some() {
                eprintln!("seed {seed} converged:\n    {}", w.log.join("\n    "));
            }
            Ok(w.runs)
        }
        Err(e) => {
            let mut report = format!("seed {seed} FAILED: {e}\n  operations:\n");
            for l in &w.log {
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
    let seeds: Vec<u64> = match env_u64("TIDEMARK_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("TIDEMARK_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let jobs = env_u64("TIDEMARK_SEED_JOBS").map_or(DEFAULT_JOBS, |j| j.max(1) as usize);
    let redis = RedisServer::start_with_fsync("no");
    let nginx = Nginx::start();
    let shared = Arc::new(Shared {
        redis_url: redis.url(),
        nginx_root: nginx.root(),
        nginx_base: nginx.url(""),
    });
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
