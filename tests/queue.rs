//! The queue under bad input and failures: poison entries go to the dead-letter
//! stream with their reason and nothing else is lost; a worker killed mid-page
//! has its page redelivered.

use std::time::Duration;

use tidemark::queue::jobs::{PageJob, SyncRequest};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options, wait_until};

pub(crate) fn dead_letters(env: &Env) -> Vec<std::collections::HashMap<String, String>> {
    let mut conn = env.redis.conn();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(env.app.keys.dead_letters())
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap_or_default();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| {
                    let text = match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                        other => format!("{other:?}"),
                    };
                    (k, text)
                })
                .collect()
        })
        .collect()
}

/// A malformed job lands in the dead-letter stream with a reason naming the
/// problem, and the worker goes on to complete a real sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_job_is_dead_lettered_and_worker_goes_on() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.xadd_raw(
        &env.app.keys.jobs_for(&env.source),
        &[("v", b"1"), ("body", b"\xc1 definitely not msgpack")],
    );
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed);
    env.assert_sink_matches_source();
    wait_until("poison job dead-lettered", Duration::from_secs(10), || async {
        !dead_letters(&env).is_empty()
    })
    .await;
    let dl = dead_letters(&env);
    assert_eq!(dl.len(), 1);
    assert!(dl[0]["reason"].contains("MessagePack"), "{:?}", dl[0]);
    assert_eq!(dl[0]["origin"], env.app.keys.jobs_for(&env.source));
}

/// A malformed sync request and one for an unknown source are dead-lettered
/// with reasons; a good request after them still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_dead_lettered() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.xadd_raw(&env.app.keys.requests(), &[("v", b"1"), ("body", b"{not msgpack}")]);
    let mut req = SyncRequest::new(env.source.clone(), SyncMode::Full, "test");
    req.source = tidemark::types::SourceId::new("nope").unwrap();
    let fields = req.to_fields();
    let fields: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    env.xadd_raw(&env.app.keys.requests(), &fields);
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed);
    wait_until("both bad requests dead-lettered", Duration::from_secs(10), || async {
        dead_letters(&env).len() == 2
    })
    .await;
    let reasons: Vec<String> = dead_letters(&env).into_iter().map(|d| d["reason"].clone()).collect();
    assert!(reasons.iter().any(|r| r.contains("MessagePack")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("unknown source \"nope\"")),
        "{reasons:?}"
    );
}

/// A page whose fetch keeps failing is retried, then dead-lettered after
/// `max_deliveries`; the run ends "completed with errors" without advancing the
/// checkpoint, and the next run picks the page up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_page_is_dead_lettered_and_retried_next_run() {
    let env = Env::start(Options {
        source_settings: "max_retries = 0".into(),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    let w1 = env.worker("w1");
    env.sync(SyncMode::Full).await;
    w1.stop().await;
    let before = env.app.state().checkpoint(&env.source).await.unwrap();
    let pages = env.sim.pages();
    env.sim.update_page(&pages[3].id, None, Some("<p>new</p>"));
    // The listing (1 call, space id cached) succeeds; every fetch after it fails.
    let request = env.enqueue(SyncMode::Incremental, "test").await;
    let state = env.app.state();
    env.wait_feed_read(&request).await;
    env.sim.fail_next(1000, 500);
    env.worker("w2");
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::CompletedWithErrors, "{run:?}");
    assert_eq!(run.pages_failed, 1);
    assert!(
        run.last_error.contains("max_deliveries") || run.last_error.contains("500"),
        "{run:?}"
    );
    assert_eq!(
        state.checkpoint(&env.source).await.unwrap(),
        before,
        "checkpoint did not advance"
    );
    env.sim.fail_next(0, 500);
    let next = env.sync(SyncMode::Incremental).await;
    assert_eq!(next.status, RunStatus::Completed);
    assert_eq!(next.upserted, 1);
    env.assert_sink_matches_source();
}

/// A worker process killed with SIGKILL in the middle of a page: the page stays
/// pending, another worker claims it once idle, and the run completes with the
/// sink equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_page_is_redelivered() {
    worker_killed_mid_page_is_redelivered_in(Env::start(Options::default()).await).await;
}

