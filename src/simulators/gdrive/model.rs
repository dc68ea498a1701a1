//! The simulated drive: its files and folders (one tree under the drive root),
//! the change log and page-token expiry, the seeded start and every mutation.
//!
//! Invariants:
//! - Every mutation appends one change with the next change id (a permanent
//!   delete appends one per deleted item, the folder's descendants included);
//!   `next_change` is what `startPageToken` answers and tokens below
//!   `expired_before` are refused.
//! - Every item but the drive root has exactly one parent, and it is a folder;
//!   moves that would create a cycle are refused.
//! - Trashing marks only the item itself (Drive trashes a folder's subtree
//!   implicitly; a client sees the folder's change and must infer the rest).
//! - Times are UTC at millisecond precision, as Drive serves them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::{SimConfig, SimRequest};
use crate::simulators::files::{self, Sample, Stored};
use crate::simulators::seed::splitmix;
use crate::simulators::traffic::Traffic;

/// `mimeType` of a folder.
pub const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
/// `files.export` refuses content larger than this ("limited to 10MB").
pub const EXPORT_LIMIT_BYTES: usize = 10 * 1024 * 1024;

/// `mimeType` of a Google Doc (exportable as `text/plain`).
pub const DOC_MIME: &str = "application/vnd.google-apps.document";
/// `mimeType` of a Google Sheet (exportable as `text/csv`).
pub const SHEET_MIME: &str = "application/vnd.google-apps.spreadsheet";
/// `mimeType` of a Google Slides deck (exportable as `text/plain`).
pub const SLIDES_MIME: &str = "application/vnd.google-apps.presentation";
/// `mimeType` of a Google Form (not exportable to text).
pub const FORM_MIME: &str = "application/vnd.google-apps.form";
/// `mimeType` of a shortcut. Drive v3 `files` resource: a shortcut holds no
/// content; `shortcutDetails.targetId` and `targetMimeType` name the file it points to.
pub const SHORTCUT_MIME: &str = "application/vnd.google-apps.shortcut";
/// The first change id.
pub(super) const FIRST_CHANGE: u64 = 1001;

/// A file or folder as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimFile {
    /// File id.
    pub id: String,
    /// `name`.
    pub name: String,
    /// The one parent folder; `None` only for the drive root.
    pub parent: Option<String>,
    /// `mimeType`.
    pub mime_type: String,
    /// `version` (Drive serves it as a string).
    pub version: u64,
    /// Content: the bytes of a file stored in Drive (a real PDF, DOCX, ...), the
    /// text export of a Docs Editors file; empty for folders.
    pub content: Vec<u8>,
    /// The text a reader should get from it: what the file was made from (the
    /// expected value of tests; empty for kinds without text, such as images).
    pub text: String,
    /// In the trash.
    pub trashed: bool,
    /// `modifiedTime`.
    pub modified_time: DateTime<Utc>,
}

impl SimFile {
    /// Whether this is a folder.
    pub fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }
}

pub(super) struct Entry {
    pub(super) name: String,
    pub(super) parent: Option<String>,
    pub(super) mime: String,
    pub(super) version: u64,
    pub(super) content: Vec<u8>,
    pub(super) text: String,
    pub(super) trashed: bool,
    pub(super) modified: DateTime<Utc>,
    /// A shortcut's target file (`shortcutDetails.targetId`).
    pub(super) target: Option<String>,
}

pub(super) struct ChangeRec {
    pub(super) id: u64,
    pub(super) file_id: String,
    pub(super) time: DateTime<Utc>,
}

