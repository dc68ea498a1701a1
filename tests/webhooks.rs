//! Webhooks: verified deliveries become debounced, targeted sync requests;
//! forged, stale, replayed and oversized ones are refused and enqueue nothing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tidemark::api::router;
use tidemark::api::webhooks::{sign, sign_body};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;
use tower::ServiceExt;

use crate::harness::{Env, Options, wait_until};

const SECRET: &str = "whsec-test-1234";

async fn env_with_webhook(debounce_secs: u64) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    // The file is read when the config is checked; the directory can go after.
    let env = Env::start(Options {
        source_fields: format!(
            "[sources.webhook]\nsecret_file = {:?}\ndebounce_secs = {debounce_secs}\ntolerance_secs = 60",
            secret.display().to_string()
        ),
        ..Options::default()
    })
    .await;
    drop(dir);
    env
}

async fn post(env: &Env, headers: &[(&str, String)], body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = Request::builder().method("POST").uri("/webhooks/eng");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let response = router(env.app.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn signed(body: &[u8], ts: i64) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("x-tidemark-timestamp", ts.to_string()),
        ("x-tidemark-signature", sign(SECRET.as_bytes(), ts, body)),
    ]
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Waits for the latest run to be a finished webhook run, and returns it.
async fn webhook_run(env: &Env) -> tidemark::state::RunRecord {
    let state = env.app.state();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let latest = state.recent_runs(&env.source, 1).await.unwrap().into_iter().next();
        if let Some(run) = latest.filter(|r| r.requested_by == "webhook" && r.status.is_terminal()) {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no webhook run finished within 20s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requests_len(env: &Env) -> u64 {
    let mut conn = env.redis.conn();
    redis::cmd("XLEN")
        .arg(env.app.keys.requests())
        .query(&mut conn)
        .unwrap_or(0)
}

fn pending_len(env: &Env) -> u64 {
    let mut conn = env.redis.conn();
    redis::cmd("SCARD")
        .arg(env.app.keys.webhook_pending(&env.source))
        .query(&mut conn)
        .unwrap_or(0)
}

/// A signed Confluence page event becomes a targeted run: only that page is
/// fetched (one API call, no listing) with who may read it (four: the
/// space, its permissions, the page's restriction and ancestors, theirs),
/// and the sink has its new version and its readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_page_event_triggers_a_targeted_run() {
    let env = env_with_webhook(0).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    let page = env.sim.pages()[7].clone();
    env.sim.update_page(&page.id, None, Some("<p>pushed</p>"));
    env.sim.reset_calls();
    let body = serde_json::to_vec(&json!({"eventType": "page_updated", "page": {"id": page.id}})).unwrap();
    let (status, reply) = post(&env, &signed(&body, now()), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let run = webhook_run(&env).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!((run.docs_processed, run.upserted), (1, 1), "{run:?}");
    assert_eq!(
        env.sim.total_calls(),
        1 + 4,
        "one fetch and its readers, no listing: {:?}",
        env.sim.calls()
    );
    assert_eq!(env.sim.calls().get("GET /wiki/api/v2/pages"), Some(&1));
    env.assert_sink_matches_source();
}

/// A bad signature, a missing one, a stale timestamp and a replay are each 401
/// with their own code, and enqueue nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_replayed_deliveries_are_refused() {
    let env = env_with_webhook(0).await;
    let body = br#"{"eventType":"page_updated","page":{"id":"100001"}}"#.to_vec();
    let mut forged = signed(&body, now());
    forged[2].1 = sign(b"not-the-secret", now(), &body);
    let (status, reply) = post(&env, &forged, body.clone()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_signature"))
    );

    let (status, reply) = post(&env, &[("content-type", "application/json".into())], body.clone()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_signature"))
    );

    let old = now() - 3600;
    let (status, reply) = post(&env, &signed(&body, old), body.clone()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("stale_timestamp"))
    );

    let fresh = signed(&body, now());
    assert_eq!(post(&env, &fresh, body.clone()).await.0, StatusCode::ACCEPTED);
    let (status, reply) = post(&env, &fresh, body.clone()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("replayed"))
    );
    // The same delivery with its hex digits in upper case still verifies (hex is
    // case-blind), so it must still count as the same delivery (issue 8, point 7).
    let mut shouted = fresh.clone();
    shouted[2].1 = format!(
        "sha256={}",
        fresh[2].1.trim_start_matches("sha256=").to_ascii_uppercase()
    );
    let (status, reply) = post(&env, &shouted, body.clone()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("replayed")),
        "an upper-case copy of an accepted signature is a replay"
    );
    assert_eq!(requests_len(&env), 1, "only the one good delivery was enqueued");

    let huge = vec![b' '; 70 * 1024];
    assert_eq!(
        post(&env, &signed(&huge, now()), huge).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(requests_len(&env), 1);
}

