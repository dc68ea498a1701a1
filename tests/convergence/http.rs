//! The HTTP source (`web`, pages served by nginx from this seed's own
//! subdirectory, listed by a sitemap): how the test creates, edits, deletes
//! and restores page files and lists and drops sitemap entries, and what the
//! sink must hold for it: every sitemap URL that nginx serves (not 404), with
//! `etag:"<mtime hex>-<size hex>"\n<title>`, `<title>`, the body's text (what
//! a reader sees), and the `<a href>` targets that are in the sitemap, with their titles.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::compare::{Doc, Docs};
use super::ops::{Ops, SimulatedSource, modified_since_epoch, write_atomic};

/// The seed's pages under nginx, and what the test remembers about them.
pub struct Web {
    seed: u64,
    /// `<nginx root>/s<seed>`.
    pub dir: PathBuf,
    /// `http://127.0.0.1:<port>/s<seed>/`.
    pub base: String,
    /// Page names in the sitemap, in order.
    sitemap: Vec<String>,
    /// Every page name ever used.
    names: Vec<String>,
    /// Titles of the page files that exist.
    titles: BTreeMap<String, String>,
}

impl Web {
    /// An empty directory `s<seed>` under nginx's root (`nginx_base` is its URL).
    pub fn new(nginx_root: &Path, nginx_base: &str, seed: u64) -> Self {
        let dir = nginx_root.join(format!("s{seed}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("web dir");
        Web {
            seed,
            dir,
            base: format!("{nginx_base}s{seed}/"),
            sitemap: Vec::new(),
            names: Vec::new(),
            titles: BTreeMap::new(),
        }
    }

    /// The initial pages (a drawn count, all listed) and the sitemap.
    pub fn populate(&mut self, ops: &mut Ops) {
        for _ in 0..ops.rng.range(5, 12) {
            self.create(ops, true);
        }
        self.write_sitemap(ops);
    }

    /// Writes page `name` with a fresh title and links; returns the link targets.
    fn page(&mut self, ops: &mut Ops, name: &str) -> Vec<String> {
        let k = ops.tick();
        let title = format!("Web {k}");
        let mut links = String::new();
        let mut targets = Vec::new();
        for _ in 0..ops.rng.range(0, 3) {
            let target = if ops.rng.chance(15) {
                name.to_owned()
            } else {
                ops.rng.pick(&self.names).cloned().unwrap_or_else(|| name.to_owned())
            };
            let href = match ops.rng.below(3) {
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
        let mtime = ops.mtime();
        write_atomic(&self.dir.join(name), &body, mtime);
        self.titles.insert(name.to_owned(), title);
        targets
    }

    fn create(&mut self, ops: &mut Ops, listed: bool) {
        let k = ops.tick();
        let name = format!("p{k}.html");
        self.names.push(name.clone());
        let links = self.page(ops, &name);
        if listed {
            self.sitemap.push(name.clone());
        }
        ops.log
            .push(format!("web create {name} (in sitemap: {listed}) links={links:?}"));
    }

    fn write_sitemap(&self, ops: &mut Ops) {
        let entries: String = self
            .sitemap
            .iter()
            .map(|n| format!("<url><loc>{}{n}</loc></url>", self.base))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\"?><urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{entries}</urlset>"
        );
        let mtime = ops.mtime();
        write_atomic(&self.dir.join("sitemap.xml"), &body, mtime);
    }
}

impl SimulatedSource for Web {
    fn mutate(&mut self, ops: &mut Ops, n: usize) {
        for _ in 0..n {
            let roll = ops.rng.below(100);
            let existing: Vec<String> = self.titles.keys().cloned().collect();
            let page = ops.rng.pick(&existing).cloned();
            match (roll, page) {
                (0..=24, _) | (_, None) => {
                    let listed = ops.rng.chance(85);
                    self.create(ops, listed);
                }
                (25..=54, Some(name)) => {
                    let links = self.page(ops, &name);
                    ops.log.push(format!("web edit {name} links={links:?}"));
                }
                (55..=64, Some(name)) => {
                    std::fs::remove_file(self.dir.join(&name)).expect("rm");
                    self.titles.remove(&name);
                    ops.log.push(format!(
                        "web delete file {name} (in sitemap: {})",
                        self.sitemap.contains(&name)
                    ));
                }
                (65..=74, Some(_)) if !self.sitemap.is_empty() => {
                    let i = ops.rng.below(self.sitemap.len());
                    let name = self.sitemap.remove(i);
                    ops.log.push(format!("web drop {name} from the sitemap"));
                }
                (75..=89, Some(_)) => {
                    // Lists a page not listed yet: one that exists, or sometimes one that does not.
                    let unlisted: Vec<String> = self
                        .names
                        .iter()
                        .filter(|n| !self.sitemap.contains(n))
                        .cloned()
                        .collect();
                    match ops.rng.pick(&unlisted).cloned() {
                        Some(name) => {
                            ops.log.push(format!(
                                "web list {name} in the sitemap (file exists: {})",
                                self.titles.contains_key(&name)
                            ));
                            self.sitemap.push(name);
                        }
                        None => self.create(ops, true),
                    }
                }
                (_, Some(_)) => {
                    // Restores a page file that is gone.
                    let gone: Vec<String> = self
                        .names
                        .iter()
                        .filter(|n| !self.titles.contains_key(*n))
                        .cloned()
                        .collect();
                    match ops.rng.pick(&gone).cloned() {
                        Some(name) => {
                            let links = self.page(ops, &name);
                            ops.log.push(format!("web restore file {name} links={links:?}"));
                        }
                        None => self.create(ops, true),
                    }
                }
            }
        }
        self.write_sitemap(ops);
    }

    fn expected(&self) -> Docs {
        let listed: Vec<&String> = {
            let mut seen = BTreeSet::new();
            self.sitemap.iter().filter(|n| seen.insert(n.as_str())).collect()
        };
        let present: BTreeMap<&str, &str> = listed
            .iter()
            .filter_map(|n| self.titles.get(*n).map(|t| (n.as_str(), t.as_str())))
            .collect();
        let mut out = Docs::new();
        for (name, title) in &present {
            let path = self.dir.join(name);
            let content = std::fs::read_to_string(&path).expect("read page");
            let meta = std::fs::metadata(&path).expect("stat page");
            let secs = modified_since_epoch(&meta).as_secs();
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
                    links.push((format!("{}{target}", self.base), t));
                }
            }
            out.insert(
                format!("{}{name}", self.base),
                Doc {
                    version: format!("etag:{etag}\n{title}"),
                    title: (*title).to_owned(),
                    parent: None,
                    breadcrumb: Vec::new(),
                    content: crate::harness::words(&body_text(&content)),
                    links,
                    // Public unless configured.
                    readers: vec![vec!["anyone".to_owned()]],
                },
            );
        }
        out
    }
}

/// What a reader sees of one of this test's pages: the text of its `<body>`
/// with the tags taken out (the pages have no scripts, styles or entities).
fn body_text(page: &str) -> String {
    let body = page
        .split_once("<body>")
        .and_then(|(_, rest)| rest.split_once("</body>"))
        .map_or(page, |(body, _)| body);
    let mut text = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}
