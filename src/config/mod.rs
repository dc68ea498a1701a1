//! Configuration: the file as written (`RawConfig`) and the checked, typed `Config`.
//!
//! `Config::load` reads a TOML file, applies environment overrides, and
//! validates everything before anything starts. Validation reports *every*
//! problem at once, each with its key path and the bad value
//! (`sources[1].id: "Eng" ...`), never just the first.
//!
//! Secrets never live in the file: connectors and webhooks take the *name* of an
//! environment variable or a file path for their credentials, read by
//! [`SecretRef`].

use std::collections::HashSet;
use std::env::VarError;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod api;
mod redis;
mod sink;

pub use api::{ApiConfig, ApiToken, RawApi, Scope};
pub use redis::{RawRedis, RedisConfig};
pub use sink::{DEFAULT_SINK, RawChunks, RawSink, SinkConfig, SinkKind};

use crate::queue::retention::Retention;
use crate::sources::SourceSettings;
use crate::sources::secret::{SecretError, SecretRef};
use crate::types::SourceId;

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and key.
        message: String,
    },
    /// The values are wrong; one line per problem.
    #[error("config {path}: {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `key.path: problem` lines.
        problems: Vec<String>,
    },
}

/// The file as written. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[redis]`
    pub redis: RawRedis,
    /// `[sync]`, optional.
    #[serde(default)]
    pub sync: RawSync,
    /// `[sink]`: the sink named `default`.
    #[serde(default)]
    pub sink: Option<RawSink>,
    /// `[[sinks]]`: more sinks, each named; sources choose among them.
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    /// `[[sources]]`
    #[serde(default)]
    pub sources: Vec<RawSource>,
    /// `[api]`, optional.
    #[serde(default)]
    pub api: RawApi,
    /// `[queue]`, optional: how much of the streams is kept.
    #[serde(default)]
    pub queue: RawQueue,
}

/// `[queue]` as written; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    /// Most dead letters kept (the oldest go first). Default 10000.
    pub dlq_max_len: u64,
    /// Dead letters older than this are dropped. Default 168 hours (7 days).
    pub dlq_max_age_hours: u64,
    /// How often a coordinator trims the streams, besides after every run. Default 60 s.
    pub trim_interval_secs: u64,
    /// Streams the page jobs are spread over, by source (on a Redis Cluster,
    /// one or more per shard). Default 1.
    pub job_partitions: u16,
}

impl Default for RawQueue {
    fn default() -> Self {
        let r = Retention::default();
        Self {
            dlq_max_len: r.dlq_max_len,
            dlq_max_age_hours: r.dlq_max_age.as_secs() / 3600,
            trim_interval_secs: r.trim_interval.as_secs(),
            job_partitions: 1,
        }
    }
}

/// `[sync]` as written; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSync {
    /// Documents per page job. Default 50.
    pub page_size: usize,
    /// Lock time-to-live; the holder extends it every third of it. Default 30000 ms.
    pub lock_ttl_ms: u64,
    /// A delivered job not acked for this long is claimed by another worker. Default 30000 ms.
    pub job_idle_timeout_ms: u64,
    /// Deliveries before an entry goes to the dead-letter stream. Default 5.
    pub max_deliveries: u32,
    /// A run with no page finished for this long is failed. Default 600 s.
    pub stall_timeout_secs: u64,
    /// Pages one worker process handles at once. Default 4.
    pub worker_concurrency: usize,
    /// Runs (of different sources) one coordinator drives at once. Default 4.
    pub max_concurrent_runs: usize,
    /// How long XREADGROUP blocks waiting for entries. Default 2000 ms.
    pub block_ms: u64,
    /// Pages of one run enqueued and not yet finished, at most: a large run
    /// never holds back another source's small one by more. Default 64.
    pub max_pages_in_flight: usize,
}

impl Default for RawSync {
    fn default() -> Self {
        Self {
            page_size: 50,
            lock_ttl_ms: 30_000,
            job_idle_timeout_ms: 30_000,
            max_deliveries: 5,
            stall_timeout_secs: 600,
            worker_concurrency: 4,
            max_concurrent_runs: 4,
            block_ms: 2000,
            max_pages_in_flight: 64,
        }
    }
}

/// One `[[sources]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Unique id, `[a-z0-9][a-z0-9_-]*`.
    pub id: String,
    /// Connector kind, e.g. `confluence`.
    pub kind: String,
    /// Sync this source incrementally every N seconds (optional).
    pub schedule_every_secs: Option<u64>,
    /// The deletion guard: a run may delete at most this share of the documents
    /// held (0.0..=1.0) unless the request confirms. Default 0.5.
    pub max_delete_share: Option<f64>,
    /// Periodic reconciliation: turn every Nth incremental run into a full one (optional).
    pub reconcile_every_runs: Option<u32>,
    /// Periodic reconciliation: run full when the last full run is older than this (optional).
    pub reconcile_every_hours: Option<u64>,
    /// The connector's own settings (`[sources.settings]`).
    #[serde(default = "empty_table")]
    pub settings: toml::Value,
    /// Webhook deliveries for this source (`[sources.webhook]`), optional.
    pub webhook: Option<RawWebhook>,
    /// The sinks it feeds, by name; default: the only sink, or the one named `default`.
    pub sinks: Option<Vec<String>>,
}

