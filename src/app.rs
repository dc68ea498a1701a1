//! Wiring: from a checked `Config` to connected pools, connectors, the sink,
//! and ready-to-run coordinators and workers. The binary and the integration
//! tests build processes the same way, through here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::db::Pool;

use crate::config::{Config, SinkConfig, SinkKind};
use crate::coordinator::Coordinator;
use crate::db::{self, PoolError};
use crate::gate::Gates;
use crate::hooks::{Hooks, RunHooks};
use crate::keys::Keys;
use crate::lock::LockManager;
use crate::retry::Backoff;
use crate::sinks::Sink;
use crate::sinks::directory::DirectorySink;
use crate::sinks::postgres::PostgresSink;
use crate::sinks::routes::Routes;
use crate::sinks::webhook::{WebhookSettings, WebhookSink};
use crate::sources::{self, Source};
use crate::state::StateStore;
use crate::telemetry::Telemetry;
use crate::types::SourceId;
use crate::worker::Worker;

/// Failures while wiring up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Redis pool could not be created.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A connector could not be built.
    #[error("source {0}: {1}")]
    Source(SourceId, sources::Error),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// The sink could not be set up.
    #[error("sink: {0}")]
    Sink(String),
}

/// Everything a tidemark process shares.
#[derive(Clone)]
pub struct App {
    /// The checked configuration.
    pub config: Config,
    /// Main Redis: streams and state.
    pub pool: Pool,
    /// Key names.
    pub keys: Keys,
    /// Locks over the lock nodes.
    pub locks: LockManager,
    /// Connectors by source id.
    pub sources: HashMap<SourceId, Arc<dyn Source>>,
    /// The sinks each source feeds.
    pub sinks: Routes,
    /// Run points announced by the coordinators and workers built here; none
    /// unless a test installed some ([`App::with_hooks`]).
    pub hooks: Hooks,
    /// This process's counters and histograms (`/metrics` adds the fleet's figures).
    pub telemetry: Telemetry,
}

impl App {
    /// Connects pools and builds connectors (Redis is contacted lazily).
    pub fn new(config: Config) -> Result<Self, Error> {
        let r = &config.redis;
        let pool = if r.cluster {
            db::cluster_pool(&r.cluster_seeds, &r.access, r.pool_size, r.response_timeout)?
        } else {
            db::pool_with(&r.url, &r.access, r.pool_size, r.response_timeout)?
        };
        let lock_pools = r
            .lock_urls
            .iter()
            .map(|u| {
                if u == &r.url {
                    Ok(pool.clone())
                } else {
                    db::pool_with(u, &r.access, 4, r.response_timeout)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = Keys::new(r.namespace.clone()).with_job_partitions(config.job_partitions);
        let http = reqwest::Client::builder()
            .user_agent(concat!("tidemark/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        // One rate gate per source in the main Redis, shared by every process of the fleet.
        let gates = Gates::shared(pool.clone(), keys.clone());
        let mut sources = HashMap::new();
        for s in &config.sources {
            let connector = sources::build(s.id.clone(), &s.settings, http.clone(), &gates)
                .map_err(|e| Error::Source(s.id.clone(), e))?;
            sources.insert(s.id.clone(), connector);
        }
        let mut built: HashMap<String, Arc<dyn Sink>> = HashMap::new();
        for sink in &config.sinks {
            let ledger = StateStore::new(pool.clone(), keys.clone()).with_replica_wait(config.redis.wait_replicas);
            built.insert(sink.name.clone(), build_sink(sink, ledger)?);
        }
        let sinks = Routes::new(
            &built,
            config.sources.iter().map(|s| (s.id.clone(), s.sinks.as_slice())),
        );
        Ok(Self {
            locks: LockManager::new(lock_pools, keys.clone()),
            config,
            pool,
            keys,
            sources,
            sinks,
            hooks: Hooks::default(),
            telemetry: Telemetry::new(&crate::telemetry::process_name()),
        })
    }

    /// Tests only: coordinators and workers built from here on announce their
    /// run points to `hooks` and wait for it (see [`crate::hooks`]).
    pub fn with_hooks(mut self, hooks: Arc<dyn RunHooks>) -> Self {
        self.hooks = Hooks::new(hooks);
        self
    }

    /// What `source` feeds (its one sink, or a fan-out over several).
    pub fn sink_for(&self, source: &SourceId) -> Option<Arc<dyn Sink>> {
        self.sinks.sink(source)
    }

    /// The state store.
    pub fn state(&self) -> StateStore {
        StateStore::new(self.pool.clone(), self.keys.clone()).with_replica_wait(self.config.redis.wait_replicas)
    }

    /// A coordinator named `consumer`.
    pub fn coordinator(&self, consumer: impl Into<String>) -> Arc<Coordinator> {
        Arc::new(
            Coordinator::new(
                self.pool.clone(),
                self.keys.clone(),
                self.locks.clone(),
                self.sources.clone(),
                self.sinks.clone(),
                &self.config.sources,
                self.config.sync.clone(),
                consumer.into(),
            )
            .with_state(self.state())
            .with_redis_retry(self.config.redis.retry, self.redis_addr())
            .with_state(self.state())
            .with_retention(self.config.queue.clone())
            .with_hooks(self.hooks.clone())
            .with_telemetry(self.telemetry.clone()),
        )
    }

    /// A worker named `consumer`.
    pub fn worker(&self, consumer: impl Into<String>) -> Arc<Worker> {
        Arc::new(
            Worker::new(
                self.pool.clone(),
                self.keys.clone(),
                self.sources.clone(),
                self.sinks.clone(),
                self.config.sync.clone(),
                consumer.into(),
            )
            .with_state(self.state())
            .with_redis_retry(self.config.redis.retry, self.redis_addr())
            .with_hooks(self.hooks.clone())
            .with_telemetry(self.telemetry.clone()),
        )
    }

    /// The main Redis's address as logs may show it (password redacted).
    pub fn redis_addr(&self) -> String {
        db::redacted(&self.config.redis.url)
    }
}

/// One configured sink, built (nothing is connected yet); a delivering sink
/// keeps its fence and ledger in `ledger`.
fn build_sink(config: &SinkConfig, ledger: StateStore) -> Result<Arc<dyn Sink>, Error> {
    let chunks = config.chunks;
    let failed = |e: crate::sinks::Error| Error::Sink(format!("{}: {e}", config.name));
    Ok(match &config.kind {
        SinkKind::Directory { path } => {
            let sink = DirectorySink::new(path.clone());
            Arc::new(match chunks {
                Some(c) => sink.with_chunks(c),
                None => sink,
            })
        }
        SinkKind::Webhook {
            url,
            secret,
            timeout,
            max_attempts,
        } => {
            let settings = WebhookSettings {
                url: url.clone(),
                secret: secret.0.clone(),
                timeout: *timeout,
                max_attempts: *max_attempts,
                backoff: Backoff::default(),
            };
            let sink = WebhookSink::new(config.name.clone(), settings, ledger).map_err(failed)?;
            Arc::new(match chunks {
                Some(c) => sink.with_chunks(c),
                None => sink,
            })
        }
        SinkKind::Postgres { url, pool_size } => {
            let sink = PostgresSink::new(url, *pool_size).map_err(failed)?;
            Arc::new(match chunks {
                Some(c) => sink.with_chunks(c),
                None => sink,
            })
        }
    })
}

/// A consumer name unique to this process: `$HOSTNAME` (the pod name on Kubernetes) plus a random suffix.
pub fn consumer_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{role}-{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