pub(super) struct SimState {
    pub(super) root_id: String,
    pub(super) drive_root_id: String,
    pub(super) drive_id: Option<String>,
    pub(super) files: BTreeMap<String, Entry>,
    pub(super) changes: Vec<ChangeRec>,
    pub(super) next_change: u64,
    pub(super) expired_before: u64,
    /// The status an expired or unknown page token is refused with (400, 404 or 410).
    pub(super) token_refusal: u16,
    /// Open push channels (`changes.watch`), and how many were stopped.
    pub(super) channels: Vec<super::push::SimChannel>,
    pub(super) stopped_channels: u64,
    /// The longest life granted to a channel, in seconds (Drive: one week).
    pub(super) max_channel_secs: i64,
    /// Where notifications go to be delivered (set when the simulator serves).
    pub(super) outbox: Option<tokio::sync::mpsc::UnboundedSender<super::push::Push>>,
    pub(super) next_file: u64,
    pub(super) traffic: Traffic,
    pub(super) requests: VecDeque<SimRequest>,
}

/// The simulator's clock: UTC at the millisecond precision Drive serves.
pub(super) fn now() -> DateTime<Utc> {
    // Drive serves RFC 3339 times with milliseconds.
    Utc::now().trunc_subsecs(3)
}

impl SimState {
    /// The drive root, the synced folder, `cfg.subfolders` folders and
    /// `cfg.files` files (every third a Google Doc).
    pub(super) fn seeded(cfg: SimConfig) -> Self {
        let mut st = SimState {
            root_id: cfg.root_folder_id.clone(),
            drive_root_id: cfg.drive_root_id.clone(),
            drive_id: cfg.drive_id.clone(),
            files: BTreeMap::new(),
            changes: Vec::new(),
            next_change: FIRST_CHANGE,
            expired_before: 0,
            token_refusal: 400,
            channels: Vec::new(),
            stopped_channels: 0,
            max_channel_secs: super::push::MAX_CHANNEL_SECS,
            outbox: None,
            next_file: 1,
            traffic: Traffic::new(cfg.rate_limit_per_sec),
            requests: VecDeque::new(),
        };
        let t = now();
        st.files.insert(
            cfg.drive_root_id.clone(),
            Entry {
                name: if cfg.drive_id.is_some() {
                    "Shared drive"
                } else {
                    "My Drive"
                }
                .to_owned(),
                parent: None,
                mime: FOLDER_MIME.to_owned(),
                version: 1,
                content: Vec::new(),
                text: String::new(),
                trashed: false,
                modified: t,
                target: None,
            },
        );
        st.files.insert(
            cfg.root_folder_id.clone(),
            Entry {
                name: "Knowledge base".to_owned(),
                parent: Some(cfg.drive_root_id.clone()),
                mime: FOLDER_MIME.to_owned(),
                version: 1,
                content: Vec::new(),
                text: String::new(),
                trashed: false,
                modified: t,
                target: None,
            },
        );
        st.record(&cfg.root_folder_id);
        let mut folders = vec![cfg.root_folder_id.clone()];
        for k in 0..cfg.subfolders {
            // The second folder nests in the first, so subtrees have depth.
            let parent = if k == 1 {
                folders[1].clone()
            } else {
                cfg.root_folder_id.clone()
            };
            let id = st.insert(&format!("Folder {}", k + 1), &parent, FOLDER_MIME, b"", "", 1);
            folders.push(id);
        }
        let mut rng = cfg.seed;
        let mut seeded_ids = Vec::new();
        for i in 0..cfg.files {
            let parent = folders[i % folders.len()].clone();
            let token = splitmix(&mut rng);
            let seeded = seeded_file(i, token);
            let version = 1 + splitmix(&mut rng) % 5;
            let id = st.insert(
                &seeded.name,
                &parent,
                seeded.mime,
                &seeded.content,
                &seeded.text,
                version,
            );
            seeded_ids.push(id);
        }
        // Shortcuts in the last folder, to seeded files elsewhere in the tree.
        let last_folder = folders[folders.len() - 1].clone();
        for (k, target) in seeded_ids.iter().take(cfg.shortcuts).enumerate() {
            st.insert_shortcut(&format!("Shortcut {}", k + 1), &last_folder, target);
        }
        st
    }