/// `[sources.webhook]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Environment variable holding the shared secret (HMAC key, or the Drive channel token).
    pub secret_env: Option<String>,
    /// File holding the shared secret.
    pub secret_file: Option<PathBuf>,
    /// How far a delivery's timestamp may be from ours. Default 300 s.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
    /// Events within this window become one sync request. Default 5 s.
    #[serde(default = "default_debounce_secs")]
    pub debounce_secs: u64,
    /// Where the source should deliver push notifications (this source's
    /// `https://<tidemark>/webhooks/<id>` as the source can reach it). Set for a
    /// source with push channels (Drive), tidemark opens one itself, renews it
    /// and stops the ones it replaced. Default: none (deliveries are set up by hand).
    pub address: Option<url::Url>,
    /// How long each push channel is asked to live; Drive grants at most a
    /// week. Renewed when a quarter of it is left. Default 604800 s (a week).
    #[serde(default = "default_channel_ttl_secs")]
    pub channel_ttl_secs: u64,
}

fn default_channel_ttl_secs() -> u64 {
    604_800
}

fn default_tolerance_secs() -> u64 {
    300
}
fn default_debounce_secs() -> u64 {
    5
}

/// A shared secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Checked `[sources.webhook]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// The shared secret.
    pub secret: Secret,
    /// Allowed clock difference for signed timestamps (and the replay window).
    pub tolerance: Duration,
    /// Trailing debounce window.
    pub debounce: Duration,
    /// Where push channels deliver (`address`), if tidemark opens them itself.
    pub address: Option<url::Url>,
    /// How long each push channel is asked to live.
    pub channel_ttl: Duration,
}

/// Reads the secret a `{name}_env` / `{name}_file` pair of `key` names (one
/// reader for every such pair: webhook and sink secrets, Redis credentials).
/// `None` when neither is given (no problem: the caller decides whether it is
/// required) or when it cannot be read, with the problem pushed, naming the
/// key: both given, a variable unset or empty, a file unreadable or empty.
fn read_secret_pair(
    key: &str,
    name: &str,
    var: Option<&String>,
    file: Option<&PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<String> {
    if var.is_some() && file.is_some() {
        problems.push(format!("{key}: give {name}_env or {name}_file, not both"));
        return None;
    }
    let secret = SecretRef::from_keys(var, file)?;
    let not_set = |var: &str| format!("{key}.{name}_env: environment variable {var:?} is not set");
    match secret.read_with(name, &|v| env(v).ok_or(VarError::NotPresent)) {
        Ok(value) if !value.is_empty() => Some(value),
        Ok(_) => {
            problems.push(match &secret {
                SecretRef::Env(var) => not_set(var),
                SecretRef::File(path) => format!("{key}.{name}_file: {} is empty", path.display()),
            });
            None
        }
        Err(SecretError::Env { var, .. }) => {
            problems.push(not_set(&var));
            None
        }
        Err(SecretError::File { path, source, .. }) => {
            problems.push(format!("{key}.{name}_file: {}: {source}", path.display()));
            None
        }
    }
}

/// A required `secret_env` / `secret_file` pair of `key` (webhook and sink secrets).
fn check_secret(
    key: &str,
    secret_env: Option<&String>,
    secret_file: Option<&PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<Vec<u8>> {
    if secret_env.is_none() && secret_file.is_none() {
        problems.push(format!("{key}: a secret is required (secret_env or secret_file)"));
        return None;
    }
    read_secret_pair(key, "secret", secret_env, secret_file, env, problems).map(String::into_bytes)
}

fn check_webhook(
    key: &str,
    raw: &RawWebhook,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<WebhookConfig> {
    let secret = check_secret(key, raw.secret_env.as_ref(), raw.secret_file.as_ref(), env, problems);
    if raw.tolerance_secs == 0 {
        problems.push(format!("{key}.tolerance_secs: must be at least 1, got 0"));
    }
    if let Some(a) = &raw.address
        && !matches!(a.scheme(), "http" | "https")
    {
        problems.push(format!(
            "{key}.address: {:?} is not an http(s) URL",
            crate::redact::url(a.as_str())
        ));
    }
    if raw.channel_ttl_secs < 60 {
        problems.push(format!(
            "{key}.channel_ttl_secs: must be at least 60, got {}",
            raw.channel_ttl_secs
        ));
    }
    secret.map(|s| WebhookConfig {
        secret: Secret(s),
        tolerance: Duration::from_secs(raw.tolerance_secs.max(1)),
        debounce: Duration::from_secs(raw.debounce_secs),
        address: raw.address.clone(),
        channel_ttl: Duration::from_secs(raw.channel_ttl_secs.max(60)),
    })
}

fn empty_table() -> toml::Value {
    toml::Value::Table(Default::default())
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Redis connection.
    pub redis: RedisConfig,
    /// Queue and run tuning.
    pub sync: SyncConfig,
    /// Where documents go: every sink, in the order declared (`[sink]` first).
    pub sinks: Vec<SinkConfig>,
    /// The configured sources, ids unique.
    pub sources: Vec<SourceConfig>,
    /// HTTP API address, if enabled.
    pub api_listen: Option<std::net::SocketAddr>,
    /// Who may use the API (`[api]` tokens), and whether `/metrics` needs one.
    pub api: ApiConfig,
    /// What the streams keep (`[queue]`).
    pub queue: Retention,
    /// Job streams (`[queue] job_partitions`).
    pub job_partitions: u16,
}

/// Checked `[sync]`.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Documents per page job.
    pub page_size: NonZeroUsize,
    /// Lock TTL.
    pub lock_ttl: Duration,
    /// Idle time after which a delivered job is claimed by another worker.
    pub job_idle_timeout: Duration,
    /// Deliveries before dead-lettering.
    pub max_deliveries: u32,
    /// No progress for this long fails a run.
    pub stall_timeout: Duration,
    /// Pages fetching from their sources at once per worker process (as many
    /// again may be writing meanwhile).
    pub worker_concurrency: NonZeroUsize,
    /// Runs in flight per coordinator process.
    pub max_concurrent_runs: NonZeroUsize,
    /// Pages of one run enqueued and not yet finished, at most.
    pub max_pages_in_flight: NonZeroUsize,
    /// XREADGROUP BLOCK.
    pub block: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        let raw = RawSync::default();
        let mut problems = Vec::new();
        // The defaults are valid by construction; a failure here is a bug caught by the unit tests.
        check_sync(&raw, &mut problems).expect("default sync settings are valid")
    }
}

/// One checked source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Its id.
    pub id: SourceId,
    /// Connector settings.
    pub settings: SourceSettings,
    /// Periodic incremental sync, if configured.
    pub schedule_every: Option<Duration>,
    /// What a run may do on its own.
    pub policy: SourcePolicy,
    /// Webhook deliveries, if configured.
    pub webhook: Option<WebhookConfig>,
    /// The names of the sinks it feeds (at least one).
    pub sinks: Vec<String>,
}

