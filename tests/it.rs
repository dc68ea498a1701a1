//! Integration tests, compiled as one binary. Every test starts its own
//! redis-server on a free port (see `harness`), so tests run in parallel and
//! can kill, pause and restart their Redis.

mod harness;

/// The HTTP API: sync requests, status, metrics, readiness, and its error statuses.
mod api;
/// Confluence attachments as documents: every file kind read, versions, deletion with the page and at the sweep.
mod attachments;
/// Chaos: sources sync through killed and stopped processes and Redis faults; the sink ends equal to every source.
mod chaos;
/// The binary's edge: configuration and argument errors.
mod cli;
/// On a 3-primary Redis Cluster: the sync scenario, the lock, fencing.
mod cluster;
/// Randomized convergence: after any sequence of source changes, one quiet sync makes the sink equal every source.
mod convergence;
/// The live dashboard in headless Chromium: runs, queues, dead letters, behind a read token.
mod dashboard;
/// Deletion guard and periodic reconciliation.
mod deletions;
/// Dependency tracking: breadcrumbs and link titles follow renames, moves and deletions.
mod dependencies;
/// Fencing across coordinator failover: stale jobs reach neither sink nor state.
mod failover;
/// Fairness: a large run of one source does not hold back a small run of another.
mod fairness;
/// The filesystem connector: size/mtime/hash versions, moves, breadcrumbs from directories.
mod filesystem;
/// Google Drive: change tokens, moves, folder subtrees, expired tokens, rate limits, shared drives.
mod gdrive;
/// The HTTP connector against a real nginx: conditional requests, 304s, sitemaps.
mod http_source;
/// Per-document failure isolation: one bad document fails alone and is retried by every run.
mod isolation;
/// House rules of src/: Redis only in its rooms, Lua in files, no import cycle, file sizes.
mod layout;
/// Lock exclusion, expiry, Redlock majorities, fencing of stale writes.
mod lock;
/// Shipped monitoring: alert rules (promtool check and unit tests) and the Grafana dashboard's queries.
mod monitoring;
/// Permission-aware documents: readers in the sink, permission changes synced without fetching, searches filtered by reader.
mod permissions;
/// A run's plan kept in Redis: later observations replace earlier, each id in one page.
mod plan;
/// API roots with a path: Drive and Confluence behind a real nginx proxy under a prefix.
mod proxy;
/// Dead letters, poison jobs, redelivery after a worker dies.
mod queue;
/// Races made deterministic: a source changes at a point of a run the test chooses.
mod races;
/// The fleet-wide rate gate: no early requests after Retry-After, budgets held across worker processes.
mod rate_gate;
/// Redis faults: start-up without Redis, readiness, runs and `enqueue --wait` across outages.
mod redis_faults;
/// Redis over TLS as an ACL user limited to tidemark's keys.
mod redis_tls;
/// Every per-run key expires.
mod run_keys;
/// Schedules over coordinator replicas: each due time once, spread over the period and the replicas.
mod schedules;
/// The sink contract: one conformance suite every sink passes.
mod sinks;
/// Bounded streams: acked entries trimmed, pending ones never, dead letters by count and age.
mod streams;
/// End-to-end sync scenarios from the problem statement.
mod sync;
/// `tidemark verify`: drift by kind between sink, state and source, and its repair.
mod verify;
/// Web pages as a browser reads them: compression, charsets, text, redirects, PDFs, caps, one failing URL.
mod web;
/// Webhooks: signatures, replays, Drive push notifications, debouncing, targeted runs.
mod webhooks;