    /// Creates a shortcut to `target` under `parent`; its id.
    pub(super) fn insert_shortcut(&mut self, name: &str, parent: &str, target: &str) -> String {
        let id = self.insert(name, parent, SHORTCUT_MIME, b"", "", 1);
        if let Some(e) = self.files.get_mut(&id) {
            e.target = Some(target.to_owned());
        }
        id
    }

    /// Appends one change for `file_id`, and notifies every open push channel.
    pub(super) fn record(&mut self, file_id: &str) {
        let id = self.next_change;
        self.next_change += 1;
        self.changes.push(ChangeRec {
            id,
            file_id: file_id.to_owned(),
            time: now(),
        });
        self.notify_change();
    }

    fn new_id(&mut self, folder: bool) -> String {
        let n = self.next_file;
        self.next_file += 1;
        // Readable ids of Drive's alphabet ([A-Za-z0-9_-]), so test failures are easy to read.
        if folder {
            format!("fold{n:06}")
        } else {
            format!("file{n:06}")
        }
    }

    /// Adds an item under `parent` and records its change; returns its new id.
    pub(super) fn insert(
        &mut self,
        name: &str,
        parent: &str,
        mime: &str,
        content: &[u8],
        text: &str,
        version: u64,
    ) -> String {
        let id = self.new_id(mime == FOLDER_MIME);
        self.files.insert(
            id.clone(),
            Entry {
                name: name.to_owned(),
                parent: Some(parent.to_owned()),
                mime: mime.to_owned(),
                version,
                content: content.to_owned(),
                text: text.to_owned(),
                trashed: false,
                modified: now(),
                target: None,
            },
        );
        self.record(&id);
        id
    }

    /// Whether the item is in the shared drive (all are, when one is configured).
    pub(super) fn in_shared_drive(&self) -> bool {
        self.drive_id.is_some()
    }

    /// Creates an item (version 1) under `parent`; `None` if `parent` is not a folder.
    pub(super) fn create_file(
        &mut self,
        name: &str,
        parent: &str,
        mime: &str,
        content: &[u8],
        text: &str,
    ) -> Option<String> {
        if self.files.get(parent).is_none_or(|p| p.mime != FOLDER_MIME) {
            return None;
        }
        Some(self.insert(name, parent, mime, content, text, 1))
    }

    /// Renames and/or rewrites an item: bumps `version` and `modified`, records
    /// a change. `false` if there is no such item.
    pub(super) fn update_file(&mut self, id: &str, name: Option<&str>, content: Option<(&[u8], &str)>) -> bool {
        let Some(e) = self.files.get_mut(id) else {
            return false;
        };
        if let Some(n) = name {
            e.name = n.to_owned();
        }
        if let Some((bytes, text)) = content {
            e.content = bytes.to_owned();
            e.text = text.to_owned();
        }
        e.version += 1;
        e.modified = now();
        self.record(id);
        true
    }

    /// Moves an item into or out of the trash, recording a change.
    pub(super) fn set_trashed(&mut self, id: &str, trashed: bool) -> bool {
        let Some(e) = self.files.get_mut(id) else {
            return false;
        };
        e.trashed = trashed;
        e.version += 1;
        self.record(id);
        true
    }

