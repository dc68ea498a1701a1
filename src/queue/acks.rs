//! Acknowledgements in batches: a worker finishing many pages at once acks
//! them with one XACK per stream, not one each (issue 12.4).
//!
//! Invariants:
//! - An entry is reported acked only after an XACK naming it returned; a
//!   failed XACK fails every entry of its batch (each is then redelivered, and
//!   its redo is a no-op: the page is marked done before it is acked).
//! - No ack waits for company: a batch is whatever queued while the previous
//!   XACK was in flight, so an idle worker acks at once.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use super::{Error, streams};
use crate::db::Pool;

/// Entries acked by one XACK, at most.
const MAX_BATCH: usize = 512;

/// Acks entries of a consumer group, batching those that arrive together.
/// Clones share one batching task, started on first use.
#[derive(Clone)]
pub struct Acker {
    pool: Pool,
    group: String,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
}

/// One entry waiting for its ack.
struct Pending {
    stream: String,
    id: String,
    acked: oneshot::Sender<Result<(), Arc<Error>>>,
}

impl Acker {
    /// Acks for `group`, through `pool`.
    pub fn new(pool: Pool, group: impl Into<String>) -> Self {
        Acker {
            pool,
            group: group.into(),
            queue: Arc::new(OnceLock::new()),
        }
    }

    /// Acks entry `id` of `stream`, with whatever other entries are waiting.
    pub async fn ack(&self, stream: &str, id: &str) -> Result<(), Arc<Error>> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(batches(self.pool.clone(), self.group.clone(), rx));
            tx
        });
        let (acked, outcome) = oneshot::channel();
        let pending = Pending {
            stream: stream.to_owned(),
            id: id.to_owned(),
            acked,
        };
        if queue.send(pending).is_ok()
            && let Ok(outcome) = outcome.await
        {
            return outcome;
        }
        // The batching task is gone (its runtime is shutting down): ack alone.
        streams::ack(&self.pool, stream, &self.group, &[id])
            .await
            .map_err(Arc::new)
    }
}

/// Sends what is waiting, one XACK per stream, until every [`Acker`] is dropped.
async fn batches(pool: Pool, group: String, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let mut by_stream: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in waiting.drain(..) {
            by_stream.entry(p.stream.clone()).or_default().push(p);
        }
        for (stream, entries) in by_stream {
            let ids: Vec<&str> = entries.iter().map(|p| p.id.as_str()).collect();
            let outcome = streams::ack(&pool, &stream, &group, &ids).await.map_err(Arc::new);
            for p in entries {
                // The waiter may have given up (its task was cancelled): nothing to tell.
                let _ = p.acked.send(outcome.clone());
            }
        }
    }
}