/// [`worker_killed_mid_page_is_redelivered`] in `env` (also run on a Redis Cluster).
pub(crate) async fn worker_killed_mid_page_is_redelivered_in(mut env: Env) {
    env.coordinator("c1");
    env.sim.set_latency(Duration::from_millis(1500));
    let pid = env.spawn_process(&["worker"]);
    let request = env.enqueue(SyncMode::Full, "test").await;
    // Wait until the worker process holds a page (delivered, unacked) and is fetching it.
    wait_until("worker process holds a page", Duration::from_secs(20), || async {
        tidemark::report::queue_status(&env.app)
            .await
            .is_ok_and(|q| q.jobs.pending > 0)
    })
    .await;
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    env.sim.set_latency(Duration::ZERO);
    env.worker("w-survivor");
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.pages_done, run.pages_total);
    env.assert_sink_matches_source();
    let _ = PageJob::from_entry;
}

/// A corrupt response from the source (200 with truncated JSON) is a permanent
/// error: the page is dead-lettered at once with a reason naming the endpoint,
/// the run completes with errors, and the next run repairs the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_page_from_source_is_dead_lettered_with_its_reason() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    let w1 = env.worker("w1");
    env.sync(SyncMode::Full).await;
    w1.stop().await;
    let pages = env.sim.pages();
    env.sim.update_page(&pages[4].id, None, Some("<p>new</p>"));
    let request = env.enqueue(SyncMode::Incremental, "test").await;
    env.wait_feed_read(&request).await;
    env.sim.corrupt_next(1);
    env.worker("w2");
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::CompletedWithErrors, "{run:?}");
    assert!(run.last_error.contains("/wiki/api/v2/pages"), "{run:?}");
    let dl = dead_letters(&env);
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0]["deliveries"], "1", "permanent errors are not retried");
    let next = env.sync(SyncMode::Incremental).await;
    assert_eq!((next.status, next.upserted), (RunStatus::Completed, 1));
    env.assert_sink_matches_source();
}

/// Applying the same page twice (a redelivery after a crash between the sink
/// write and the ack) writes each document once: the second pass skips them
/// all and leaves the sink's files untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_applied_twice_is_written_once() {
    use tidemark::queue::jobs::{Action, JobItem};
    use tidemark::sources::DocMeta;
    use tidemark::types::{DocumentId, RunId};
    let env = Env::start(Options::default()).await;
    let lease = env
        .app
        .locks
        .acquire(&env.source, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    env.app.state().register_token(&env.source, lease.token).await.unwrap();
    let items = env
        .sim
        .pages()
        .iter()
        .take(10)
        .map(|p| JobItem {
            meta: DocMeta {
                id: DocumentId(p.id.clone()),
                version: p.version.to_string(),
                title: p.title.clone(),
                parent: None,
                modified_at: None,
                ..DocMeta::default()
            },
            action: Action::Upsert,
            breadcrumb: vec![],
        })
        .collect();
    let job = PageJob {
        run: RunId("r".into()),
        source: env.source.clone(),
        token: lease.token,
        page: 0,
        items,
    };
    let worker = env.app.worker("w");
    let source = env.app.sources[&env.source].clone();
    let first = worker.apply(&job, source.as_ref(), &Default::default()).await.unwrap();
    assert_eq!((first.upserted, first.skipped), (10, 0));
    let mtimes = |env: &Env| -> Vec<std::time::SystemTime> {
        let mut v: Vec<_> = std::fs::read_dir(env.sink_dir.path().join("eng/docs"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().modified().unwrap())
            .collect();
        v.sort();
        v
    };
    let before = mtimes(&env);
    let second = worker.apply(&job, source.as_ref(), &Default::default()).await.unwrap();
    assert_eq!((second.upserted, second.skipped), (0, 10));
    assert_eq!(mtimes(&env), before, "no file was rewritten");
}

/// A request dead-lettered before any run served it (here: the coordinator
/// that took it does not know its source, as when configs differ between
/// replicas) answers `failed` with the reason: in the API at once, and
/// `enqueue --wait` exits 1 with it instead of waiting out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_request_answers_failed_not_queued() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let env = Env::start(Options::default()).await;
    let mut config = env.app.config.clone();
    config.sources.clear();
    let stranger = tidemark::app::App::new(config).expect("app").coordinator("c-stranger");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { stranger.run(stop, Duration::from_secs(5)).await }
    });

    let request_id = env.enqueue(SyncMode::Incremental, "test").await;
    let uri = format!("/v1/sources/eng/requests/{request_id}");
    let answer = || async {
        let response = tidemark::api::router(env.app.clone())
            .oneshot(Request::get(uri.as_str()).body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        serde_json::from_slice::<serde_json::Value>(&body).expect("json")
    };
    wait_until(
        "the API reports the request failed",
        Duration::from_secs(20),
        || async { answer().await["status"] == "failed" },
    )
    .await;
    let failed = answer().await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown source \"eng\""),
        "{failed}"
    );

    let config = env.config_path.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["enqueue", "eng", "--wait", "--timeout", "60", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tidemark")
    })
    .await
    .expect("cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was dead-lettered") && stderr.contains("unknown source"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered at once, not at the timeout"
    );
    stop.cancel();
    let _ = running.await;
}

