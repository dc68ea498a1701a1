//! The webhook sink against a real HTTP receiver (`harness::receiver`): the
//! sink contract (what the receiver ends up holding), retries through
//! failures, timeouts and a receiver that is down, replays the receiver
//! recognises by their idempotency key, and end to end: a 4xx dead-letters its
//! page with the receiver's answer, renamed parents reach their children.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tidemark::sinks::webhook::{WebhookSettings, WebhookSink};
use tidemark::sinks::{Applied, Change, Error, Sink, SinkDocument, Written};
use tidemark::types::{DocumentId, FencingToken, SourceId};

use crate::harness::receiver::{Fault, Receiver};
use crate::harness::redis_server::RedisServer;

const SECRET: &[u8] = b"shared-with-the-indexer";

fn settings(url: &str, timeout: Duration) -> WebhookSettings {
    WebhookSettings {
        url: url.parse().expect("receiver URL"),
        secret: SECRET.to_vec(),
        timeout,
        // Enough to outlast the outage below: the waits between 10 tries are
        // at least 25+50+100+200+5*200 ms (each in [c/2, c]); with 6 tries
        // they could add up to 575 ms, and a delivery gave up while the test
        // still expected it to be waiting.
        max_attempts: 10,
        backoff: tidemark::retry::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
    }
}

fn ledger(redis: &RedisServer) -> tidemark::state::StateStore {
    let pool = tidemark::db::pool(&redis.url(), 4, Duration::from_secs(5)).expect("pool");
    tidemark::state::StateStore::new(pool, tidemark::keys::Keys::new("tm"))
}

/// The webhook sink, read back through what the receiver holds: the sink
/// contract is about what reaches the indexer, not what the sender believes.
struct AsReceived {
    sink: WebhookSink,
    receiver: Arc<Receiver>,
}

#[async_trait]
impl Sink for AsReceived {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        self.sink.register_token(source, token).await
    }
    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        self.sink.upsert(doc).await
    }
    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error> {
        self.sink.delete(source, id, token).await
    }
    async fn apply(&self, source: &SourceId, token: FencingToken, changes: &[Change<'_>]) -> Result<Applied, Error> {
        self.sink.apply(source, token, changes).await
    }
    async fn get(&self, source: &SourceId, id: &DocumentId) -> Result<Option<SinkDocument>, Error> {
        Ok(self.receiver.document(source.as_str(), &id.0))
    }
    async fn versions(&self, source: &SourceId) -> Result<std::collections::HashMap<DocumentId, String>, Error> {
        Ok(self
            .receiver
            .versions(source.as_str())
            .into_iter()
            .map(|(id, v)| (DocumentId(id), v))
            .collect())
    }
}

/// The webhook sink keeps the contract, as the receiver sees it; every
/// request it sent was signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_conforms() {
    let redis = RedisServer::start();
    let receiver = Arc::new(Receiver::start(SECRET));
    let sink = WebhookSink::new(
        "indexer",
        settings(&receiver.url(), Duration::from_secs(10)),
        ledger(&redis),
    )
    .expect("sink");
    let adapted = AsReceived {
        sink,
        receiver: Arc::clone(&receiver),
    };
    super::conformance::check("webhook", Arc::new(adapted)).await;
    receiver.with(|r| {
        assert!(r.deliveries.len() > 50, "{} deliveries", r.deliveries.len());
        assert!(r.deliveries.iter().all(|d| d.signed), "every request signed");
    });
}

