//! The Google Drive source (`drive`, served by the simulator): how the test
//! creates, edits, renames, trashes, deletes and moves its files and folders,
//! and what the sink must hold for it: every file of the folder tree (every
//! kind: Docs Editors files, real PDF and Office files, text, images), with
//! `<kind>:<version>`, name, parent folder, folder breadcrumb (names from the
//! synced folder down, through renames and moves of any folder), text and
//! readers (each file's effective permissions: sharing changes on files and
//! on folders, the synced one included, drawn from a stream of their own so
//! the other operations of a seed stay what they were); no links.

use std::net::SocketAddr;

use tidemark::extract::{DOCX_MIME, PDF_MIME, PPTX_MIME, XLSX_MIME};
use tidemark::simulators::files;
use tidemark::simulators::gdrive::{DOC_MIME, FORM_MIME, GdriveSim, SHEET_MIME, SimConfig};

use super::compare::{Doc, Docs};
use super::ops::{Ops, SimulatedSource};
use super::rng::Rng;

/// The simulated drive.
pub struct Drive {
    pub sim: GdriveSim,
    /// Sharing changes so far (what seeds their draws).
    sharings: u64,
}

impl Drive {
    /// Draws the initial file and folder counts, serves a fresh simulator, and
    /// adds a folder outside the synced tree (a place to move things out to).
    pub async fn start(rng: &mut Rng, seed: u64) -> (Self, SocketAddr) {
        let sim = GdriveSim::new(SimConfig {
            files: rng.range(5, 12),
            subfolders: rng.range(2, 4),
            shortcuts: rng.range(0, 2),
            seed,
            ..SimConfig::default()
        });
        let (addr, _) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let outside = sim
            .create_folder("Elsewhere", &sim.drive_root_id())
            .expect("outside folder");
        sim.create_file("Outside.txt", &outside, "text/plain", "outside, for now")
            .expect("outside file");
        (Drive { sim, sharings: 0 }, addr)
    }

    /// Shares a drawn file or folder with a user, a group, the domain or
    /// anyone with the link, or takes one of its own permissions away.
    fn reshare(&mut self, ops: &mut Ops) {
        use tidemark::simulators::gdrive::SimPermission;
        self.sharings += 1;
        let mut rng = Rng::new(ops.seed ^ 0x7368_6172_6500_0000 ^ self.sharings);
        let items: Vec<String> = self
            .sim
            .files()
            .into_iter()
            .filter(|f| f.id != self.sim.drive_root_id())
            .map(|f| f.id)
            .collect();
        let Some(id) = rng.pick(&items).cloned() else { return };
        let own: Vec<SimPermission> = self
            .sim
            .direct_permissions(&id)
            .into_iter()
            .filter(|p| p.role != "owner")
            .collect();
        if !own.is_empty() && rng.chance(40) {
            let p = rng.pick(&own).cloned().expect("non-empty");
            let ok = self.sim.unshare(&id, &p.id).is_ok();
            ops.log.push(format!("drive unshare {id} {} ({ok})", p.id));
            return;
        }
        let p = match rng.below(4) {
            0 => SimPermission::user(&format!("user{}@example.com", rng.below(3)), "reader"),
            1 => SimPermission::group("sales@example.com", "commenter"),
            2 => SimPermission::domain("example.com", "reader", rng.chance(50)),
            _ => SimPermission::anyone("reader", false),
        };
        let ok = self.sim.share(&id, p.clone()).is_ok();
        ops.log.push(format!(
            "drive share {id} with {:?} {:?} ({ok})",
            p.r#type,
            p.email_address.or(p.domain)
        ));
    }

    /// A real file of type `mime` holding `text`, and the text a reader should get from it.
    fn content(mime: &str, text: &str) -> (Vec<u8>, String) {
        match mime {
            PDF_MIME => (files::pdf(&[text]), text.to_owned()),
            DOCX_MIME => (files::docx(&[text]), text.to_owned()),
            PPTX_MIME => (files::pptx(&[text]), text.to_owned()),
            XLSX_MIME => (files::xlsx(&[("S", vec![vec![text]])]), format!("## S\n{text}")),
            m if m.starts_with("image/") => (files::PNG_1X1.to_vec(), String::new()),
            // A form has no text export: a document with its metadata only.
            FORM_MIME => (Vec::new(), String::new()),
            _ => (text.as_bytes().to_vec(), text.to_owned()),
        }
    }

    /// Rewrites file `id` (of type `mime`) with new content built from `text`.
    fn edit(&self, ops: &mut Ops, id: &str, mime: &str, text: &str) {
        if mime == tidemark::simulators::gdrive::SHORTCUT_MIME {
            // Drive stores no content for a shortcut: there is nothing to edit.
            ops.log.push(format!("drive edit {id}: a shortcut, left as it is"));
            return;
        }
        let (bytes, expected) = Self::content(mime, text);
        self.sim.update_binary(id, &bytes, &expected);
        ops.log.push(format!("drive edit {id}"));
    }

