//! `[sink]`: where documents go, as written and as checked.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Secret, check_secret, is_postgres_url};
use crate::sinks::chunks::ChunkConfig;

/// `[sink]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `directory` or `postgres`.
    pub kind: String,
    /// For `directory`: where documents are written. Env override: `TIDEMARK_SINK_PATH`.
    pub path: Option<PathBuf>,
    /// For `postgres`: `postgres://user:password@host:port/database`. Env override:
    /// `TIDEMARK_SINK_URL` (keeps the password out of the file).
    pub url: Option<String>,
    /// For `postgres`: connections per process (default 8).
    pub pool_size: Option<usize>,
    /// For `webhook`: the environment variable holding the HMAC secret shared with the receiver.
    pub secret_env: Option<String>,
    /// For `webhook`: ... or the file holding it.
    pub secret_file: Option<PathBuf>,
    /// For `webhook`: longest wait for the receiver's answer (default 10).
    pub timeout_secs: Option<u64>,
    /// For `webhook`: tries per event before the page is retried later (default 5).
    pub max_attempts: Option<u32>,
    /// `[sink.chunks]`: also split each document into chunks.
    pub chunks: Option<RawChunks>,
}

/// `[sink.chunks]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChunks {
    /// The most characters of a chunk's own text (default 1000).
    pub size: Option<usize>,
    /// Characters carried over from the chunk before (default 100).
    pub overlap: Option<usize>,
}

/// Checked `[sink]`.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Where documents go.
    pub kind: SinkKind,
    /// Whether, and how, documents are also split into chunks.
    pub chunks: Option<ChunkConfig>,
}

/// The kind of sink and its own settings.
#[derive(Clone)]
pub enum SinkKind {
    /// One JSON file per document under `path/<source>/`.
    Directory {
        /// Root directory.
        path: PathBuf,
    },
    /// One row per document in a PostgreSQL database (`sinks::postgres`).
    Postgres {
        /// Connection URL, password included: never logged (see `Debug`).
        url: String,
        /// Connections per process.
        pool_size: usize,
    },
    /// Each upsert and deletion POSTed to a receiver (`sinks::webhook`).
    Webhook {
        /// The receiver.
        url: url::Url,
        /// The HMAC secret.
        secret: Secret,
        /// Longest wait for one answer.
        timeout: Duration,
        /// Tries per event.
        max_attempts: u32,
    },
}

impl std::fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkKind::Directory { path } => f.debug_struct("Directory").field("path", path).finish(),
            SinkKind::Postgres { url, pool_size } => f
                .debug_struct("Postgres")
                .field("url", &crate::redact::url(url))
                .field("pool_size", pool_size)
                .finish(),
            SinkKind::Webhook {
                url,
                secret,
                timeout,
                max_attempts,
            } => f
                .debug_struct("Webhook")
                .field("url", &crate::redact::url(url.as_str()))
                .field("secret", secret)
                .field("timeout", timeout)
                .field("max_attempts", max_attempts)
                .finish(),
        }
    }
}

/// Checks `[sink]`, pushing each problem found; `None` if any.
pub(super) fn check(
    raw: &RawSink,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<SinkConfig> {
    let chunks = raw.chunks.as_ref().and_then(|c| check_chunks(c, problems));
    let kind = match raw.kind.as_str() {
        "directory" => match &raw.path {
            Some(path) if !path.as_os_str().is_empty() => Some(SinkKind::Directory { path: path.clone() }),
            _ => {
                problems.push("sink.path: required for kind \"directory\"".into());
                None
            }
        },
        "postgres" => match (&raw.url, raw.pool_size) {
            (_, Some(0)) => {
                problems.push("sink.pool_size: must be at least 1".into());
                if let Some(url) = raw.url.as_ref().filter(|u| !is_postgres_url(u)) {
                    problems.push(format!(
                        "sink.url: {:?} is not a postgres:// URL",
                        crate::redact::url(url)
                    ));
                }
                None
            }
            (Some(url), n) if is_postgres_url(url) => Some(SinkKind::Postgres {
                url: url.clone(),
                pool_size: n.unwrap_or(8),
            }),
            (Some(url), _) => {
                problems.push(format!(
                    "sink.url: {:?} is not a postgres:// URL",
                    crate::redact::url(url)
                ));
                None
            }
            (None, _) => {
                problems.push("sink.url: required for kind \"postgres\" (or set TIDEMARK_SINK_URL)".into());
                None
            }
        },
        "webhook" => check_webhook_sink(raw, env, problems),
        other => {
            problems.push(format!(
                "sink.kind: unknown kind {other:?} (known: directory, postgres, webhook)"
            ));
            None
        }
    };
    Some(SinkConfig { kind: kind?, chunks })
}

/// Checks a `webhook` sink: an http(s) URL, a secret, a timeout and tries of at least 1.
fn check_webhook_sink(
    raw: &RawSink,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<SinkKind> {
    let url = match raw.url.as_deref().map(url::Url::parse) {
        None => {
            problems.push("sink.url: required for kind \"webhook\" (or set TIDEMARK_SINK_URL)".into());
            None
        }
        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => Some(u),
        Some(_) => {
            problems.push(format!(
                "sink.url: {:?} is not an http(s) URL",
                crate::redact::url(raw.url.as_deref().unwrap_or_default())
            ));
            None
        }
    };
    let secret = check_secret("sink", raw.secret_env.as_ref(), raw.secret_file.as_ref(), env, problems);
    let timeout = raw.timeout_secs.unwrap_or(10);
    if timeout == 0 {
        problems.push("sink.timeout_secs: must be at least 1, got 0".into());
    }
    let max_attempts = raw.max_attempts.unwrap_or(5);
    if max_attempts == 0 {
        problems.push("sink.max_attempts: must be at least 1, got 0".into());
    }
    if raw.path.is_some() || raw.pool_size.is_some() {
        problems.push("sink: path and pool_size are not settings of kind \"webhook\"".into());
    }
    Some(SinkKind::Webhook {
        url: url?,
        secret: Secret(secret?),
        timeout: Duration::from_secs(timeout.max(1)),
        max_attempts: max_attempts.max(1),
    })
}

/// Checks `[sink.chunks]`: a chunk holds at least one character, and its
/// overlap is less than its size (else every chunk would repeat the one before).
fn check_chunks(raw: &RawChunks, problems: &mut Vec<String>) -> Option<ChunkConfig> {
    let default = ChunkConfig::default();
    let size = raw.size.unwrap_or(default.size);
    let overlap = raw.overlap.unwrap_or(default.overlap.min(size / 2));
    if size == 0 {
        problems.push("sink.chunks.size: must be at least 1 character".into());
        return None;
    }
    if overlap >= size {
        problems.push(format!(
            "sink.chunks.overlap: {overlap} characters must be less than sink.chunks.size ({size})"
        ));
        return None;
    }
    Some(ChunkConfig { size, overlap })
}
