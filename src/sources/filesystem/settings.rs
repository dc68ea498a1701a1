//! The `settings` table of a `kind = "filesystem"` source: fields, defaults, validation.
//!
//! Invariants:
//! - Every problem is reported at once, as `"<key>.<field>: <problem>"`; the
//!   texts are part of the interface (operators and tests read them).
//! - `root` must exist and be a directory when the configuration is checked
//!   (every feed checks it again).

use std::collections::HashSet;
use std::path::PathBuf;

use super::access::FileAccess;

/// Settings of one directory source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSettings {
    /// The directory to sync (required; must exist and be a directory).
    pub root: PathBuf,
    /// Include files and directories whose name starts with '.' (default false).
    #[serde(default)]
    pub include_hidden: bool,
    /// File extensions to include, with or without the dot, case-insensitive
    /// (default empty: every file).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Follow symbolic links to files and directories (default false: links are
    /// skipped). Directory cycles are detected and walked once.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// How owners, groups and "others" become principals (who may read each file).
    #[serde(default)]
    pub permissions: FileAccess,
}

impl FilesystemSettings {
    /// Settings for `root` with every optional field at its default.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            include_hidden: false,
            extensions: Vec::new(),
            follow_symlinks: false,
            permissions: FileAccess::default(),
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => problems.push(format!("{key}.root: {} is not a directory", self.root.display())),
            Err(e) => problems.push(format!("{key}.root: cannot read {}: {e}", self.root.display())),
        }
        self.permissions.validate(&format!("{key}.permissions"), problems);
        for (i, ext) in self.extensions.iter().enumerate() {
            let bare = ext.trim_start_matches('.');
            if bare.is_empty() || bare.contains(['/', '\\']) || bare.trim() != bare {
                problems.push(format!(
                    "{key}.extensions[{i}]: {ext:?} is not a file extension (e.g. \"md\")"
                ));
            }
        }
    }

    /// Extensions without the dot, lowercased.
    pub(super) fn normalized_extensions(&self) -> HashSet<String> {
        self.extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_lowercase())
            .collect()
    }
}