/// `tidemark dlq`: dead letters listed and shown with their original message
/// decoded (not MessagePack bytes); a page job replayed becomes a targeted run
/// that syncs its documents; an undecodable letter says why it cannot be
/// replayed; purge empties the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_commands_list_show_replay_and_purge() {
    use tidemark::queue::dlq;
    use tidemark::queue::jobs::{Action, JobItem};
    use tidemark::queue::streams::{self, Entry};
    use tidemark::sources::DocMeta;
    use tidemark::types::{DocumentId, FencingToken, RunId};

    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    let pages = env.sim.pages();
    let job = PageJob {
        run: RunId("gone-run".into()),
        source: env.source.clone(),
        token: FencingToken(1),
        page: 3,
        items: pages[..3]
            .iter()
            .map(|p| JobItem {
                meta: DocMeta {
                    id: DocumentId(p.id.clone()),
                    version: p.version.to_string(),
                    title: p.title.clone(),
                    ..DocMeta::default()
                },
                action: Action::Upsert,
                breadcrumb: Vec::new(),
            })
            .collect(),
    };
    let entry = |id: &str, fields: Vec<(&'static str, Vec<u8>)>| Entry {
        id: id.to_owned(),
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    let (dead, jobs, requests) = (
        env.app.keys.dead_letters(),
        env.app.keys.jobs_for(&env.source),
        env.app.keys.requests(),
    );
    let page_entry = entry("1-0", job.to_fields());
    dlq::dead_letter(
        &env.app.pool,
        &dead,
        &jobs,
        "workers",
        &page_entry,
        "source answered 500 five times",
        5,
    )
    .await
    .expect("dead letter");
    let garbage = entry(
        "2-0",
        vec![("v", b"1".to_vec()), ("body", b"\xff\xfe not msgpack".to_vec())],
    );
    dlq::dead_letter(
        &env.app.pool,
        &dead,
        &requests,
        "coordinators",
        &garbage,
        "malformed",
        1,
    )
    .await
    .expect("dead letter");
    let letters = streams::newest(&env.app.pool, &dead, 10).await.expect("read");
    let page_letter = letters
        .iter()
        .find(|e| e.text("reason") == Some("source answered 500 five times"))
        .expect("page letter")
        .id
        .clone();
    let garbage_letter = letters
        .iter()
        .find(|e| e.text("reason") == Some("malformed"))
        .expect("garbage letter")
        .id
        .clone();

    let config = env.config_path.clone();
    let cli = move |args: Vec<String>| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
                    .args(&args)
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .output()
                    .expect("run tidemark");
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .expect("cli")
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (code, out, err) = cli(args(&["dlq", "list"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "{page_letter}  {jobs}  eng gone-run page 3: source answered 500 five times"
        )),
        "{out}"
    );
    let (code, out, _) = cli(args(&["dlq", "list", "--json"])).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let (code, out, err) = cli(args(&["dlq", "show", &page_letter])).await;
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["body"]["items"][0]["meta"]["id"], pages[0].id.as_str(), "{shown}");
    assert_eq!(shown["deliveries"], 5);

    let (code, _, err) = cli(args(&["dlq", "replay", &garbage_letter])).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot be replayed"), "{err}");
    let (code, out, err) = cli(args(&["dlq", "replay", &page_letter])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("as a run of 3 document(s) of eng"), "{out}");
    wait_until(
        "the replayed page's documents are synced",
        Duration::from_secs(30),
        || async {
            let held: Vec<String> = env.sink_docs().into_iter().map(|d| d.id.0).collect();
            pages[..3].iter().all(|p| held.contains(&p.id))
        },
    )
    .await;

    let (code, out, _) = cli(args(&["dlq", "purge", "--all"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("removed 1 dead letter(s)"), "{out}");
    let (_, out, _) = cli(args(&["dlq", "list"])).await;
    assert!(out.contains("no dead letters"), "{out}");
    let (code, _, err) = cli(args(&["dlq", "show", &page_letter])).await;
    assert_eq!(code, 1);
    assert!(err.contains("no dead letter"), "{err}");
}