/// 503s, an answer that comes after the sender's timeout (the receiver had
/// applied it: the retry is a replay, recognised by its key), and a receiver
/// that is down for a while: each delivery still lands once, in order, and
/// the ledger records it only once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_failures_timeouts_and_replays() {
    let redis = RedisServer::start();
    let mut receiver = Receiver::start(SECRET);
    let sink = WebhookSink::new(
        "indexer",
        settings(&receiver.url(), Duration::from_millis(500)),
        ledger(&redis),
    )
    .expect("sink");
    let s = SourceId::new("hooked").expect("source id");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    receiver.with(|r| {
        let first = &r.deliveries[0];
        assert_eq!(
            (first.event.as_str(), first.status),
            ("fence", 200),
            "a run's token reaches the receiver first"
        );
    });

    receiver.script([
        Fault::Status(503, "busy"),
        Fault::Status(502, "bad gateway"),
        Fault::Late(Duration::from_millis(1500)),
    ]);
    let v1 = super::conformance::doc(&s, "a", "1", "first", 1);
    assert_eq!(sink.upsert(&v1).await.expect("delivered"), Written::Changed);
    let keys: Vec<String> = receiver.with(|r| {
        r.deliveries
            .iter()
            .filter(|d| d.id.as_deref() == Some("a"))
            .map(|d| d.key.clone())
            .collect()
    });
    assert_eq!(keys.len(), 4, "two failures, one late answer, one replay");
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one idempotency key for every try: {keys:?}"
    );
    assert_eq!(receiver.document("hooked", "a"), Some(v1.clone()));

    // Down, then back: the delivery waits it out.
    receiver.stop();
    let v2 = super::conformance::doc(&s, "a", "2", "second", 1);
    let sending = {
        let sink = sink.clone();
        let v2 = v2.clone();
        tokio::spawn(async move { sink.upsert(&v2).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    if sending.is_finished() {
        panic!("nothing to deliver to yet, but: {:?}", sending.await);
    }
    tokio::task::block_in_place(|| receiver.resume());
    assert_eq!(sending.await.expect("task").expect("delivered"), Written::Changed);
    assert_eq!(receiver.document("hooked", "a"), Some(v2.clone()));
    assert_eq!(
        sink.upsert(&v2).await.expect("no-op"),
        Written::Unchanged,
        "the ledger knows it landed"
    );

    // A receiver that stays down: the page is handed back, the ledger unchanged.
    receiver.stop();
    let v3 = super::conformance::doc(&s, "a", "3", "third", 1);
    assert!(matches!(sink.upsert(&v3).await, Err(Error::Unavailable { .. })));
    let held = sink.versions(&s).await.expect("ledger");
    assert_eq!(held.get(&DocumentId("a".into())).map(String::as_str), Some("2"));
    tokio::task::block_in_place(|| receiver.resume());

    // A 4xx refuses the page, with the receiver's answer.
    receiver.refuse("b", 422, "field `title` is too long for this index");
    let b = super::conformance::doc(&s, "b", "1", "refused", 1);
    match sink.upsert(&b).await {
        Err(Error::Refused { context }) => {
            assert!(
                context.contains("422") && context.contains("too long for this index"),
                "{context}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Order per document: the versions of "a" the receiver accepted, in arrival order.
    let accepted: Vec<String> = receiver.with(|r| {
        r.deliveries
            .iter()
            .filter(|d| d.id.as_deref() == Some("a") && d.status == 200)
            .filter_map(|d| d.version.clone())
            .collect()
    });
    assert_eq!(
        accepted,
        ["1", "1", "2"],
        "the late answer's replay, then the next version"
    );
}

/// End to end into a receiver: a full sync delivers every page; a document the
/// receiver refuses (422) dead-letters its page with the receiver's answer,
/// and once the receiver accepts it the next run delivers it; a renamed parent
/// reaches its children (fetched again: the sink keeps no copy to rewrite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sync_end_to_end() {
    use tidemark::state::RunStatus;
    use tidemark::types::SyncMode;

    let receiver = Receiver::start(SECRET);
    let secret_file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret_file.path(), SECRET).expect("write secret");
    let env = crate::harness::Env::fleet(crate::harness::Options {
        pages: 40,
        page_size: 5,
        sink_toml: Some(format!(
            "kind = \"webhook\"\nurl = \"{}\"\nsecret_file = {:?}\ntimeout_secs = 5\nmax_attempts = 3",
            receiver.url(),
            secret_file.path()
        )),
        ..crate::harness::Options::default()
    })
    .await;
    let pages = env.sim.pages();
    let refused = pages[7].id.clone();
    receiver.refuse(&refused, 422, "this indexer takes no page 7");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::CompletedWithErrors, "{full:?}");
    let dead = crate::queue::dead_letters(&env);
    assert!(
        dead.iter().any(|d| d
            .values()
            .any(|v| v.contains("422") && v.contains("this indexer takes no page 7"))),
        "the dead letter quotes the receiver: {dead:?}"
    );

    receiver.accept_all();
    let again = env.sync(SyncMode::Incremental).await;
    assert_eq!(again.status, RunStatus::Completed, "{again:?}");
    let held = receiver.versions(env.source.as_str());
    assert_eq!(held.len(), pages.len());
    for p in &pages {
        assert_eq!(held.get(&p.id), Some(&p.version.to_string()), "page {}", p.id);
    }

    // Rename a parent: its children's breadcrumbs change at the receiver.
    let parent = pages
        .iter()
        .find(|p| pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .expect("a page with children");
    env.sim.update_page(&parent.id, Some("Renamed parent"), None);
    let renamed = env.sync(SyncMode::Incremental).await;
    assert_eq!(renamed.status, RunStatus::Completed, "{renamed:?}");
    for child in pages
        .iter()
        .filter(|c| c.parent_id.as_deref() == Some(parent.id.as_str()))
    {
        let doc = receiver
            .document(env.source.as_str(), &child.id)
            .expect("child delivered");
        assert_eq!(
            doc.breadcrumb.last().map(String::as_str),
            Some("Renamed parent"),
            "{doc:?}"
        );
    }
}

/// A run that fails before its record exists (the receiver refuses the run's
/// `fence` event, so the token never registers) leaves its request pending
/// rather than acking it with nothing to answer it: once idle the request is
/// served again, and whoever waits on it sees the run that served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_failing_before_its_record_leaves_its_request_for_another_try() {
    use tidemark::state::RunStatus;
    use tidemark::types::SyncMode;

    let receiver = Receiver::start(SECRET);
    let secret_file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret_file.path(), SECRET).expect("write secret");
    let env = crate::harness::Env::fleet(crate::harness::Options {
        pages: 10,
        page_size: 5,
        sink_toml: Some(format!(
            "kind = \"webhook\"\nurl = \"{}\"\nsecret_file = {:?}\ntimeout_secs = 5\nmax_attempts = 1",
            receiver.url(),
            secret_file.path()
        )),
        ..crate::harness::Options::default()
    })
    .await;
    receiver.script([crate::harness::receiver::Fault::Status(422, "not taking fences yet")]);
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let refused_fences = receiver.with(|r| {
        r.deliveries
            .iter()
            .filter(|d| d.event == "fence" && d.status == 422)
            .count()
    });
    assert_eq!(refused_fences, 1, "the first attempt's fence was refused");
    assert_eq!(receiver.versions(env.source.as_str()).len(), 10);
}
