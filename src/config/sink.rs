//! `[sink]` and `[[sinks]]`: where documents go, as written and as checked,
//! and which sinks each source feeds.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Secret, check_secret, is_postgres_url};
use crate::sinks::chunks::ChunkConfig;

/// `[sink]`, or one `[[sinks]]` entry, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// In `[[sinks]]`: the name sources use to choose it (`[sink]` is named `default`).
    pub name: Option<String>,
    /// `directory`, `postgres` or `webhook`.
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

/// One checked sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Its name (`default` for `[sink]`).
    pub name: String,
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

/// The name `[sink]` goes by, and the sink a source feeds when it names none
/// and several are declared.
pub const DEFAULT_SINK: &str = "default";

/// Checks `[sink]` and every `[[sinks]]` entry: at least one sink, each named
/// once (`[[sinks]]` entries must be named; `[sink]` is [`DEFAULT_SINK`]).
pub(super) fn check_all(
    single: Option<&RawSink>,
    many: &[RawSink],
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Vec<SinkConfig> {
    if single.is_none() && many.is_empty() {
        problems.push("sink: no sink is configured: add a [sink] table or [[sinks]] entries".into());
    }
    let mut out: Vec<SinkConfig> = Vec::new();
    let named = single
        .map(|raw| {
            (
                "sink".to_owned(),
                raw,
                raw.name.clone().unwrap_or_else(|| DEFAULT_SINK.into()),
            )
        })
        .into_iter()
        .chain(
            many.iter()
                .enumerate()
                .map(|(i, raw)| (format!("sinks[{i}]"), raw, raw.name.clone().unwrap_or_default())),
        );
    for (key, raw, name) in named {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            problems.push(format!(
                "{key}.name: {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ));
        } else if out.iter().any(|s| s.name == name) {
            problems.push(format!("{key}.name: duplicate sink name {name:?}"));
        }
        if let Some(mut sink) = check(&key, raw, env, problems) {
            sink.name = name;
            out.push(sink);
        }
    }
    out
}

/// The sinks a source feeds: those it names (`sinks = [...]`, each declared),
/// or, naming none, the only sink there is, or the one named [`DEFAULT_SINK`].
pub(super) fn choose(
    key: &str,
    wanted: Option<&Vec<String>>,
    declared: &[SinkConfig],
    problems: &mut Vec<String>,
) -> Vec<String> {
    let names: Vec<&str> = declared.iter().map(|s| s.name.as_str()).collect();
    match wanted {
        Some(list) if list.is_empty() => {
            problems.push(format!("{key}.sinks: empty; name at least one of {names:?}"));
            Vec::new()
        }
        Some(list) => {
            let mut chosen: Vec<String> = Vec::new();
            for name in list {
                if !names.contains(&name.as_str()) {
                    problems.push(format!("{key}.sinks: no sink is named {name:?} (declared: {names:?})"));
                } else if !chosen.contains(name) {
                    chosen.push(name.clone());
                }
            }
            chosen
        }
        None if names.len() == 1 => vec![names[0].to_owned()],
        None if names.contains(&DEFAULT_SINK) => vec![DEFAULT_SINK.to_owned()],
        None if names.is_empty() => Vec::new(),
        None => {
            problems.push(format!(
                "{key}.sinks: several sinks are declared ({names:?}) and none is named {DEFAULT_SINK:?}: name the ones this source feeds"
            ));
            Vec::new()
        }
    }
}

/// Checks one sink (`key`: `sink` or `sinks[i]`, naming it in problems),
/// pushing each problem found; `None` if any. Its name is the caller's to set.
pub(super) fn check(
    key: &str,
    raw: &RawSink,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<SinkConfig> {
    let chunks = raw.chunks.as_ref().and_then(|c| check_chunks(key, c, problems));
    let kind = match raw.kind.as_str() {
        "directory" => match &raw.path {
            Some(path) if !path.as_os_str().is_empty() => Some(SinkKind::Directory { path: path.clone() }),
            _ => {
                problems.push(format!("{key}.path: required for kind \"directory\""));
                None
            }
        },
        "postgres" => match (&raw.url, raw.pool_size) {
            (_, Some(0)) => {
                problems.push(format!("{key}.pool_size: must be at least 1"));
                if let Some(url) = raw.url.as_ref().filter(|u| !is_postgres_url(u)) {
                    problems.push(format!(
                        "{key}.url: {:?} is not a postgres:// URL",
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
                    "{key}.url: {:?} is not a postgres:// URL",
                    crate::redact::url(url)
                ));
                None
            }
            (None, _) => {
                problems.push(format!(
                    "{key}.url: required for kind \"postgres\" (for [sink], TIDEMARK_SINK_URL may give it)"
                ));
                None
            }
        },
        "webhook" => check_webhook_sink(key, raw, env, problems),
        other => {
            problems.push(format!(
                "{key}.kind: unknown kind {other:?} (known: directory, postgres, webhook)"
            ));
            None
        }
    };
    Some(SinkConfig {
        name: String::new(),
        kind: kind?,
        chunks,
    })
}

/// Checks a `webhook` sink: an http(s) URL, a secret, a timeout and tries of at least 1.
fn check_webhook_sink(
    key: &str,
    raw: &RawSink,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<SinkKind> {
    let url = match raw.url.as_deref().map(url::Url::parse) {
        None => {
            problems.push(format!(
                "{key}.url: required for kind \"webhook\" (for [sink], TIDEMARK_SINK_URL may give it)"
            ));
            None
        }
        Some(Ok(u)) if matches!(u.scheme(), "http" | "https") => Some(u),
        Some(_) => {
            problems.push(format!(
                "{key}.url: {:?} is not an http(s) URL",
                crate::redact::url(raw.url.as_deref().unwrap_or_default())
            ));
            None
        }
    };
    let secret = check_secret(key, raw.secret_env.as_ref(), raw.secret_file.as_ref(), env, problems);
    let timeout = raw.timeout_secs.unwrap_or(10);
    if timeout == 0 {
        problems.push(format!("{key}.timeout_secs: must be at least 1, got 0"));
    }
    let max_attempts = raw.max_attempts.unwrap_or(5);
    if max_attempts == 0 {
        problems.push(format!("{key}.max_attempts: must be at least 1, got 0"));
    }
    if raw.path.is_some() || raw.pool_size.is_some() {
        problems.push(format!(
            "{key}: path and pool_size are not settings of kind \"webhook\""
        ));
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
fn check_chunks(key: &str, raw: &RawChunks, problems: &mut Vec<String>) -> Option<ChunkConfig> {
    let default = ChunkConfig::default();
    let size = raw.size.unwrap_or(default.size);
    let overlap = raw.overlap.unwrap_or(default.overlap.min(size / 2));
    if size == 0 {
        problems.push(format!("{key}.chunks.size: must be at least 1 character"));
        return None;
    }
    if overlap >= size {
        problems.push(format!(
            "{key}.chunks.overlap: {overlap} characters must be less than {key}.chunks.size ({size})"
        ));
        return None;
    }
    Some(ChunkConfig { size, overlap })
}
