//! tidemark: incremental sync of knowledge-base sources through Redis streams.
//!
//! # Layout
//! - [`types`]: domain newtypes (`SourceId`, `DocumentId`, `FencingToken`, `RunId`, `SyncMode`).
//! - [`config`]: the config file as written, and the validated `Config`.
//! - [`keys`]: every Redis key name, with the `{source}` hash tag.
//! - [`db`]: Redis connection pools with timeouts (no PING per checkout: RESP3
//!   connections report their own closing); which Redis errors mean "unavailable".
//! - [`retry`]: the one policy for Redis faults (capped exponential backoff with
//!   jitter, [`retry::Transient`] errors), used by every component.
//! - [`queue`]: Redis Streams (requests, page jobs, dead letters), the message
//!   envelope, enqueueing, the follow-up list, schedules (due sources claimed
//!   by one replica), batched acks, webhook debounce, stream retention (trimming).
//! - [`lock`]: the per-source Redlock lease, fencing tokens, the fenced-script composer.
//! - [`state`]: fence, checkpoints, held documents (`docs`), mark and sweep
//!   (`sweep`), run records (`runs`); every write fenced.
//!
//! - [`gate`]: the per-source rate gate shared by the fleet (not-before after a
//!   throttle, shared backoff level, optional GCRA budget), with a local fallback.
//!
//!   Only `queue`, `lock`, `state`, `gate` and `db` speak to Redis; their Lua scripts are `lua/*.lua` files.
//! - [`ancestry`]: breadcrumbs, the one ancestry walk shared by coordinator and worker.
//! - [`coordinator`]: request -> lock -> change feed -> page jobs -> checkpoint
//!   (`run`, `plan`, `dependents`).
//! - [`worker`]: page job -> fetch -> sink + state -> ack.
//! - [`hooks`]: named points of a run (feed page read, planned, page start/end,
//!   pages done, before commit) where a test may pause it to replay a race.
//! - [`sources`]: the `Source` trait, one folder per connector (settings, api,
//!   feed, ...), and what they share (`client`, `settings`, `secret`, `clock`).
//! - [`extract`]: bytes to readable text (PDF, Office, HTML, text in any
//!   charset), shared by every connector.
//! - [`sinks`]: the `Sink` trait and the document contract, one sink per file.
//! - [`permissions`]: who may read a document, normalized across sources, and the check a retriever makes.
//! - [`simulators`]: faithful imitations of third-party APIs, one folder each, for tests and the demo.
//! - [`api`]: the HTTP API (trigger syncs, request and source status, probes, Prometheus metrics).
//! - [`app`]: wiring a `Config` into running parts; [`shutdown`]: signals.
//! - [`signing`]: the HMAC-SHA256 signature of webhooks, checked inbound and made outbound.
//! - [`redact`]: passwords out of URLs and of any text quoting them (errors, logs, config problems).
//! - [`report`]: gathering status, and printing it and run figures for people and scripts.
//! - [`verify`]: sink vs state vs source, and the targeted run that repairs drift.

#![forbid(unsafe_code)]

pub mod ancestry;
pub mod api;
pub mod app;
pub mod config;
pub mod coordinator;
pub mod db;
pub mod extract;
pub mod gate;
pub mod hooks;
pub mod keys;
pub mod lock;
pub mod permissions;
pub mod queue;
pub mod redact;
pub mod report;
pub mod retry;
pub mod shutdown;
pub mod signing;
pub mod simulators;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod telemetry;
pub mod types;
pub mod verify;
pub mod worker;
