//! Domain newtypes shared by every layer.
//!
//! Bare strings and integers are easy to swap by mistake (a document id passed
//! where a source id was meant, a token compared with a page number), so each
//! identity that crosses a module boundary gets its own type here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The configured id of a data source, e.g. `confluence-eng`.
///
/// Invariant: matches `[a-z0-9][a-z0-9_-]{0,62}`, so it can sit inside a Redis
/// hash tag (`{...}`) and a file name without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceId(String);

impl SourceId {
    /// Validates and wraps a source id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidSourceId> {
        let id = id.into();
        let mut chars = id.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if first_ok && rest_ok && id.len() <= 63 {
            Ok(Self(id))
        } else {
            Err(InvalidSourceId(id))
        }
    }

    /// The id as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A source id that breaks the `[a-z0-9][a-z0-9_-]{0,62}` rule.
#[derive(Debug, Clone, thiserror::Error)]
#[error("source id {0:?} must be 1-63 characters of a-z, 0-9, '-' or '_', starting with a letter or digit")]
pub struct InvalidSourceId(pub String);

impl TryFrom<String> for SourceId {
    type Error = InvalidSourceId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SourceId> for String {
    fn from(value: SourceId) -> Self {
        value.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SourceId {
    type Err = InvalidSourceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A document's id inside its source (a Confluence page id, a Drive file id, a path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DocumentId(pub String);

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DocumentId {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// A fencing token: strictly greater for every lock acquisition of one source.
///
/// Every write made under a lock carries the token; storage remembers the
/// highest token it has seen per source and refuses anything lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies one sync run of one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A new, globally unique run id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a sync request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Only what changed since the last committed checkpoint.
    Incremental,
    /// Re-list and re-read everything; unchanged content is still not rewritten.
    Full,
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncMode::Incremental => "incremental",
            SyncMode::Full => "full",
        })
    }
}

impl FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "incremental" => Ok(SyncMode::Incremental),
            "full" => Ok(SyncMode::Full),
            other => Err(format!("unknown sync mode {other:?} (expected incremental or full)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Source ids that could break a Redis hash tag or a path are refused.
    #[test]
    fn source_id_rules() {
        for ok in ["a", "confluence-eng", "drive_2", "0abc"] {
            assert!(SourceId::new(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "-a", "A", "a{b}", "a/b", "a b", &"x".repeat(64)] {
            assert!(SourceId::new(bad).is_err(), "{bad} should be invalid");
        }
    }

    /// Sync modes round-trip through their text form, and unknown text names itself.
    #[test]
    fn sync_mode_text() {
        for m in [SyncMode::Incremental, SyncMode::Full] {
            assert_eq!(m.to_string().parse::<SyncMode>().unwrap(), m);
        }
        let err = "partial".parse::<SyncMode>().unwrap_err();
        assert!(err.contains("partial"));
    }
}