/// Per-source safety and reconciliation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcePolicy {
    /// Largest share of held documents one run may delete without confirmation.
    pub max_delete_share: f64,
    /// Every Nth incremental run becomes a full one.
    pub reconcile_every_runs: Option<u32>,
    /// An incremental run becomes full when the last full run is older than this.
    pub reconcile_every: Option<Duration>,
}

impl Default for SourcePolicy {
    fn default() -> Self {
        Self {
            max_delete_share: 0.5,
            reconcile_every_runs: None,
            reconcile_every: None,
        }
    }
}

impl Config {
    /// Reads, overrides from the environment, and validates `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, |k| std::env::var(k).ok())
    }

    /// Parses `text`; `env` supplies overrides (a parameter so tests need not touch the process env).
    pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if let Some(url) = env("TIDEMARK_REDIS_URL") {
            raw.redis.url = url;
        }
        // The overrides are for `[sink]`, or the one `[[sinks]]` entry there is.
        let overridden = match (&mut raw.sink, raw.sinks.as_mut_slice()) {
            (Some(sink), _) => Some(sink),
            (None, [only]) => Some(only),
            _ => None,
        };
        if let Some(sink) = overridden {
            if let Some(p) = env("TIDEMARK_SINK_PATH") {
                sink.path = Some(PathBuf::from(p));
            }
            if let Some(u) = env("TIDEMARK_SINK_URL") {
                sink.url = Some(u);
            }
        }
        Self::check(raw, &env).map_err(|problems| Error::Invalid {
            path: path.to_owned(),
            // Problems quote the values they refuse: never a URL's password.
            problems: problems.iter().map(|p| crate::redact::text(p)).collect(),
        })
    }

    /// The source with this id.
    pub fn source(&self, id: &SourceId) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| &s.id == id)
    }
}

fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn check_sync(raw: &RawSync, problems: &mut Vec<String>) -> Option<SyncConfig> {
    let before = problems.len();
    let nonzero = |key: &str, v: usize, problems: &mut Vec<String>| {
        let r = NonZeroUsize::new(v);
        if r.is_none() {
            problems.push(format!("sync.{key}: must be at least 1, got 0"));
        }
        r
    };
    let page_size = nonzero("page_size", raw.page_size, problems);
    let worker_concurrency = nonzero("worker_concurrency", raw.worker_concurrency, problems);
    let max_concurrent_runs = nonzero("max_concurrent_runs", raw.max_concurrent_runs, problems);
    let max_pages_in_flight = nonzero("max_pages_in_flight", raw.max_pages_in_flight, problems);
    if raw.lock_ttl_ms < 100 {
        problems.push(format!(
            "sync.lock_ttl_ms: {} is too short (at least 100)",
            raw.lock_ttl_ms
        ));
    }
    if raw.job_idle_timeout_ms < 100 {
        problems.push(format!(
            "sync.job_idle_timeout_ms: {} is too short (at least 100)",
            raw.job_idle_timeout_ms
        ));
    }
    if raw.max_deliveries == 0 {
        problems.push("sync.max_deliveries: must be at least 1, got 0".into());
    }
    if raw.block_ms == 0 {
        problems.push("sync.block_ms: must be at least 1, got 0".into());
    }
    if problems.len() > before {
        return None;
    }
    Some(SyncConfig {
        page_size: page_size?,
        lock_ttl: Duration::from_millis(raw.lock_ttl_ms),
        job_idle_timeout: Duration::from_millis(raw.job_idle_timeout_ms),
        max_deliveries: raw.max_deliveries,
        stall_timeout: Duration::from_secs(raw.stall_timeout_secs),
        worker_concurrency: worker_concurrency?,
        max_concurrent_runs: max_concurrent_runs?,
        max_pages_in_flight: max_pages_in_flight?,
        block: Duration::from_millis(raw.block_ms),
    })
}

impl Config {
    /// Validates a raw config; `env` resolves secrets named by environment variable.
    pub fn check(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();

        let redis = redis::check(raw.redis, raw.sync.block_ms, env, &mut problems);
        let sync = check_sync(&raw.sync, &mut problems);
        let queue = check_queue(&raw.queue, &mut problems);
        let job_partitions = raw.queue.job_partitions;
        if job_partitions == 0 || job_partitions > 256 {
            problems.push(format!(
                "queue.job_partitions: {job_partitions} is not between 1 and 256"
            ));
        }

        let sinks = sink::check_all(raw.sink.as_ref(), &raw.sinks, env, &mut problems);

        let mut seen = HashSet::new();
        let mut sources = Vec::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            let id = match SourceId::new(s.id.clone()) {
                Ok(id) => Some(id),
                Err(e) => {
                    problems.push(format!("{key}.id: {e}"));
                    None
                }
            };
            if !seen.insert(s.id.clone()) {
                problems.push(format!("{key}.id: duplicate source id {:?}", s.id));
            }
            if s.schedule_every_secs == Some(0) {
                problems.push(format!("{key}.schedule_every_secs: must be at least 1, got 0"));
            }
            let share = s.max_delete_share.unwrap_or(SourcePolicy::default().max_delete_share);
            if !(0.0..=1.0).contains(&share) {
                problems.push(format!("{key}.max_delete_share: {share} is not between 0.0 and 1.0"));
            }
            if s.reconcile_every_runs == Some(0) {
                problems.push(format!("{key}.reconcile_every_runs: must be at least 1, got 0"));
            }
            if s.reconcile_every_hours == Some(0) {
                problems.push(format!("{key}.reconcile_every_hours: must be at least 1, got 0"));
            }
            let webhook = s
                .webhook
                .as_ref()
                .and_then(|w| check_webhook(&format!("{key}.webhook"), w, env, &mut problems));
            let settings = SourceSettings::parse(&s.kind, s.settings, &key, &mut problems);
            let fed = sink::choose(&key, s.sinks.as_ref(), &sinks, &mut problems);
            if let (Some(id), Some(settings)) = (id, settings) {
                sources.push(SourceConfig {
                    id,
                    settings,
                    sinks: fed,
                    schedule_every: s.schedule_every_secs.filter(|s| *s > 0).map(Duration::from_secs),
                    policy: SourcePolicy {
                        max_delete_share: share,
                        reconcile_every_runs: s.reconcile_every_runs.filter(|n| *n > 0),
                        reconcile_every: s
                            .reconcile_every_hours
                            .filter(|h| *h > 0)
                            .map(|h| Duration::from_secs(h * 3600)),
                    },
                    webhook,
                });
            }
        }

        let api = api::check(&raw.api, env, &mut problems);
        let api_listen = api.listen;

        match (problems.is_empty(), redis, sync) {
            (true, Some(redis), Some(sync)) => Ok(Config {
                redis,
                sync,
                sinks,
                sources,
                api_listen,
                api,
                queue,
                job_partitions,
            }),
            _ => Err(problems),
        }
    }
}

