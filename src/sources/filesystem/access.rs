//! Who may read a file: its owner, group and mode, and those of the
//! directories above it (under the root), mapped to principals by the
//! source's `[settings.permissions]` (README, "Permissions").
//!
//! Invariants:
//! - a file is readable by the principals its read bits grant (owner `r`,
//!   group `r`, others `r`) *and*, for each directory between the root and
//!   it, by the principals that directory's search bits grant (`x`): the
//!   directories become `also_required` lists, which [`Permissions`] drops
//!   where they restrict nothing (a directory others may enter);
//! - an owner or group without a mapping is `user:unix:UID` / `group:unix:GID`;
//!   "others" is the principal `others` names (default `anyone`, or none).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Deserialize;

use crate::permissions::{self, Permissions};

/// How owners, groups and "others" become principals (`[sources.settings.permissions]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccess {
    /// Numeric user id (as a string key) -> principal, e.g. `"1000" = "user:alice@example.com"`.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Numeric group id -> principal, e.g. `"100" = "group:eng"`.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    /// Who the "others" bits grant: a principal (default `anyone`), or `""` for nobody.
    #[serde(default = "anyone")]
    pub others: String,
}

fn anyone() -> String {
    permissions::ANYONE.to_owned()
}

impl Default for FileAccess {
    fn default() -> Self {
        Self {
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            others: anyone(),
        }
    }
}

impl FileAccess {
    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        for (kind, map) in [("users", &self.users), ("groups", &self.groups)] {
            for (id, principal) in map {
                if id.parse::<u32>().is_err() {
                    problems.push(format!("{key}.{kind}: {id:?} is not a numeric id"));
                }
                if let Err(e) = permissions::check(principal) {
                    problems.push(format!("{key}.{kind}.{id}: {e}"));
                }
            }
        }
        if !self.others.is_empty()
            && let Err(e) = permissions::check(&self.others)
        {
            problems.push(format!("{key}.others: {e}"));
        }
    }

    /// The principals `mode`'s bits `(owner, group, others)` grant.
    fn granted(&self, meta: &std::fs::Metadata, bits: (u32, u32, u32)) -> Vec<String> {
        let mode = meta.mode();
        let mut out = Vec::new();
        if mode & bits.0 != 0 {
            let uid = meta.uid().to_string();
            out.push(self.users.get(&uid).cloned().unwrap_or(format!("user:unix:{uid}")));
        }
        if mode & bits.1 != 0 {
            let gid = meta.gid().to_string();
            out.push(self.groups.get(&gid).cloned().unwrap_or(format!("group:unix:{gid}")));
        }
        if mode & bits.2 != 0 && !self.others.is_empty() {
            out.push(self.others.clone());
        }
        out
    }

    /// Who may enter a directory (its search bits).
    pub(super) fn directory(&self, meta: &std::fs::Metadata) -> Vec<String> {
        self.granted(meta, (0o100, 0o010, 0o001))
    }

    /// Who may read a file with metadata `meta` under directories whose
    /// entrants are `dirs` (root first).
    pub(super) fn file<'a>(
        &self,
        meta: &std::fs::Metadata,
        dirs: impl IntoIterator<Item = &'a Vec<String>>,
    ) -> Permissions {
        let raw = serde_json::json!({
            "uid": meta.uid(),
            "gid": meta.gid(),
            "mode": format!("{:04o}", meta.mode() & 0o7777),
        });
        dirs.into_iter().fold(
            Permissions::new(self.granted(meta, (0o400, 0o040, 0o004)), raw),
            |p, dir| p.also_require(dir),
        )
    }
}

/// Who may enter each directory under the root, by relative path (`""`: the
/// root itself is not a condition: the source is configured to read it).
/// Read once per directory per walk.
#[derive(Debug, Default)]
pub(super) struct DirectoryAccess {
    entrants: HashMap<String, Vec<String>>,
}

impl DirectoryAccess {
    /// Who may read the file at relative path `rel` with metadata `meta`.
    pub(super) fn of_file(
        &mut self,
        access: &FileAccess,
        root: &Path,
        rel: &str,
        meta: &std::fs::Metadata,
    ) -> Permissions {
        let mut chain = Vec::new();
        let mut at = 0;
        while let Some(slash) = rel[at..].find('/') {
            let dir = &rel[..at + slash];
            if !self.entrants.contains_key(dir) {
                // A directory we cannot stat: no one is known to enter it.
                let entrants = std::fs::metadata(root.join(dir))
                    .map(|m| access.directory(&m))
                    .unwrap_or_default();
                self.entrants.insert(dir.to_owned(), entrants);
            }
            chain.push(dir.to_owned());
            at += slash + 1;
        }
        access.file(meta, chain.iter().filter_map(|d| self.entrants.get(d)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Read bits grant the mapped owner, group and others; a directory's
    /// search bits restrict what is under it.
    #[test]
    fn modes_map_to_principals() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("hr")).unwrap();
        std::fs::write(root.join("hr/pay.md"), "x").unwrap();
        std::fs::write(root.join("open.md"), "x").unwrap();
        let meta = std::fs::metadata(root.join("open.md")).unwrap();
        let (uid, gid) = (meta.uid().to_string(), meta.gid().to_string());
        let access = FileAccess {
            users: [(uid.clone(), "user:alice@example.com".to_owned())].into(),
            groups: BTreeMap::new(),
            others: "anyone".into(),
        };
        let of = |rel: &str| {
            let meta = std::fs::metadata(root.join(rel)).unwrap();
            DirectoryAccess::default().of_file(&access, root, rel, &meta)
        };
        chmod(&root.join("open.md"), 0o644);
        let open = of("open.md");
        assert!(open.readers.contains(&"anyone".to_owned()));
        assert_eq!(open.source["mode"], "0644");
        chmod(&root.join("open.md"), 0o640);
        let group_only = of("open.md");
        assert_eq!(
            group_only.readers,
            vec![format!("group:unix:{gid}"), "user:alice@example.com".to_owned()]
        );
        assert!(!group_only.may_read(&["anyone", "user:bob@example.com"]));
        // A world-readable file in a directory only its owner may enter.
        chmod(&root.join("hr/pay.md"), 0o644);
        chmod(&root.join("hr"), 0o700);
        let pay = of("hr/pay.md");
        assert_eq!(pay.readers, vec!["user:alice@example.com"]);
        assert!(pay.also_required.is_empty(), "the file's own list is implied");
        assert!(!pay.may_read(&["anyone"]));
        chmod(&root.join("hr"), 0o755);
        assert!(of("hr/pay.md").may_read(&["anyone"]));
    }

    /// Bad ids and principals are named.
    #[test]
    fn bad_mappings_are_named() {
        let access = FileAccess {
            users: [("alice".to_owned(), "alice".to_owned())].into(),
            groups: BTreeMap::new(),
            others: "everyone".into(),
        };
        let mut problems = Vec::new();
        access.validate("sources[0].settings.permissions", &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("users: \"alice\" is not a numeric id")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("users.alice: \"alice\" is not a principal")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("others: \"everyone\" is not a principal")),
            "{problems:?}"
        );
    }
}
