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
//! - Each item holds only its direct permissions, at most one per grantee (the
//!   permission id is the grantee's); effective permissions are computed from
//!   the ancestor chain on demand, so a folder's share reaches its subtree with
//!   one change (the folder's) and no descendant's version moves.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::sharing::{
    EffectivePermission, PermissionDetail, PermissionError, SEED_DOMAIN, SEED_GROUP, SHARING_STREAM, SimPermission,
    drive_root_perms, owner_perms, role_rank,
};
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
    /// The item's direct permissions (inherited ones live on its ancestors).
    pub(super) perms: Vec<SimPermission>,
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
                perms: drive_root_perms(cfg.drive_id.is_some()),
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
                perms: owner_perms(cfg.drive_id.is_some()),
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
        st.seed_sharing(&folders[1..], &seeded_ids, cfg.seed);
        st
    }

    /// Seeds sharing on the seeded tree, without versions or changes (it is the
    /// drive's starting state): folder `k` (0-based) shared with the group
    /// `eng@example.com` as reader when `k % 3 == 0`, folder 2 (nested in folder 1)
    /// with the domain `example.com` (reader, discoverable), and some files
    /// anyone-with-link (reader, two in six) or with one user (writer or
    /// commenter, one in six each), from a seeded offset. The draw comes from its
    /// own splitmix stream, so the content and version draws of the seeded files
    /// are those they always were.
    fn seed_sharing(&mut self, folders: &[String], files: &[String], seed: u64) {
        for (k, id) in folders.iter().enumerate() {
            let perm = match k {
                1 => Some(SimPermission::domain(SEED_DOMAIN, "reader", true)),
                k if k % 3 == 0 => Some(SimPermission::group(SEED_GROUP, "reader")),
                _ => None,
            };
            if let (Some(perm), Some(e)) = (perm, self.files.get_mut(id)) {
                e.perms.push(perm);
            }
        }
        // A seeded offset into a cycle of six, so any six files hold every kind.
        let mut rng = seed ^ SHARING_STREAM;
        let offset = splitmix(&mut rng);
        for (i, id) in files.iter().enumerate() {
            let perm = match (offset.wrapping_add(i as u64)) % 6 {
                0 | 1 => Some(SimPermission::anyone("reader", false)),
                2 => Some(SimPermission::user("alice@example.com", "writer")),
                3 => Some(SimPermission::user("bob@example.com", "commenter")),
                _ => None,
            };
            if let (Some(perm), Some(e)) = (perm, self.files.get_mut(id)) {
                e.perms.push(perm);
            }
        }
    }

    /// The item's effective permissions: its own, then those of each ancestor
    /// folder, nearest first ("Permission lists for a folder propagate downward.
    /// All child files and folders inherit permissions from the parent.", Drive
    /// guide "Share files, folders, and drives"). A grantee met more than once is
    /// one permission with the highest role, whose `permissionDetails` list each
    /// grant (`inherited` true for an ancestor's; `inheritedFrom` only in a shared
    /// drive: "This is only populated for items in shared drives."). Identical
    /// details (My Drive: the owner's grant on every ancestor) are listed once.
    /// `None` for an unknown item.
    pub(super) fn effective_perms(&self, id: &str) -> Option<Vec<EffectivePermission>> {
        let mut chain = vec![(id.to_owned(), self.files.get(id)?)];
        while let Some(parent) = chain.last().and_then(|(_, e)| e.parent.clone()) {
            let Some(e) = self.files.get(&parent) else { break };
            if chain.len() > self.files.len() {
                break;
            }
            chain.push((parent, e));
        }
        let shared = self.in_shared_drive();
        let mut out: Vec<EffectivePermission> = Vec::new();
        for (depth, (from, e)) in chain.iter().enumerate() {
            let inherited = depth > 0;
            for p in &e.perms {
                let detail = PermissionDetail {
                    // Shared-drive membership (a grant on the drive itself) is
                    // `member`; a grant on a file or folder is `file`.
                    permission_type: if shared && *from == self.drive_root_id {
                        "member"
                    } else {
                        "file"
                    }
                    .to_owned(),
                    role: p.role.clone(),
                    inherited,
                    inherited_from: (inherited && shared).then(|| from.clone()),
                };
                match out.iter_mut().find(|ep| ep.permission.id == p.id) {
                    Some(ep) => {
                        if role_rank(&p.role) > role_rank(&ep.permission.role) {
                            ep.permission.role = p.role.clone();
                        }
                        if !ep.details.contains(&detail) {
                            ep.details.push(detail);
                        }
                    }
                    None => out.push(EffectivePermission {
                        permission: p.clone(),
                        details: vec![detail],
                    }),
                }
            }
        }
        Some(out)
    }

    /// Adds the grantee's direct permission on `id`, or replaces it (one
    /// permission per grantee: its id is the grantee's). Bumps `version` and
    /// records one change for the item only; `modified` is kept.
    ///
    /// `version`: "A monotonically increasing version number for the file. This
    /// reflects every change made to the file on the server, even those not
    /// visible to the user." `modifiedTime`: the reference is silent on whether
    /// sharing moves it; sharing is not a modification of the file, as Drive's UI
    /// "Last modified" shows, so it stays. One change, for the item and not its
    /// descendants: documented for shared drives ("Permission changes to shared
    /// drive or items inside a shared drive are only reflected on the item itself.
    /// While all direct or indirect children of that item will inherit this change
    /// there will not be a separate entry in the change log for each of those
    /// items."); assumed the same for My Drive, where the reference says nothing.
    pub(super) fn share(&mut self, id: &str, perm: SimPermission) -> Result<SimPermission, PermissionError> {
        let perm = perm.normalized()?;
        let Some(e) = self.files.get_mut(id) else {
            return Err(PermissionError::FileNotFound);
        };
        if e.perms
            .iter()
            .any(|p| p.id == perm.id && p.role == "owner" && perm.role != "owner")
        {
            return Err(PermissionError::Owner);
        }
        match e.perms.iter_mut().find(|p| p.id == perm.id) {
            Some(existing) => *existing = perm.clone(),
            None => e.perms.push(perm.clone()),
        }
        e.version += 1;
        self.record(id);
        Ok(perm)
    }

    /// Removes the direct permission `perm_id` from `id`, as [`Self::share`]
    /// does (version bumped, `modified` kept, one change for the item only). An
    /// inherited permission is refused ("Inherited permissions cannot be
    /// revoked.", "Share files, folders, and drives"), and so is the owner's.
    pub(super) fn unshare(&mut self, id: &str, perm_id: &str) -> Result<(), PermissionError> {
        let inherited = self
            .effective_perms(id)
            .ok_or(PermissionError::FileNotFound)?
            .iter()
            .any(|ep| ep.permission.id == perm_id);
        let Some(e) = self.files.get_mut(id) else {
            return Err(PermissionError::FileNotFound);
        };
        let Some(at) = e.perms.iter().position(|p| p.id == perm_id) else {
            return Err(if inherited {
                PermissionError::Inherited
            } else {
                PermissionError::PermissionNotFound
            });
        };
        if e.perms[at].role == "owner" {
            return Err(PermissionError::Owner);
        }
        e.perms.remove(at);
        e.version += 1;
        self.record(id);
        Ok(())
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
                perms: owner_perms(self.drive_id.is_some()),
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
        // Drive applies one file's modifications one after another, each at
        // its own time: two within a millisecond (a test's, never a person's)
        // still get distinct `modifiedTime`s, the later one later.
        e.modified = now().max(e.modified + chrono::Duration::milliseconds(1));
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