/// Checks `[queue]`; zero would mean "keep no dead letter" or "trim in a busy loop".
fn check_queue(raw: &RawQueue, problems: &mut Vec<String>) -> Retention {
    for (key, value) in [
        ("queue.dlq_max_len", raw.dlq_max_len),
        ("queue.dlq_max_age_hours", raw.dlq_max_age_hours),
        ("queue.trim_interval_secs", raw.trim_interval_secs),
    ] {
        if value == 0 {
            problems.push(format!("{key}: must be at least 1, got 0"));
        }
    }
    Retention {
        dlq_max_len: raw.dlq_max_len,
        dlq_max_age: Duration::from_secs(raw.dlq_max_age_hours.saturating_mul(3600)),
        trim_interval: Duration::from_secs(raw.trim_interval_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::chunks::ChunkConfig;

    const GOOD: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"

[sink]
kind = "directory"
path = "/tmp/kb"

[[sources]]
id = "eng"
kind = "confluence"
[sources.settings]
base_url = "https://example.atlassian.net"
space_key = "ENG"
"#;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("t.toml"), |_| None)
    }

    /// A minimal valid file parses, with documented defaults filled in.
    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sync.page_size.get(), 50);
        assert_eq!(c.redis.lock_urls, vec!["redis://127.0.0.1:6379".to_string()]);
        assert!(SyncConfig::default().lock_ttl > Duration::ZERO);
        assert_eq!(c.queue, Retention::default());
    }

    /// `[queue]` sets the stream retention; zeros are refused with their keys.
    #[test]
    fn queue_retention_is_read_and_checked() {
        let c = parse(&format!(
            "{GOOD}\n[queue]\ndlq_max_len = 50\ndlq_max_age_hours = 2\ntrim_interval_secs = 5\n"
        ))
        .unwrap();
        assert_eq!(c.queue.dlq_max_len, 50);
        assert_eq!(c.queue.dlq_max_age, Duration::from_secs(7200));
        assert_eq!(c.queue.trim_interval, Duration::from_secs(5));
        let err = parse(&format!("{GOOD}\n[queue]\ndlq_max_len = 0\ntrim_interval_secs = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue.dlq_max_len: must be at least 1, got 0"), "{err}");
        assert!(
            err.contains("queue.trim_interval_secs: must be at least 1, got 0"),
            "{err}"
        );
    }

    /// Every problem is reported at once, each naming its key and value.
    #[test]
    fn all_problems_are_reported_with_their_keys() {
        let text = r#"
[redis]
url = "http://nope"
lock_urls = ["redis://a", "redis://b"]

[sync]
page_size = 0

[sink]
kind = "s3"

[[sources]]
id = "Eng"
kind = "confluence"
[sources.settings]
base_url = "https://example.atlassian.net"
space_key = "ENG"

[[sources]]
id = "x"
kind = "jira"

[[sources]]
id = "x"
kind = "confluence"
[sources.settings]
base_url = "htp:/x"
space_key = "ENG"
"#;
        let Err(Error::Invalid { problems, .. }) = parse(text) else {
            panic!("expected invalid config");
        };
        let all = problems.join("\n");
        for needle in [
            "redis.url: \"http://nope\"",
            "redis.lock_urls: 2 nodes",
            "sync.page_size",
            "sink.kind: unknown kind \"s3\"",
            "sources[0].id",
            "sources[1].kind: unknown kind \"jira\"",
            "sources[2].id: duplicate source id \"x\"",
            "sources[2].settings.base_url",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    /// Blocking reads must end before the Redis response timeout, or every idle
    /// read times out (issue 8, point 7); a zero response timeout is refused.
    #[test]
    fn timeouts_must_fit_together() {
        let text = GOOD.replace(
            "url = \"redis://127.0.0.1:6379\"",
            "url = \"redis://127.0.0.1:6379\"\nresponse_timeout_ms = 2000\n[sync]\nblock_ms = 2000",
        );
        let Err(Error::Invalid { problems, .. }) = parse(&text) else {
            panic!("block_ms = response_timeout_ms must be refused");
        };
        let all = problems.join("\n");
        assert!(
            all.contains("sync.block_ms: 2000 ms must be below redis.response_timeout_ms (2000 ms)"),
            "{all}"
        );
        let text = GOOD.replace(
            "url = \"redis://127.0.0.1:6379\"",
            "url = \"redis://127.0.0.1:6379\"\nresponse_timeout_ms = 0",
        );
        let Err(Error::Invalid { problems, .. }) = parse(&text) else {
            panic!("a zero response timeout must be refused");
        };
        assert!(
            problems
                .join("\n")
                .contains("redis.response_timeout_ms: must be at least 1, got 0"),
            "{problems:?}"
        );
        let fits = GOOD.replace(
            "url = \"redis://127.0.0.1:6379\"",
            "url = \"redis://127.0.0.1:6379\"\nresponse_timeout_ms = 2500\n[sync]\nblock_ms = 2000",
        );
        assert!(parse(&fits).is_ok());
    }

    /// The Redis retry policy defaults to 200 ms .. 10 s; a zero start or a cap
    /// below the start is refused, naming the key.
    #[test]
    fn redis_retry_policy() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.redis.retry, crate::retry::Backoff::default());
        let set = |extra: &str| {
            GOOD.replace(
                "url = \"redis://127.0.0.1:6379\"",
                &format!("url = \"redis://127.0.0.1:6379\"\n{extra}"),
            )
        };
        let c = parse(&set("retry_initial_ms = 50\nretry_max_ms = 2000")).expect("valid");
        assert_eq!(c.redis.retry.initial, Duration::from_millis(50));
        assert_eq!(c.redis.retry.max, Duration::from_secs(2));
        assert_eq!(c.redis.wait_replicas, None, "not waiting for replicas unless asked");
        let c = parse(&set("wait_replicas = 1\nwait_replicas_ms = 500")).expect("valid");
        assert_eq!(c.redis.wait_replicas, Some((1, Duration::from_millis(500))));
        for (extra, needle) in [
            (
                "wait_replicas = 1\nwait_replicas_ms = 5000",
                "redis.wait_replicas_ms: 5000 ms must be at least 1 and below redis.response_timeout_ms (5000 ms)",
            ),
            ("retry_initial_ms = 0", "redis.retry_initial_ms: must be at least 1"),
            (
                "retry_initial_ms = 500\nretry_max_ms = 100",
                "redis.retry_max_ms: 100 ms must be at least redis.retry_initial_ms (500 ms)",
            ),
        ] {
            let Err(Error::Invalid { problems, .. }) = parse(&set(extra)) else {
                panic!("{extra} must be refused");
            };
            assert!(problems.join("\n").contains(needle), "{problems:?}");
        }
    }

    /// A password in a bad Redis URL is not echoed in the error.
    #[test]
    fn bad_redis_urls_are_reported_without_their_password() {
        let text = GOOD.replace("redis://127.0.0.1:6379", "http://default:s3cret@127.0.0.1:6379");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("redis.url") && !err.contains("s3cret"), "{err}");
    }

    /// An unknown key is an error naming it, not silently ignored.
    #[test]
    fn unknown_keys_are_refused() {
        let text = GOOD.replace("[sink]", "[sink]\ncolour = \"blue\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    /// A webhook secret comes from exactly one of secret_env and secret_file,
    /// trimmed; every way to get it wrong is reported under the webhook's key.
    #[test]
    fn webhook_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let (full, empty) = (dir.path().join("full"), dir.path().join("empty"));
        std::fs::write(&full, "s3cret\n").unwrap();
        std::fs::write(&empty, " \n").unwrap();
        let env = |k: &str| (k == "HOOK").then(|| "env-secret".to_owned());
        let check = |webhook: &str| {
            let text = format!("{GOOD}[sources.webhook]\n{webhook}\n");
            Config::parse(&text, Path::new("t.toml"), env)
        };
        let secret = |webhook: &str| check(webhook).unwrap().sources[0].webhook.clone().unwrap().secret;
        assert_eq!(secret(&format!("secret_file = {full:?}")), Secret(b"s3cret".to_vec()));
        assert_eq!(secret("secret_env = \"HOOK\""), Secret(b"env-secret".to_vec()));
        for (webhook, needle) in [
            (
                "secret_env = \"UNSET\"".to_owned(),
                "sources[0].webhook.secret_env: environment variable \"UNSET\" is not set".to_owned(),
            ),
            (
                format!("secret_file = {empty:?}"),
                format!("sources[0].webhook.secret_file: {} is empty", empty.display()),
            ),
            (
                format!("secret_file = {:?}", dir.path().join("missing")),
                format!(
                    "sources[0].webhook.secret_file: {}: ",
                    dir.path().join("missing").display()
                ),
            ),
            (
                format!("secret_env = \"HOOK\"\nsecret_file = {full:?}"),
                "sources[0].webhook: give secret_env or secret_file, not both".to_owned(),
            ),
            (
                "debounce_secs = 1".to_owned(),
                "sources[0].webhook: a secret is required (secret_env or secret_file)".to_owned(),
            ),
        ] {
            let err = check(&webhook).unwrap_err().to_string();
            assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
        }
    }

    /// Environment overrides replace the file's Redis URL and sink path.
    #[test]
    fn environment_overrides_apply() {
        let c = Config::parse(GOOD, Path::new("t.toml"), |k| match k {
            "TIDEMARK_REDIS_URL" => Some("redis://10.0.0.1:7000".into()),
            "TIDEMARK_SINK_PATH" => Some("/data/kb".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.redis.url, "redis://10.0.0.1:7000");
        let SinkKind::Directory { path } = &c.sinks[0].kind else {
            panic!("a directory sink: {:?}", c.sinks);
        };
        assert_eq!(path, Path::new("/data/kb"));
    }

    /// `[sink.chunks]`: defaults, explicit values, and an overlap that would
    /// repeat whole chunks or a zero size named.
    #[test]
    fn chunk_settings() {
        let check = |text: &str| Config::parse(text, Path::new("t.toml"), |_| None);
        let none = check(GOOD).expect("valid");
        assert_eq!(none.sinks[0].chunks, None, "no chunks unless asked");
        let with = |table: &str| check(&GOOD.replace("[sink]", &format!("[sink.chunks]\n{table}\n[sink]")));
        assert_eq!(with("").expect("valid").sinks[0].chunks, Some(ChunkConfig::default()));
        assert_eq!(
            with("size = 400\noverlap = 40").expect("valid").sinks[0].chunks,
            Some(ChunkConfig { size: 400, overlap: 40 })
        );
        assert_eq!(
            with("size = 120").expect("valid").sinks[0].chunks,
            Some(ChunkConfig { size: 120, overlap: 60 }),
            "the default overlap shrinks to half a small size"
        );
        let err = with("size = 100\noverlap = 100").unwrap_err().to_string();
        assert!(
            err.contains("sink.chunks.overlap: 100 characters must be less than sink.chunks.size (100)"),
            "{err}"
        );
        let err = with("size = 0").unwrap_err().to_string();
        assert!(err.contains("sink.chunks.size: must be at least 1"), "{err}");
        let err = with("sise = 10").unwrap_err().to_string();
        assert!(err.contains("sise"), "{err}");
    }

    /// `[[sinks]]`: named sinks, each source choosing which it feeds; a
    /// source naming none feeds the only sink or the one named `default`;
    /// unknown, duplicate and missing names are named.
    #[test]
    fn named_sinks_and_the_sources_that_choose_them() {
        let parse = |text: &str| Config::parse(text, Path::new("t.toml"), |_| None);
        let two = GOOD.replace(
            "[sink]\nkind = \"directory\"\npath = \"/tmp/kb\"",
            "[[sinks]]\nname = \"files\"\nkind = \"directory\"\npath = \"/tmp/kb\"\n\n[[sinks]]\nname = \"kb\"\nkind = \"postgres\"\nurl = \"postgres://db/kb\"",
        );
        let err = parse(&two).unwrap_err().to_string();
        assert!(
            err.contains(
                "sources[0].sinks: several sinks are declared ([\"files\", \"kb\"]) and none is named \"default\""
            ),
            "{err}"
        );
        let chosen = two.replace("space_key = \"ENG\"", "space_key = \"ENG\"\n[[sources]]\nid = \"web\"\nkind = \"http\"\nsinks = [\"kb\"]\n[sources.settings]\nurls = [\"https://example.net/\"]");
        let chosen = chosen.replace(
            "id = \"eng\"\nkind = \"confluence\"",
            "id = \"eng\"\nkind = \"confluence\"\nsinks = [\"kb\", \"files\"]",
        );
        let c = parse(&chosen).expect("valid");
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["files", "kb"]);
        assert_eq!(c.sources[0].sinks, ["kb", "files"]);
        assert_eq!(c.sources[1].sinks, ["kb"]);

        // `[sink]` is `default`: with more sinks, sources naming none feed it.
        let with_default = GOOD.replace(
            "[[sources]]",
            "[[sinks]]\nname = \"kb\"\nkind = \"postgres\"\nurl = \"postgres://db/kb\"\n\n[[sources]]",
        );
        let c = parse(&with_default).expect("valid");
        assert_eq!(c.sources[0].sinks, ["default"]);

        for (text, needle) in [
            (
                chosen.replace("sinks = [\"kb\"]", "sinks = [\"nope\"]"),
                "sources[1].sinks: no sink is named \"nope\"",
            ),
            (
                chosen.replace("sinks = [\"kb\"]", "sinks = []"),
                "sources[1].sinks: empty",
            ),
            (
                chosen.replace("name = \"kb\"", "name = \"files\""),
                "sinks[1].name: duplicate sink name \"files\"",
            ),
            (chosen.replace("name = \"kb\"\n", ""), "sinks[1].name: \"\" must be"),
            (
                chosen.replace("name = \"kb\"", "name = \"K B\""),
                "sinks[1].name: \"K B\" must be",
            ),
            (
                chosen.replace("url = \"postgres://db/kb\"", "url = \"mysql://db\""),
                "sinks[1].url: \"mysql://db\" is not a postgres:// URL",
            ),
            (
                GOOD.replace("[sink]\nkind = \"directory\"\npath = \"/tmp/kb\"", ""),
                "sink: no sink is configured",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    /// `[api]` tokens from a file or an environment variable; a missing
    /// file, an unset variable, both at once, and protected metrics without
    /// tokens are named.
    #[test]
    fn api_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "ci sync 0123456789abcdef01
ops admin 0123456789abcdef02
",
        )
        .unwrap();
        let api = |table: &str| GOOD.replace("[[sources]]", &format!("[api]\n{table}\n\n[[sources]]"));
        let env = |k: &str| (k == "TOKENS").then(|| "reader read 0123456789abcdef03".to_owned());
        let parse = |text: &str| Config::parse(text, Path::new("t.toml"), env);
        let c = parse(&api(&format!("tokens_file = {file:?}"))).expect("valid");
        let names: Vec<(&str, Scope)> = c.api.tokens.iter().map(|t| (t.name.as_str(), t.scope)).collect();
        assert_eq!(names, [("ci", Scope::Sync), ("ops", Scope::Admin)]);
        assert!(
            !format!("{:?}", c.api).contains("0123456789abcdef"),
            "tokens never reach Debug"
        );
        let c = parse(&api("tokens_env = \"TOKENS\"\nprotect_metrics = true")).expect("valid");
        assert_eq!((c.api.tokens.len(), c.api.protect_metrics), (1, true));
        assert!(parse(GOOD).expect("valid").api.tokens.is_empty(), "no tokens: open");
        for (table, needle) in [
            (
                "tokens_file = \"/nonexistent/tokens\"".to_owned(),
                "api.tokens_file: /nonexistent/tokens:",
            ),
            (
                "tokens_env = \"UNSET\"".to_owned(),
                "api.tokens_env: environment variable \"UNSET\" is not set",
            ),
            (
                format!("tokens_file = {file:?}\ntokens_env = \"TOKENS\""),
                "api: give tokens_file or tokens_env, not both",
            ),
            ("protect_metrics = true".to_owned(), "api.protect_metrics: needs tokens"),
        ] {
            let err = parse(&api(&table)).unwrap_err().to_string();
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    /// A webhook sink needs an http(s) URL and a secret; zero timeouts and
    /// tries are named; the secret never reaches the config's `Debug`.
    #[test]
    fn webhook_sink_settings() {
        let hook = |rest: &str| {
            GOOD.replace(
                "kind = \"directory\"\npath = \"/tmp/kb\"",
                &format!("kind = \"webhook\"\n{rest}"),
            )
        };
        let env = |k: &str| (k == "HOOK_SECRET").then(|| "s3cret".to_owned());
        let c = Config::parse(
            &hook("url = \"https://indexer.example.net/tidemark\"\nsecret_env = \"HOOK_SECRET\"\ntimeout_secs = 3"),
            Path::new("t.toml"),
            env,
        )
        .expect("valid");
        let SinkKind::Webhook {
            url,
            secret,
            timeout,
            max_attempts,
        } = &c.sinks[0].kind
        else {
            panic!("a webhook sink: {:?}", c.sinks);
        };
        assert_eq!(url.as_str(), "https://indexer.example.net/tidemark");
        assert_eq!(secret.0, b"s3cret");
        assert_eq!((*timeout, *max_attempts), (Duration::from_secs(3), 5));
        assert!(!format!("{:?}", c.sinks).contains("s3cret"));
        for (rest, needle) in [
            (
                "secret_env = \"HOOK_SECRET\"",
                "sink.url: required for kind \"webhook\"",
            ),
            (
                "url = \"ftp://x\"\nsecret_env = \"HOOK_SECRET\"",
                "sink.url: \"ftp://x\" is not an http(s) URL",
            ),
            (
                "url = \"http://x\"",
                "sink: a secret is required (secret_env or secret_file)",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"UNSET\"",
                "sink.secret_env: environment variable \"UNSET\" is not set",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"HOOK_SECRET\"\ntimeout_secs = 0",
                "sink.timeout_secs: must be at least 1",
            ),
            (
                "url = \"http://x\"\nsecret_env = \"HOOK_SECRET\"\nmax_attempts = 0",
                "sink.max_attempts: must be at least 1",
            ),
        ] {
            let err = Config::parse(&hook(rest), Path::new("t.toml"), env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    /// A PostgreSQL sink takes its URL from the file or `TIDEMARK_SINK_URL`;
    /// a missing or foreign URL and a zero pool are named; the password never
    /// reaches the config's `Debug`.
    #[test]
    fn postgres_sink_settings() {
        let pg = GOOD.replace("kind = \"directory\"", "kind = \"postgres\"\npool_size = 3");
        let c = Config::parse(&pg, Path::new("t.toml"), |k| {
            (k == "TIDEMARK_SINK_URL").then(|| "postgres://kb:s3cret@db:5432/kb".to_owned())
        })
        .expect("valid");
        let SinkKind::Postgres { url, pool_size } = &c.sinks[0].kind else {
            panic!("a postgres sink: {:?}", c.sinks);
        };
        assert_eq!((url.as_str(), *pool_size), ("postgres://kb:s3cret@db:5432/kb", 3));
        assert!(!format!("{:?}", c.sinks).contains("s3cret"));
        let bad = pg.replace("pool_size = 3", "pool_size = 0\nurl = \"mysql://x\"");
        let err = Config::parse(&bad, Path::new("t.toml"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink.url: \"mysql://x\" is not a postgres:// URL"),
            "{err}"
        );
        assert!(err.contains("sink.pool_size: must be at least 1"), "{err}");
        let none = Config::parse(&pg, Path::new("t.toml"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(none.contains("sink.url: required for kind \"postgres\""), "{none}");
    }
}
