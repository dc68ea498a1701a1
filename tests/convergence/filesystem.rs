//! The filesystem source (`files`, a temporary directory tree): how the test
//! creates, edits, deletes and moves its files and renames its directories,
//! and what the sink must hold for it: every non-hidden file, id = relative
//! path, title = file name, parent = directory, breadcrumb = directory names,
//! version = `size:mtime_ns:sha256/16`, readers = the owner, group and
//! others its read bits grant (`user:unix:UID`, `group:unix:GID`, `anyone`:
//! no mapping is configured), narrowed by the search bits of each directory
//! above it. Modes change too (issue 13): files and directories opened and
//! closed, drawn from a stream of their own so the other operations of a
//! seed stay what they were.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::compare::{Doc, Docs};
use super::ops::{Ops, SimulatedSource, modified_since_epoch, write_atomic};

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

/// The directory tree the source reads.
pub struct Filesystem {
    pub root: tempfile::TempDir,
    /// Mode changes so far (what seeds their draws).
    chmods: u64,
}

impl Filesystem {
    pub fn new() -> Self {
        Filesystem {
            root: tempfile::tempdir().expect("tmp"),
            chmods: 0,
        }
    }

    /// The initial files: a drawn count of creations.
    pub fn populate(&self, ops: &mut Ops) {
        for _ in 0..ops.rng.range(5, 12) {
            self.create(ops);
        }
    }

    /// Every non-hidden file under the root, relative, `/`-separated.
    fn files(&self) -> Vec<String> {
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
        walk(self.root.path(), "", &mut out);
        out.sort();
        out
    }

    fn dirs(&self) -> Vec<String> {
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
        walk(self.root.path(), "", &mut out);
        out.sort();
        out
    }

    fn content(ops: &mut Ops, what: &str) -> String {
        let k = ops.tick();
        // Lengths vary too, so size alone often tells edits apart.
        format!("{what} {k} of seed {}\n{}", ops.seed, "x".repeat(ops.rng.below(40)))
    }

    fn dir(&self, ops: &mut Ops) -> String {
        let mut dirs: Vec<String> = FS_DIRS.iter().map(|d| (*d).to_owned()).collect();
        dirs.extend(self.dirs());
        ops.rng.pick(&dirs).cloned().expect("dirs")
    }

    fn path(dir: &str, name: &str) -> String {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    }

    fn create(&self, ops: &mut Ops) {
        let dir = self.dir(ops);
        let k = ops.tick();
        let rel = Self::path(&dir, &format!("f{k}.md"));
        let body = Self::content(ops, "file");
        let mtime = ops.mtime();
        write_atomic(&self.root.path().join(&rel), &body, mtime);
        ops.log.push(format!("fs create {rel}"));
    }

    /// Moves file `rel` to a fresh name `m<k>.md` in a drawn directory; returns its new path.
    fn move_file(&self, ops: &mut Ops, rel: &str) -> String {
        let root = self.root.path();
        let dir = self.dir(ops);
        let k = ops.tick();
        let to = Self::path(&dir, &format!("m{k}.md"));
        std::fs::create_dir_all(root.join(&to).parent().expect("parent")).expect("mkdir");
        std::fs::rename(root.join(rel), root.join(&to)).expect("rename");
        to
    }
}

/// Who a mode's bits `(owner, group, others)` grant, with no mapping configured.
fn granted(meta: &std::fs::Metadata, bits: (u32, u32, u32)) -> Vec<String> {
    let mode = meta.mode();
    let mut out = Vec::new();
    if mode & bits.0 != 0 {
        out.push(format!("user:unix:{}", meta.uid()));
    }
    if mode & bits.1 != 0 {
        out.push(format!("group:unix:{}", meta.gid()));
    }
    if mode & bits.2 != 0 {
        out.push("anyone".to_owned());
    }
    out
}