    /// Deletes an item and its descendants permanently, one change each.
    /// `false` if it is unknown or the drive root.
    pub(super) fn delete_file(&mut self, id: &str) -> bool {
        if !self.files.contains_key(id) || id == self.drive_root_id {
            return false;
        }
        let mut doomed = vec![id.to_owned()];
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i].clone();
            doomed.extend(
                self.files
                    .iter()
                    .filter(|(_, e)| e.parent.as_deref() == Some(parent.as_str()))
                    .map(|(k, _)| k.clone()),
            );
            i += 1;
        }
        for d in doomed {
            self.files.remove(&d);
            self.record(&d);
        }
        true
    }

    /// Moves an item to `new_parent`, recording one change for it only. `false`
    /// if either is unknown, the new parent is not a folder, or the move would
    /// create a cycle.
    pub(super) fn move_file(&mut self, id: &str, new_parent: &str) -> bool {
        if !self.files.contains_key(id) || self.files.get(new_parent).is_none_or(|p| p.mime != FOLDER_MIME) {
            return false;
        }
        let mut cur = Some(new_parent.to_owned());
        let mut hops = 0;
        while let Some(c) = cur {
            if c == id || hops > self.files.len() {
                return false;
            }
            hops += 1;
            cur = self.files.get(&c).and_then(|e| e.parent.clone());
        }
        if let Some(e) = self.files.get_mut(id) {
            e.parent = Some(new_parent.to_owned());
            e.version += 1;
        }
        self.record(id);
        true
    }

    /// Every item (the drive root included), sorted by id.
    pub(super) fn snapshot(&self) -> Vec<SimFile> {
        self.files
            .iter()
            .map(|(id, e)| SimFile {
                id: id.clone(),
                name: e.name.clone(),
                parent: e.parent.clone(),
                mime_type: e.mime.clone(),
                version: e.version,
                content: e.content.clone(),
                text: e.text.clone(),
                trashed: e.trashed,
                modified_time: e.modified,
            })
            .collect()
    }

    /// Refuses every page token handed out so far, skipping one change id so
    /// tokens handed out from now on are newer.
    pub(super) fn expire_all_tokens(&mut self) {
        self.next_change += 1;
        self.expired_before = self.next_change;
    }
}

/// Non-folder files of `all` whose ancestor chain reaches `root` through
/// untrashed folders, themselves untrashed.
pub(super) fn files_in_tree(all: &[SimFile], root: &str) -> Vec<SimFile> {
    let by_id: HashMap<&str, &SimFile> = all.iter().map(|f| (f.id.as_str(), f)).collect();
    let in_tree = |f: &SimFile| {
        let mut cur = f.parent.as_deref();
        let mut hops = 0;
        while let Some(p) = cur {
            if p == root {
                return by_id.get(p).is_some_and(|r| !r.trashed);
            }
            let Some(pf) = by_id.get(p) else { return false };
            if pf.trashed || hops > all.len() {
                return false;
            }
            hops += 1;
            cur = pf.parent.as_deref();
        }
        false
    };
    all.iter()
        .filter(|f| !f.is_folder() && !f.trashed && in_tree(f))
        .cloned()
        .collect()
}

/// The `i`-th seeded file: the kinds cycle through every kind a drive holds
/// (Docs Editors files, PDF, Office files, text, Markdown, CSV, HTML and an
/// image), each a real file of its type holding a sentence unique to it.
pub(super) fn seeded_file(i: usize, token: u64) -> Sample {
    let n = i + 1;
    let line = format!("Seeded file {n} token {token:016x}");
    let editors = |name: String, mime: &'static str, text: String| Sample {
        name,
        mime,
        content: text.clone().into_bytes(),
        text,
    };
    match i % 12 {
        0 => editors(format!("Doc {n:04}"), DOC_MIME, format!("{line}\nA Google Doc.")),
        1 => files::stored(Stored::Text, n, &line),
        2 => files::stored(Stored::Pdf, n, &line),
        3 => files::stored(Stored::Docx, n, &line),
        4 => editors(format!("Sheet {n:04}"), SHEET_MIME, format!("name,value\n{line},{n}")),
        5 => files::stored(Stored::Xlsx, n, &line),
        6 => files::stored(Stored::Markdown, n, &line),
        7 => files::stored(Stored::Pptx, n, &line),
        8 => editors(
            format!("Slides {n:04}"),
            SLIDES_MIME,
            format!("{line}\nA Google Slides deck."),
        ),
        9 => files::stored(Stored::Csv, n, &line),
        10 => files::stored(Stored::Html, n, &line),
        _ => files::stored(Stored::Png, n, &line),
    }
}