    /// Untrashes `id` if `trashed`, trashes it otherwise; `what` (`""` or
    /// `" folder"`) goes into the log line.
    fn toggle_trash(&self, ops: &mut Ops, id: &str, trashed: bool, what: &str) {
        if trashed {
            self.sim.untrash_file(id);
            ops.log.push(format!("drive untrash{what} {id}"));
        } else {
            self.sim.trash_file(id);
            ops.log.push(format!("drive trash{what} {id}"));
        }
    }
}

impl SimulatedSource for Drive {
    fn mutate(&mut self, ops: &mut Ops, n: usize) {
        let root = self.sim.root_folder_id();
        let drive_root = self.sim.drive_root_id();
        self.reshare(ops);
        for _ in 0..n {
            let files = self.sim.files();
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
            let mime_of = |id: &str| {
                files
                    .iter()
                    .find(|f| f.id == id)
                    .map(|f| f.mime_type.clone())
                    .unwrap_or_default()
            };
            let roll = ops.rng.below(100);
            let doc = ops.rng.pick(&docs).cloned();
            let mut dest = ops.rng.pick(&folders).cloned().unwrap_or_else(|| root.clone());
            if ops.rng.chance(15) {
                dest = drive_root.clone();
            }
            match (roll, doc) {
                (0..=19, _) | (_, None) => {
                    let k = ops.tick();
                    let mime = *ops
                        .rng
                        .pick(&[
                            "text/plain",
                            DOC_MIME,
                            "text/markdown",
                            SHEET_MIME,
                            FORM_MIME,
                            PDF_MIME,
                            DOCX_MIME,
                            XLSX_MIME,
                            PPTX_MIME,
                            "image/png",
                        ])
                        .expect("mimes");
                    let name = format!("File {k}");
                    let (bytes, text) = Self::content(mime, &format!("content {k}"));
                    let id = self.sim.create_binary(&name, &dest, mime, &bytes, &text);
                    ops.log.push(format!("drive create {id:?} {name:?} {mime} in {dest}"));
                }
                (20..=39, Some((id, _))) => {
                    let k = ops.tick();
                    self.edit(ops, &id, &mime_of(&id), &format!("edited {k}"));
                }
                (40..=49, Some((id, _))) => {
                    let k = ops.tick();
                    let name = format!("Renamed {k}");
                    self.sim.update_file(&id, Some(&name), None);
                    ops.log.push(format!("drive rename {id} -> {name:?}"));
                }
                (50..=57, Some((id, trashed))) => self.toggle_trash(ops, &id, trashed, ""),
                (58..=63, Some((id, _))) => {
                    self.sim.delete_file(&id);
                    ops.log.push(format!("drive delete {id}"));
                }
                (64..=79, Some((id, _))) => {
                    let ok = self.sim.move_file(&id, &dest);
                    ops.log.push(format!("drive move {id} -> {dest} ({ok})"));
                }
                (80..=87, _) if !movable_folders.is_empty() => {
                    let f = ops.rng.pick(&movable_folders).cloned().expect("non-empty");
                    let ok = self.sim.move_file(&f, &dest);
                    ops.log.push(format!("drive move folder {f} -> {dest} ({ok})"));
                }
                (88..=92, _) if !movable_folders.is_empty() => {
                    let f = ops.rng.pick(&movable_folders).cloned().expect("non-empty");
                    let trashed = files.iter().any(|x| x.id == f && x.trashed);
                    self.toggle_trash(ops, &f, trashed, " folder");
                }
                (93..=94, _) => {
                    let k = ops.tick();
                    let id = self.sim.create_folder(&format!("Folder {k}"), &dest);
                    ops.log.push(format!("drive create folder {id:?} in {dest}"));
                }
                (95..=96, _) => {
                    // Any folder on a path, the synced folder included: breadcrumbs follow.
                    let k = ops.tick();
                    let f = ops.rng.pick(&folders).cloned().unwrap_or_else(|| root.clone());
                    let name = format!("Renamed folder {k}");
                    self.sim.update_file(&f, Some(&name), None);
                    ops.log.push(format!("drive rename folder {f} -> {name:?}"));
                }
                (_, _) if !movable_folders.is_empty() => {
                    let f = ops.rng.pick(&movable_folders).cloned().expect("non-empty");
                    self.sim.delete_file(&f);
                    ops.log.push(format!("drive delete folder {f} (and its subtree)"));
                }
                (_, Some((id, _))) => {
                    let k = ops.tick();
                    self.edit(ops, &id, &mime_of(&id), &format!("edited {k}"));
                }
            }
        }
    }

    fn expected(&self) -> Docs {
        self.sim
            .files_in_tree()
            .into_iter()
            .filter_map(|f| {
                let version = crate::gdrive::expected_version(&f)?;
                let breadcrumb = crate::gdrive::folder_path(&self.sim, &f);
                let readers = vec![crate::gdrive::expected_readers(&self.sim, &f)];
                Some((
                    f.id,
                    Doc {
                        version,
                        title: f.name,
                        parent: f.parent,
                        breadcrumb,
                        content: crate::harness::words(&f.text),
                        links: Vec::new(),
                        readers,
                    },
                ))
            })
            .collect()
    }
}