impl Filesystem {
    /// Opens or closes a drawn file or directory (its mode), from a stream
    /// of draws of its own.
    fn chmod(&mut self, ops: &mut Ops) {
        self.chmods += 1;
        let mut rng = super::rng::Rng::new(ops.seed ^ 0x6368_6d6f_6400_0000 ^ self.chmods);
        let (path, mode) = if rng.below(3) == 0 {
            let Some(dir) = rng.pick(&self.dirs()).cloned() else {
                return;
            };
            (dir, *rng.pick(&[0o755, 0o750, 0o711, 0o700]).expect("modes"))
        } else {
            let Some(file) = rng.pick(&self.files()).cloned() else {
                return;
            };
            (file, *rng.pick(&[0o644, 0o640, 0o604, 0o600]).expect("modes"))
        };
        std::fs::set_permissions(self.root.path().join(&path), std::fs::Permissions::from_mode(mode)).expect("chmod");
        ops.log.push(format!("fs chmod {mode:o} {path}"));
    }

    /// Who may read file `rel`.
    fn readers(&self, rel: &str) -> Vec<Vec<String>> {
        let root = self.root.path();
        let meta = std::fs::metadata(root.join(rel)).expect("stat");
        let mut p =
            tidemark::permissions::Permissions::new(granted(&meta, (0o400, 0o040, 0o004)), serde_json::Value::Null);
        let mut at = 0;
        while let Some(slash) = rel[at..].find('/') {
            let dir = std::fs::metadata(root.join(&rel[..at + slash])).expect("stat dir");
            p = p.also_require(granted(&dir, (0o100, 0o010, 0o001)));
            at += slash + 1;
        }
        super::compare::readers_of(&p)
    }
}

impl SimulatedSource for Filesystem {
    fn mutate(&mut self, ops: &mut Ops, n: usize) {
        self.chmod(ops);
        for _ in 0..n {
            let files = self.files();
            let roll = ops.rng.below(100);
            let file = ops.rng.pick(&files).cloned();
            let root = self.root.path().to_owned();
            match (roll, file) {
                (0..=24, _) | (_, None) => self.create(ops),
                (25..=49, Some(rel)) => {
                    let body = Self::content(ops, "edited");
                    let mtime = ops.mtime();
                    write_atomic(&root.join(&rel), &body, mtime);
                    ops.log.push(format!("fs edit {rel}"));
                }
                (50..=61, Some(rel)) => {
                    std::fs::remove_file(root.join(&rel)).expect("rm");
                    ops.log.push(format!("fs delete {rel}"));
                }
                (62..=79, Some(rel)) => {
                    let to = self.move_file(ops, &rel);
                    ops.log.push(format!("fs move {rel} -> {to}"));
                }
                (80..=87, Some(rel)) => {
                    let to = self.move_file(ops, &rel);
                    let body = Self::content(ops, "moved and edited");
                    let mtime = ops.mtime();
                    write_atomic(&root.join(&to), &body, mtime);
                    ops.log.push(format!("fs move+edit {rel} -> {to}"));
                }
                (_, Some(_)) => {
                    let dirs = self.dirs();
                    let Some(from) = ops.rng.pick(&dirs).cloned() else {
                        self.create(ops);
                        continue;
                    };
                    let parent = self.dir(ops);
                    if parent == from || parent.starts_with(&format!("{from}/")) {
                        ops.log.push(format!("fs rename dir {from} skipped (into itself)"));
                        continue;
                    }
                    let k = ops.tick();
                    let to = Self::path(&parent, &format!("d{k}"));
                    std::fs::create_dir_all(root.join(&parent)).expect("mkdir");
                    std::fs::rename(root.join(&from), root.join(&to)).expect("rename dir");
                    ops.log.push(format!("fs rename dir {from} -> {to}"));
                }
            }
        }
    }

    fn expected(&self) -> Docs {
        self.files()
            .into_iter()
            .map(|rel| {
                let path = self.root.path().join(&rel);
                let bytes = std::fs::read(&path).expect("read");
                let meta = std::fs::metadata(&path).expect("stat");
                let mtime_ns = modified_since_epoch(&meta).as_nanos();
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
                        content: crate::harness::words(&String::from_utf8_lossy(&bytes)),
                        links: Vec::new(),
                        readers: self.readers(&rel),
                    },
                )
            })
            .collect()
    }
}