/// Atlassian-style `X-Hub-Signature` deliveries verify over the body, with the
/// payload's own timestamp checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_signature_deliveries_verify() {
    let env = env_with_webhook(0).await;
    let body = serde_json::to_vec(&json!({
        "eventType": "page_removed", "page": {"id": "100002"}, "timestamp": now() * 1000
    }))
    .unwrap();
    let headers = vec![
        ("content-type", "application/json".to_string()),
        ("x-hub-signature", sign_body(SECRET.as_bytes(), &body)),
    ];
    let (status, reply) = post(&env, &headers, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply["documents"], json!(["100002"]));
}

/// Google Drive push notifications: the `sync` handshake is acknowledged
/// without a run, a change with the right channel token is accepted, a wrong
/// token and a replayed message number are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_push_notifications() {
    let env = env_with_webhook(0).await;
    let push = |state: &str, number: u64, token: &str| {
        vec![
            ("x-goog-channel-id", "chan-1".to_string()),
            ("x-goog-channel-token", token.to_string()),
            ("x-goog-resource-state", state.to_string()),
            ("x-goog-message-number", number.to_string()),
            ("x-goog-resource-id", "res-1".to_string()),
        ]
    };
    assert_eq!(post(&env, &push("sync", 1, SECRET), vec![]).await.0, StatusCode::OK);
    assert_eq!(requests_len(&env), 0, "a handshake enqueues nothing");
    assert_eq!(
        post(&env, &push("change", 2, SECRET), vec![]).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(requests_len(&env), 1);
    let (status, reply) = post(&env, &push("change", 3, "wrong"), vec![]).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_channel_token"))
    );
    let (status, reply) = post(&env, &push("change", 2, SECRET), vec![]).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("replayed"))
    );
    assert_eq!(requests_len(&env), 1);
}

/// A burst of deliveries inside the debounce window becomes exactly one request
/// naming every document, and one run syncs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_debounced_into_one_run() {
    let env = env_with_webhook(1).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    let before = requests_len(&env);
    let pages = env.sim.pages();
    for p in pages.iter().take(10) {
        env.sim.update_page(&p.id, None, Some("<p>burst</p>"));
        let body = serde_json::to_vec(&json!({"eventType": "page_updated", "page": {"id": p.id}})).unwrap();
        assert_eq!(post(&env, &signed(&body, now()), body).await.0, StatusCode::ACCEPTED);
    }
    assert_eq!(requests_len(&env), before, "nothing enqueued inside the window");
    assert_eq!(pending_len(&env), 10);
    wait_until(
        "the window closes and one request is enqueued",
        Duration::from_secs(10),
        || async { requests_len(&env) == before + 1 },
    )
    .await;
    let run = webhook_run(&env).await;
    assert_eq!((run.docs_processed, run.upserted), (10, 10), "{run:?}");
    assert_eq!(requests_len(&env), before + 1, "exactly one request for the burst");
    env.assert_sink_matches_source();
}

/// A source without `[sources.webhook]` takes no deliveries (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_without_webhooks_refuse_deliveries() {
    let env = Env::start(Options::default()).await;
    let (status, reply) = post(&env, &signed(b"{}", now()), b"{}".to_vec()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("webhooks_not_configured"))
    );
}

