//! The ledger of a delivering sink: a sink that hands documents to someone
//! else (the webhook sink POSTs them to an indexer) and keeps no copy it could
//! read back. Per source and sink name, it holds the sink's own fence
//! (`tm:{S}:sink:{name}:fence`) and what was delivered
//! (`tm:{S}:sink:{name}:delivered`: id -> version and content hash).
//!
//! Invariants: the fence is raised when a run registers its token, so it
//! refuses an older run's deliveries even if the new run delivers nothing; a
//! delivery is recorded only after the receiver accepted it, under the fence,
//! so the ledger never claims what was not delivered (a crash in between makes
//! the next run deliver again, with the same idempotency key).

use std::collections::HashMap;
use std::sync::LazyLock;

use deadpool_redis::redis::{self, Script};

use super::{Error, StateStore};
use crate::lock::fencing::{self, StaleFence};
use crate::types::{DocumentId, FencingToken, SourceId};

static REGISTER: LazyLock<Script> = LazyLock::new(|| fencing::fenced_script(include_str!("lua/register_token.lua")));
static DELIVERED: LazyLock<Script> = LazyLock::new(|| fencing::fenced_script(include_str!("lua/delivered.lua")));

/// A document as delivered: its version and content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Source version.
    pub version: String,
    /// The sink document's content hash.
    pub content_hash: String,
}

fn encode(d: &Delivered) -> Vec<u8> {
    format!("{}\0{}", d.version, d.content_hash).into_bytes()
}

fn decode(raw: &str) -> Option<Delivered> {
    raw.split_once('\0').map(|(v, h)| Delivered {
        version: v.to_owned(),
        content_hash: h.to_owned(),
    })
}

impl StateStore {
    /// Raises `sink`'s fence for `source` to `token`; refused if a higher one was seen.
    pub async fn register_sink_token(&self, source: &SourceId, sink: &str, token: FencingToken) -> Result<(), Error> {
        self.raise_fence(source, &REGISTER, &[self.keys.sink_fence(source, sink)], token)
            .await
    }

    /// What `sink` delivered of `id`, if anything, refusing `token` if `sink`
    /// has seen a higher one for `source`: the check before a delivery and
    /// the read it needs, in one round trip (both keys share the source's slot).
    pub async fn delivered_under(
        &self,
        source: &SourceId,
        sink: &str,
        token: FencingToken,
        id: &DocumentId,
    ) -> Result<Option<Delivered>, Error> {
        let mut conn = self.pool.get().await?;
        let (current, raw): (Option<u64>, Option<String>) = redis::pipe()
            .get(self.keys.sink_fence(source, sink))
            .hget(self.keys.sink_delivered(source, sink), &id.0)
            .query_async(&mut conn)
            .await?;
        let current = FencingToken(current.unwrap_or(0));
        if current > token {
            return Err(StaleFence { ours: token, current }.into());
        }
        Ok(raw.as_deref().and_then(decode))
    }

    /// Records, under `token`, that `sink` delivered `id` as `now` (`None`: its deletion).
    pub async fn record_delivery(
        &self,
        source: &SourceId,
        sink: &str,
        token: FencingToken,
        id: &DocumentId,
        now: Option<&Delivered>,
    ) -> Result<(), Error> {
        let keys = [
            self.keys.sink_fence(source, sink),
            self.keys.sink_delivered(source, sink),
        ];
        let value = now.map(encode).unwrap_or_default();
        self.fenced(&DELIVERED, &keys, token, &[id.0.clone().into_bytes(), value])
            .await?;
        Ok(())
    }

    /// Every document `sink` has delivered for `source`, as id -> version.
    pub async fn delivered_versions(
        &self,
        source: &SourceId,
        sink: &str,
    ) -> Result<HashMap<DocumentId, String>, Error> {
        let key = self.keys.sink_delivered(source, sink);
        let mut conn = self.pool.get().await?;
        let mut out = HashMap::new();
        let mut cursor = 0u64;
        loop {
            let (next, items): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for (id, raw) in items {
                if let Some(d) = decode(&raw) {
                    out.insert(DocumentId(id), d.version);
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(out);
            }
        }
    }
}
