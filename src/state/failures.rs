//! Documents that failed on their own (`tm:{S}:failed`): fetched, extracted or
//! written without success while the rest of their page was applied.
//!
//! Invariants:
//! - a failed document is retried by every later run until it succeeds or the
//!   source no longer has it: the plan names every failed document
//!   (the coordinator's `include_unsettled`) and the worker does not
//!   trust a matching version for it. So the checkpoint may advance past the
//!   change that failed without the change ever being silently skipped;
//! - the record goes away in the same script that records the document's
//!   successful write or deletion ([`StateStore::apply_docs`]);
//! - recording is fenced like every other write of a run.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_redis::redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{Error, StateStore, decode, encode};
use crate::lock::fencing;
use crate::types::{DocumentId, FencingToken, RunId, SourceId};

/// Why one document failed, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocFailure {
    /// What went wrong, for people (names the document and the step).
    pub reason: String,
    /// Whether a later attempt may succeed without anything changing.
    pub retryable: bool,
    /// The run that failed it last.
    pub run: RunId,
    /// When (our clock).
    pub at: DateTime<Utc>,
}

static FENCED_RECORD_FAILURES: LazyLock<Script> =
    LazyLock::new(|| fencing::fenced_script(include_str!("lua/record_failures.lua")));

impl StateStore {
    /// Records `failures` under `token`.
    pub async fn record_failures(
        &self,
        source: &SourceId,
        token: FencingToken,
        failures: &[(DocumentId, DocFailure)],
    ) -> Result<(), Error> {
        if failures.is_empty() {
            return Ok(());
        }
        let keys = [self.keys.fence(source), self.keys.failed(source)];
        let mut args = Vec::with_capacity(failures.len() * 2);
        for (id, f) in failures {
            args.push(id.0.as_bytes().to_vec());
            args.push(encode(f));
        }
        self.fenced(&FENCED_RECORD_FAILURES, &keys, token, &args).await?;
        Ok(())
    }

    /// Every failed document of `source` with its failure.
    pub async fn failures(&self, source: &SourceId) -> Result<HashMap<DocumentId, DocFailure>, Error> {
        let key = self.keys.failed(source);
        let mut conn = self.pool.get().await?;
        let all: HashMap<String, Vec<u8>> = conn.hgetall(&key).await?;
        all.into_iter()
            .map(|(id, bytes)| Ok((DocumentId(id.clone()), decode(&key, &id, &bytes)?)))
            .collect()
    }

    /// Which of `ids` are recorded as failed (one HMGET).
    pub async fn failed_of(&self, source: &SourceId, ids: &[&DocumentId]) -> Result<HashSet<DocumentId>, Error> {
        self.present_in(&self.keys.failed(source), ids).await
    }
}