/// Drive push channels need no hand work: with `webhook.address` set, the
/// coordinator opens a channel (`changes.watch`, token = the webhook secret)
/// to tidemark's own webhook endpoint; a change in the drive then makes Drive
/// push `X-Goog-Resource-State: change` there, which starts a sync that picks
/// the change up. When Drive grants channels short lives, each is renewed
/// before it expires and the one it replaced is stopped (`channels.stop`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_channels_are_opened_renewed_and_pushes_start_syncs() {
    use tidemark::simulators::gdrive::{GdriveSim, SimConfig};

    let sim = GdriveSim::new(SimConfig {
        files: 12,
        ..SimConfig::default()
    });
    // Drive's cap is a week; 8 s here, so renewal (a quarter of the life left) comes within the test.
    sim.set_channel_cap(8);
    let (drive, _task) = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let source = format!(
        "[[sources]]\nid = \"eng\"\nkind = \"gdrive\"\n[sources.webhook]\nsecret_file = {:?}\ndebounce_secs = 0\naddress = \"http://{api}/webhooks/eng\"\n[sources.settings]\nbase_url = \"http://{drive}\"\nfolder_id = \"root-folder\"\n",
        secret.display().to_string()
    );
    let env = Env::start(Options {
        pages: 0,
        source_toml: Some(source),
        ..Options::default()
    })
    .await;
    let app = router(env.app.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;

    wait_until("a channel opened by tidemark", Duration::from_secs(10), || {
        let open = sim.channels();
        async move { open.len() == 1 }
    })
    .await;
    let (first, address, _) = sim.channels()[0].clone();
    assert_eq!(address, format!("http://{api}/webhooks/eng"));

    let id = sim
        .files_in_tree()
        .into_iter()
        .find(|f| f.mime_type == "text/plain")
        .unwrap()
        .id;
    assert!(sim.update_file(&id, None, Some("pushed")));
    let run = webhook_run(&env).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.upserted, 1, "{run:?}");
    assert!(env.sink_docs().iter().any(|d| d.id.0 == id && d.content == "pushed"));

    wait_until(
        "the channel renewed and its predecessor stopped",
        Duration::from_secs(20),
        || {
            let (open, stopped) = (sim.channels(), sim.stopped_channels());
            let first = first.clone();
            async move { stopped >= 1 && open.len() == 1 && open[0].0 != first }
        },
    )
    .await;
}

/// Two hundred sources take webhooks and none has an event pending: a
/// coordinator's tick finds the windows that closed in one sorted set instead
/// of flushing every source in turn (four times a second, that was 40,000
/// scripts a second per replica at 10,000 sources). Counted on the server,
/// after the first sweep: no flush script runs while nothing is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_webhook_sources_cost_no_script_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let more_sources: String = (0..200)
        .map(|i| {
            format!(
                "[[sources]]\nid = \"hooked-{i:03}\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\n\
                 [sources.webhook]\nsecret_file = {:?}\ndebounce_secs = 1\n\n",
                dir.path().display().to_string(),
                secret.display().to_string()
            )
        })
        .collect();
    let env = Env::start(Options {
        more_sources,
        ..Options::default()
    })
    .await;
    let scripts_run = |conn: &mut redis::Connection| -> (u64, String) {
        let stats: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
        let calls = stats
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum();
        (calls, stats)
    };
    env.coordinator("c1");
    // The first tick sweeps every webhook source once: wait until it has.
    wait_until(
        "the first sweep flushed all 200 sources",
        Duration::from_secs(20),
        || async { scripts_run(&mut env.redis.conn()).0 >= 200 },
    )
    .await;
    let mut conn = env.redis.conn();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).unwrap();
    // The window measured: twelve ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (scripts, stats) = scripts_run(&mut conn);
    // Before: 200 sources x 12 ticks = 2,400 flush scripts in these 3 s.
    assert!(
        scripts < 50,
        "{scripts} scripts in 3 s of 200 idle webhook sources:\n{stats}"
    );
}

/// A flush that died between taking a source's pending targets and
/// enqueueing their request (a coordinator killed, the XADD failing) leaves
/// them in the flushing set; the next flush enqueues them, and a run syncs
/// the page: nothing a webhook announced is lost, even for a source with no
/// schedule to catch it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_of_a_flush_that_died_are_enqueued_by_the_next() {
    let env = env_with_webhook(1).await;
    let c1 = env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    c1.stop().await;
    let page = env.sim.pages()[3].id.clone();
    env.sim.update_page(&page, None, Some("<p>announced</p>"));
    // What the flush that died left: the target taken, its lease expired.
    let _: i64 = redis::cmd("SADD")
        .arg(env.app.keys.webhook_flushing(&env.source))
        .arg(&page)
        .query(&mut env.redis.conn())
        .unwrap();
    env.coordinator("c2");
    let run = webhook_run(&env).await;
    assert_eq!((run.docs_processed, run.upserted), (1, 1), "{run:?}");
    env.assert_sink_matches_source();
    let left: i64 = redis::cmd("SCARD")
        .arg(env.app.keys.webhook_flushing(&env.source))
        .query(&mut env.redis.conn())
        .unwrap();
    assert_eq!(left, 0, "the flushing set is cleared once the request is enqueued");
}
