//! Every Redis key tidemark uses, named in one place.
//!
//! Invariant: every key that belongs to one source carries the source id as a
//! Redis Cluster hash tag (`tm:{confluence-eng}:docs`), so all of a source's
//! keys live in one slot and a Lua script may touch any of them atomically.
//! Keys shared by all sources (the request stream, the dead letters) carry no
//! tag. The job streams are `[queue] job_partitions` streams, a source's jobs
//! always on the same one (`jobs_for`): one `tm:jobs`, or `tm:jobs:{0}` …
//! `tm:jobs:{N-1}`, each its own tag so a cluster spreads them over shards.

use crate::types::{DocumentId, RunId, SourceId};

/// Builds key names under a namespace prefix (default `tm`).
#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
    job_partitions: u16,
}

/// FNV-1a: a hash that is the same in every process and every build (which
/// Rust's `DefaultHasher` does not promise), so every coordinator puts a
/// source's jobs on the same stream.
pub(crate) fn stable_hash(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl Keys {
    /// Keys under `namespace` (e.g. `tm`), with one job stream.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            ns: namespace.into(),
            job_partitions: 1,
        }
    }

    /// The same keys with `n` job streams (at least 1).
    pub fn with_job_partitions(mut self, n: u16) -> Self {
        self.job_partitions = n.max(1);
        self
    }

    /// Stream of sync requests, read by the coordinators' consumer group.
    pub fn requests(&self) -> String {
        format!("{}:requests", self.ns)
    }

    /// Every stream of page jobs, each read by the workers' consumer group.
    pub fn job_streams(&self) -> Vec<String> {
        if self.job_partitions == 1 {
            return vec![format!("{}:jobs", self.ns)];
        }
        (0..self.job_partitions)
            .map(|p| format!("{}:jobs:{{{p}}}", self.ns))
            .collect()
    }

    /// The stream that carries `source`'s page jobs.
    pub fn jobs_for(&self, source: &SourceId) -> String {
        let streams = self.job_streams();
        let i = stable_hash(source.as_str()) as usize % streams.len();
        streams[i].clone()
    }

    /// Whether `name` is one of the job streams (of any partition count: a
    /// dead letter may come from before a change of `job_partitions`).
    pub fn is_job_stream(&self, name: &str) -> bool {
        let jobs = format!("{}:jobs", self.ns);
        name == jobs
            || name
                .strip_prefix(&jobs)
                .and_then(|r| r.strip_prefix(":{"))
                .and_then(|r| r.strip_suffix('}'))
                .is_some_and(|p| p.parse::<u16>().is_ok())
    }

    /// Dead-letter stream: entries that could not be processed, with the reason.
    pub fn dead_letters(&self) -> String {
        format!("{}:dlq", self.ns)
    }

    /// Set of source ids that have ever been synced (for `status` without an argument).
    pub fn known_sources(&self) -> String {
        format!("{}:sources", self.ns)
    }

    fn source(&self, source: &SourceId, suffix: &str) -> String {
        format!("{}:{{{}}}:{}", self.ns, source.as_str(), suffix)
    }

    /// The lock: holds the owner's random value, with a TTL (on every lock node).
    pub fn lock(&self, source: &SourceId) -> String {
        self.source(source, "lock")
    }

    /// The lock nodes' token counter; never deleted, so tokens never repeat.
    pub fn lock_tokens(&self, source: &SourceId) -> String {
        self.source(source, "lock:tokens")
    }

    /// On each lock node: the `run_id` of the Redis process that last wrote
    /// `lock_tokens` there. A restarted node has a new `run_id`, so its counter
    /// is not trusted until it is written again (re-seeded).
    pub fn lock_epoch(&self, source: &SourceId) -> String {
        self.source(source, "lock:epoch")
    }

    /// Highest fencing token the state store has seen; writes below it are refused.
    pub fn fence(&self, source: &SourceId) -> String {
        self.source(source, "fence")
    }

    /// Highest fencing token a delivering sink (one that keeps no copy, such as
    /// the webhook sink) has seen for the source, per sink name.
    pub fn sink_fence(&self, source: &SourceId, sink: &str) -> String {
        self.source(source, &format!("sink:{sink}:fence"))
    }

    /// What a delivering sink has delivered for the source: id -> version and
    /// content hash (its idempotence, and what `verify` compares).
    pub fn sink_delivered(&self, source: &SourceId, sink: &str) -> String {
        self.source(source, &format!("sink:{sink}:delivered"))
    }

    /// The committed checkpoint (MessagePack).
    pub fn checkpoint(&self, source: &SourceId) -> String {
        self.source(source, "checkpoint")
    }

    /// Hash: document id -> DocState (MessagePack).
    pub fn docs(&self, source: &SourceId) -> String {
        self.source(source, "docs")
    }

    /// Hash: document id -> "run/page" for documents whose sink write may have
    /// happened without the state recording it yet (see `state::docs`).
    pub fn unsettled(&self, source: &SourceId) -> String {
        self.source(source, "unsettled")
    }

    /// Hash: document id -> MessagePack `DocFailure`, documents that failed on
    /// their own and are retried by every run (see `state::failures`).
    pub fn failed(&self, source: &SourceId) -> String {
        self.source(source, "failed")
    }

    /// Set: documents renamed, moved or deleted whose descendants' breadcrumbs
    /// are owed a refresh (see `state::owed`).
    pub fn owed_crumbs(&self, source: &SourceId) -> String {
        self.source(source, "owed:crumbs")
    }

    /// Set: documents created, renamed or deleted whose linkers' link titles
    /// are owed a refresh (see `state::owed`).
    pub fn owed_links(&self, source: &SourceId) -> String {
        self.source(source, "owed:links")
    }

    /// Set: the documents whose parent is `doc` (reverse index of `DocState.parent`).
    pub fn children(&self, source: &SourceId, doc: &DocumentId) -> String {
        self.source(source, &format!("kids:{doc}"))
    }

    /// Set: the documents that link to `doc` (reverse index of `DocState.links`).
    pub fn linked_from(&self, source: &SourceId, doc: &DocumentId) -> String {
        self.source(source, &format!("linkedfrom:{doc}"))
    }

    /// Set: documents named by webhook deliveries not yet turned into a request (`*`: the whole source).
    pub fn webhook_pending(&self, source: &SourceId) -> String {
        self.source(source, "webhook:pending")
    }

    /// String with a TTL: while it exists, the debounce window is open.
    pub fn webhook_window(&self, source: &SourceId) -> String {
        self.source(source, "webhook:window")
    }

    /// Set: webhook targets taken by a flush and not yet enqueued as a
    /// request (a flush that failed or died leaves them for the next).
    pub fn webhook_flushing(&self, source: &SourceId) -> String {
        self.source(source, "webhook:flushing")
    }

    /// String with a TTL: a flush of the source's webhook targets is under way.
    pub fn webhook_flush_lease(&self, source: &SourceId) -> String {
        self.source(source, "webhook:flushing:lease")
    }

    /// Sorted set source -> when its webhook debounce window closes (ms): the
    /// sources a coordinator flushes next, without looking at every one.
    pub fn webhooks_closing(&self) -> String {
        format!("{}:{{webhooks}}:closing", self.ns)
    }

    /// String with a TTL: a delivery signature already accepted (replay protection).
    pub fn webhook_seen(&self, source: &SourceId, signature: &str) -> String {
        self.source(source, &format!("webhook:seen:{signature}"))
    }

    /// Hash `{id, json}`: the push channel the source's coordinators keep open (see `state::channels`).
    pub fn push_channel(&self, source: &SourceId) -> String {
        self.source(source, "channel")
    }

    /// String with a TTL: the coordinator renewing the push channel now (one at a time).
    pub fn push_channel_renewal(&self, source: &SourceId) -> String {
        self.source(source, "channel:renewing")
    }

    /// String: the highest Google push-notification message number accepted per channel.
    pub fn webhook_channel(&self, source: &SourceId, channel: &str) -> String {
        self.source(source, &format!("webhook:channel:{channel}"))
    }

    /// Hash: the run record.
    pub fn run(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}"))
    }

    /// Set of page numbers of a run that are done (processed or dead-lettered).
    pub fn run_pages_done(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:done"))
    }

    /// Set: the ids a run's feed listed (the mark of mark-and-sweep).
    pub fn run_seen(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:seen"))
    }

    /// Hash: document id → the title the run's feed announced, for every document it upserts.
    pub fn run_titles(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:titles"))
    }

    /// Hash: document id → what the run plans for it (see `state::plan`).
    pub fn run_plan(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:plan"))
    }

    /// List: the ids of the run's plan, each once, in the order first planned.
    pub fn run_plan_order(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:plan:order"))
    }

    /// String `N:added`: how many batches of writes the run's plan has applied (see `state::plan`).
    pub fn run_plan_batches(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:plan:batches"))
    }

    /// List a worker pushes to when it finishes a page, so the coordinator wakes at once.
    pub fn run_wakeup(&self, source: &SourceId, run: &RunId) -> String {
        self.source(source, &format!("run:{run}:wake"))
    }

    /// List of the source's run ids, newest first (trimmed).
    pub fn runs(&self, source: &SourceId) -> String {
        self.source(source, "runs")
    }

    /// The run currently holding the lock, if any.
    pub fn current_run(&self, source: &SourceId) -> String {
        self.source(source, "current")
    }

    /// A coalesced follow-up request, waiting for the running sync to end.
    pub fn follow_up(&self, source: &SourceId) -> String {
        self.source(source, "followup")
    }

    /// The schedule (`queue::schedule`): due times, periods, phases, the
    /// claims not yet enqueued and when each source was last registered,
    /// under one hash tag so its scripts run on a cluster.
    pub fn schedule(&self) -> [String; 5] {
        ["due", "every", "phase", "claimed", "registered"].map(|part| format!("{}:{{schedule}}:{part}", self.ns))
    }

    /// Hash with a TTL: the source's fleet-wide rate gate (not-before, throttle
    /// level, GCRA arrival time), kept by `gate/`.
    pub fn rate_gate(&self, source: &SourceId) -> String {
        self.source(source, "gate")
    }

    /// Which run served a sync request (for `enqueue --wait`).
    pub fn request_run(&self, source: &SourceId, request_id: &str) -> String {
        self.source(source, &format!("req:{request_id}"))
    }

    /// Why a request was dead-lettered without any run serving it (7 days):
    /// what its status and `enqueue --wait` answer instead of "queued" forever.
    pub fn request_refused(&self, source: &SourceId, request_id: &str) -> String {
        self.source(source, &format!("req:{request_id}:refused"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All of one source's keys share a hash tag; shared streams have none.
    #[test]
    fn source_keys_share_a_hash_tag() {
        let keys = Keys::new("tm");
        let s = SourceId::new("eng").unwrap();
        let run = RunId("r1".into());
        for k in [
            keys.lock(&s),
            keys.fence(&s),
            keys.checkpoint(&s),
            keys.docs(&s),
            keys.run(&s, &run),
            keys.run_pages_done(&s, &run),
            keys.follow_up(&s),
            keys.rate_gate(&s),
            keys.owed_crumbs(&s),
            keys.owed_links(&s),
        ] {
            assert!(k.contains("{eng}"), "{k} lacks the hash tag");
        }
        assert!(!keys.requests().contains('{'));
    }

    /// One partition keeps the one `tm:jobs`; several spread sources over
    /// tagged streams, each source always on the same one.
    #[test]
    fn job_streams_partition_sources_stably() {
        assert_eq!(stable_hash("a"), 0xe40c_292c, "FNV-1a, not a per-process hash");
        let one = Keys::new("tm");
        let eng = SourceId::new("eng").unwrap();
        assert_eq!(one.job_streams(), vec!["tm:jobs".to_owned()]);
        assert_eq!(one.jobs_for(&eng), "tm:jobs");
        let four = Keys::new("tm").with_job_partitions(4);
        assert_eq!(four.job_streams()[3], "tm:jobs:{3}");
        let used: std::collections::HashSet<String> = (0..40)
            .map(|i| four.jobs_for(&SourceId::new(format!("s{i}")).unwrap()))
            .collect();
        assert_eq!(used.len(), 4, "40 sources use every partition");
        for name in ["tm:jobs", "tm:jobs:{0}", "tm:jobs:{12}"] {
            assert!(four.is_job_stream(name), "{name}");
        }
        for name in ["tm:requests", "tm:jobs:x", "tm:jobsx", "tm:jobs:{a}"] {
            assert!(!four.is_job_stream(name), "{name}");
        }
    }
}
