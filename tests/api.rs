//! The HTTP API against a real Redis and the Confluence simulator, driven
//! through `api::router` with `oneshot` (no socket), except the one test of
//! `serve_on`, which binds port 0 to prove graceful shutdown.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use tidemark::api::{router, serve_on};
use tidemark::app::App;
use tidemark::report;
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::harness::{Env, Options, wait_until};

/// A response, read to the end.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(app: &App, request: Request<Body>) -> Reply {
    let response = router(app.clone())
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body readable")
        .to_vec();
    Reply { status, headers, body }
}

async fn get(app: &App, uri: &str) -> Reply {
    call(app, Request::get(uri).body(Body::empty()).expect("request")).await
}

async fn post(app: &App, uri: &str, content_type: Option<&str>, body: &str) -> Reply {
    let mut b = Request::builder().method(Method::POST).uri(uri);
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    call(app, b.body(Body::from(body.to_owned())).expect("request")).await
}

async fn post_json(app: &App, uri: &str, body: &str) -> Reply {
    post(app, uri, Some("application/json"), body).await
}

/// Asserts a JSON error body: status, code, and that the message mentions `mentions`.
fn assert_error(r: &Reply, status: StatusCode, code: &str, mentions: &[&str]) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    for m in mentions {
        assert!(message.contains(m), "expected {m:?} in the message, got {message:?}");
    }
}

/// A full sync requested over HTTP is reported queued (202) until a run serves
/// it, then its status URL returns the completed run record (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requested_over_http_completes() {
    let env = Env::start(Options::default()).await;

    let r = post_json(&env.app, "/v1/sources/eng/syncs", r#"{"mode": "full"}"#).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    let request_id = v["request_id"].as_str().expect("request_id").to_owned();
    let status_url = format!("/v1/sources/eng/requests/{request_id}");
    assert_eq!(v["source"], "eng");
    assert_eq!(v["mode"], "full");
    assert_eq!(v["status_url"], status_url.as_str());
    assert_eq!(
        r.headers.get(header::LOCATION).and_then(|l| l.to_str().ok()),
        Some(status_url.as_str())
    );

    // No coordinator yet, so nothing can have served it.
    let r = get(&env.app, &status_url).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["status"], "queued");
    assert_eq!(r.json()["request_id"], request_id.as_str());

    env.coordinator("c1");
    env.worker("w1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let r = get(&env.app, &status_url).await;
        match r.status {
            StatusCode::OK => {
                let v = r.json();
                if v["status"] != "running" {
                    break v;
                }
            }
            StatusCode::ACCEPTED => {}
            other => panic!("unexpected {other} from {status_url}: {}", r.text()),
        }
        assert!(
            Instant::now() < deadline,
            "request {request_id} not finished within 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["mode"], "full");
    assert_eq!(record["requested_by"], "api");
    assert_eq!(record["docs_processed"], 60);
    assert_eq!(record["upserted"], 60);
    assert!(
        record["request_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i == request_id.as_str())),
        "{record}"
    );
    env.assert_sink_matches_source();

    // Another spelling of the same UUID finds the same run.
    let r = get(
        &env.app,
        &format!("/v1/sources/eng/requests/{}", request_id.to_uppercase()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["run_id"], record["run_id"]);
}

/// With no body, or an empty object, the request is incremental and reaches the requests stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_body_means_incremental() {
    let env = Env::start(Options::default()).await;
    let r = post(&env.app, "/v1/sources/eng/syncs", None, "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["mode"], "incremental");
    let r = post_json(&env.app, "/v1/sources/eng/syncs", "{}").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["mode"], "incremental");

    let status = get(&env.app, "/v1/sources").await.json();
    assert_eq!(status["queues"]["requests"]["length"], 2, "{status}");
}

/// Each kind of bad sync request gets its own status and error code, names the
/// offending field or source, and enqueues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sync_requests_are_distinct_and_enqueue_nothing() {
    let env = Env::start(Options::default()).await;
    let url = "/v1/sources/eng/syncs";

    let r = post_json(&env.app, url, r#"{"mode": "full""#).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json", &["JSON"]);

    let r = post_json(&env.app, url, r#"{"mode": "sideways"}"#).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        &["mode", "sideways"],
    );
    assert_eq!(r.json()["error"]["field"], "mode");

    let r = post_json(&env.app, url, r#"{"mode": true}"#).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &["mode"]);

    let r = post_json(&env.app, url, r#"{"mode": "full", "force": 1}"#).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &["force"]);
    assert_eq!(r.json()["error"]["field"], "force");

    let r = post_json(&env.app, url, r#""full""#).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &["object"]);

    let r = post(&env.app, url, Some("text/plain"), r#"{"mode": "full"}"#).await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &["text/plain"],
    );

    let big = format!(r#"{{"mode": "full", "pad": "{}"}}"#, "x".repeat(64 * 1024));
    let r = post_json(&env.app, url, &big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &[]);

    let r = post_json(&env.app, "/v1/sources/nope/syncs", r#"{"mode": "full"}"#).await;
    assert_error(&r, StatusCode::NOT_FOUND, "unknown_source", &["\"nope\"", "eng"]);

    // Breaking the source-id syntax is the same "no such source".
    let r = post_json(&env.app, "/v1/sources/Not%20Valid/syncs", r#"{"mode": "full"}"#).await;
    assert_error(&r, StatusCode::NOT_FOUND, "unknown_source", &["Not Valid"]);

    let status = get(&env.app, "/v1/sources").await.json();
    assert_eq!(status["queues"]["requests"]["length"], 0, "{status}");
}

/// Request lookups: a non-UUID id and an unknown source are 404s; unknown
/// routes get a JSON 404 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lookup_errors() {
    let env = Env::start(Options::default()).await;
    let r = get(&env.app, "/v1/sources/eng/requests/not-a-uuid").await;
    assert_error(&r, StatusCode::NOT_FOUND, "unknown_request", &["not-a-uuid"]);
    let id = uuid::Uuid::new_v4();
    let r = get(&env.app, &format!("/v1/sources/nope/requests/{id}")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "unknown_source", &["nope"]);
    let r = get(&env.app, "/v2/elsewhere").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", &["/v2/elsewhere"]);
}

/// The status routes return what `tidemark status --json` prints (both go
/// through `report::collect_status`), honour `?runs=`, and reject a bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_routes_match_the_cli() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.sync(SyncMode::Incremental).await;

    let (sources, _) = report::collect_status(&env.app, None, 5).await.expect("status");
    let all = get(&env.app, "/v1/sources").await;
    assert_eq!(all.status, StatusCode::OK);
    let v = all.json();
    assert_eq!(v["sources"], serde_json::to_value(&sources).expect("serializable"));
    assert_eq!(v["sources"][0]["source"], "eng");
    assert_eq!(v["sources"][0]["documents"], 60);
    assert_eq!(v["sources"][0]["runs"].as_array().map(Vec::len), Some(2));
    assert!(v["queues"]["jobs"].is_object(), "{v}");
    assert_eq!(v["queues"]["dead_letters"], 0);

    let one = get(&env.app, "/v1/sources/eng?runs=1").await.json();
    assert_eq!(one["sources"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["sources"][0]["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["sources"][0]["runs"][0]["mode"], "incremental", "newest run first");

    let r = get(&env.app, "/v1/sources/eng?runs=lots").await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &["runs"]);
    let r = get(&env.app, "/v1/sources/eng?runs=500").await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &["runs", "500"]);
    let r = get(&env.app, "/v1/sources/nope").await;
    assert_error(&r, StatusCode::NOT_FOUND, "unknown_source", &["nope", "eng"]);
}

/// After a full sync, `/metrics` serves the Prometheus text format with the
/// documents, fence and latest-run figures of the source, and the queue series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_sync() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    env.sim.set_throttle_retry_after(Duration::from_millis(200));
    env.sim.fail_next(1, 429);
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");

    let r = get(&env.app, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    assert!(
        ct.is_some_and(|ct| ct.starts_with("text/plain; version=0.0.4")),
        "content type {ct:?}"
    );
    let text = r.text();
    let expected = [
        "# TYPE tidemark_source_documents gauge".to_owned(),
        "tidemark_source_documents{source=\"eng\"} 60".to_owned(),
        format!("tidemark_source_fence{{source=\"eng\"}} {}", run.token),
        "tidemark_last_run_docs_processed{source=\"eng\"} 60".to_owned(),
        "tidemark_last_run_upserted{source=\"eng\"} 60".to_owned(),
        "tidemark_last_run_deleted{source=\"eng\"} 0".to_owned(),
        format!("tidemark_last_run_api_calls{{source=\"eng\"}} {}", run.api_calls),
        "tidemark_last_run_success{source=\"eng\"} 1".to_owned(),
        "tidemark_queue_length{stream=\"dlq\"} 0".to_owned(),
    ];
    for line in &expected {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    for series in [
        "tidemark_queue_length{stream=\"requests\"} ",
        "tidemark_queue_length{stream=\"jobs\"} ",
        "tidemark_queue_pending{stream=\"requests\"} ",
        "tidemark_queue_pending{stream=\"jobs\"} ",
        "tidemark_queue_lag{stream=\"requests\"} ",
        "tidemark_queue_lag{stream=\"jobs\"} ",
    ] {
        assert!(
            text.lines()
                .any(|l| l.strip_prefix(series).is_some_and(|v| v.parse::<u64>().is_ok())),
            "missing series {series:?} in:\n{text}"
        );
    }
    assert!(run.api_calls > 0, "{run:?}");

    // This process's own series: counters and histograms, labelled with the process.
    let process = format!("process=\"{}\"", tidemark::telemetry::process_name());
    let value = |name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .map(|l| {
                assert!(l.contains(&process), "a process series without its process label: {l}");
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .expect("a number")
            })
            .sum()
    };
    assert_eq!(
        value("tidemark_runs_total", &["outcome=\"completed\"", "source=\"eng\""]),
        1.0,
        "{text}"
    );
    assert_eq!(value("tidemark_runs_total", &["outcome=\"failed\""]), 0.0, "{text}");
    assert_eq!(
        value("tidemark_documents_total", &["action=\"upserted\""]),
        60.0,
        "{text}"
    );
    assert_eq!(
        value("tidemark_api_calls_total", &["source=\"eng\""]),
        run.api_calls as f64,
        "every call is counted once, by the class of its answer:\n{text}"
    );
    assert_eq!(
        value("tidemark_api_calls_total", &["status_class=\"4xx\""]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("tidemark_api_throttled_total", &["source=\"eng\""]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("tidemark_run_duration_seconds_count", &["source=\"eng\""]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value("tidemark_page_duration_seconds_count", &["source=\"eng\""]),
        run.pages_total as f64,
        "{text}"
    );
    assert_eq!(
        value("tidemark_job_latency_seconds_count", &["source=\"eng\""]),
        run.pages_total as f64,
        "{text}"
    );
    assert_eq!(value("tidemark_build_info", &[]), 1.0, "{text}");
    let success = text
        .lines()
        .find_map(|l| l.strip_prefix("tidemark_last_success_timestamp_seconds{source=\"eng\"} "))
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no last success in:\n{text}"));
    assert!(
        (chrono::Utc::now().timestamp() - success).abs() < 120,
        "last success at {success}"
    );

    // What Prometheus's own linter says of the exposition.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (make test installs Debian's prometheus package)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/readyz` is 200 while Redis answers and 503 within the response timeout
/// (2 s in tests) while it is paused; `/healthz` stays 200 without touching
/// Redis, and a Redis-backed route answers 503 with a generic body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis() {
    let env = Env::start(Options::default()).await;
    let r = get(&env.app, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Warm the pool, so the paused case also covers a pooled connection going silent.
    assert_eq!(get(&env.app, "/v1/sources").await.status, StatusCode::OK);

    env.redis.pause();
    let started = Instant::now();
    let r = get(&env.app, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "readyz took {:?} with Redis paused",
        started.elapsed()
    );
    assert_eq!(get(&env.app, "/healthz").await.text(), "ok");
    let r = get(&env.app, "/v1/sources").await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "unavailable", &[]);
    assert!(!r.text().contains("127.0.0.1"), "5xx body leaked detail: {}", r.text());

    env.redis.resume();
    let app = env.app.clone();
    wait_until("readyz 200 after Redis resumes", Duration::from_secs(10), || {
        let app = app.clone();
        async move { get(&app, "/readyz").await.status == StatusCode::OK }
    })
    .await;
}

/// `serve_on` answers over a real socket and returns once its token is
/// cancelled, even with a client still holding a keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_on_shutdown() {
    let env = Env::start(Options::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_on(listener, env.app.clone(), shutdown.clone()));

    let client = reqwest::Client::new();
    let body = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("GET /healthz")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "ok");

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "server did not stop cleanly: {stopped:?}"
    );
    drop(client);
}

/// What a worker serves (`tidemark worker` with `[api] listen`): liveness,
/// readiness and metrics for Kubernetes and Prometheus, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_probes_and_metrics_only() {
    let env = Env::start(Options::default()).await;
    let ask = |uri: &'static str| {
        let app = env.app.clone();
        async move {
            let request = Request::builder().uri(uri).body(Body::empty()).expect("request");
            let response = tidemark::api::probes_router(app)
                .oneshot(request)
                .await
                .expect("answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(ask("/healthz").await.0, StatusCode::OK);
    assert_eq!(ask("/readyz").await.0, StatusCode::OK);
    let (status, metrics) = ask("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("tidemark_"), "{metrics}");
    assert_eq!(
        ask("/v1/sources").await.0,
        StatusCode::NOT_FOUND,
        "workers take no requests"
    );
    env.redis.pause();
    assert_eq!(ask("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    env.redis.resume();
}

/// With `[api]` tokens: no token or an unknown one is 401 (with
/// `WWW-Authenticate: Bearer`); a token whose scope is too small is 403, and
/// nothing is enqueued; `read` reads, `sync` requests syncs, only `admin`
/// confirms a mass deletion; probes, webhooks and (unless protected) metrics
/// need no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_guard_the_api() {
    use tidemark::config::{ApiToken, Scope, Secret};

    let env = Env::start(Options::default()).await;
    let mut app = env.app.clone();
    let token = |name: &str, scope, secret: &str| ApiToken {
        name: name.into(),
        scope,
        secret: Secret(secret.as_bytes().to_vec()),
    };
    app.config.api.tokens = vec![
        token("reader", Scope::Read, "read-token-0123456789"),
        token("ci", Scope::Sync, "sync-token-0123456789"),
        token("ops", Scope::Admin, "admin-token-0123456789"),
    ];
    let with = |uri: &str, token: Option<&str>, body: Option<&str>| {
        let mut b = Request::builder().uri(uri.to_owned());
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = match body {
            Some(json) => b
                .method(Method::POST)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json.to_owned())),
            None => b.body(Body::empty()),
        };
        request.expect("request")
    };
    let syncs = "/v1/sources/eng/syncs";

    let r = call(&app, with("/v1/sources", None, None)).await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "missing_token",
        &["Authorization: Bearer"],
    );
    assert_eq!(
        r.headers.get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let basic = Request::get("/v1/sources")
        .header(header::AUTHORIZATION, "Basic cmVhZGVyOng=")
        .body(Body::empty())
        .expect("request");
    assert_error(&call(&app, basic).await, StatusCode::UNAUTHORIZED, "missing_token", &[]);
    let r = call(&app, with("/v1/sources", Some("read-token-012345678X"), None)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "bad_token", &[]);
    assert!(!r.text().contains("012345678X"), "the token is never echoed");

    assert_eq!(
        call(&app, with("/v1/sources", Some("read-token-0123456789"), None))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, with("/v1/sources/eng", Some("read-token-0123456789"), None))
            .await
            .status,
        StatusCode::OK
    );
    let r = call(
        &app,
        with(syncs, Some("read-token-0123456789"), Some(r#"{"mode": "incremental"}"#)),
    )
    .await;
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        &["reader", "read", "sync"],
    );

    let mass = r#"{"mode": "full", "allow_mass_delete": true}"#;
    let r = call(&app, with(syncs, Some("sync-token-0123456789"), Some(mass))).await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope", &["ci", "admin"]);
    let (_, queues) = report::collect_status(&app, Some(&env.source), 1)
        .await
        .expect("status");
    assert_eq!(queues.requests.length, 0, "nothing was enqueued by a refused request");

    let r = call(
        &app,
        with(syncs, Some("sync-token-0123456789"), Some(r#"{"mode": "incremental"}"#)),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = call(&app, with(syncs, Some("admin-token-0123456789"), Some(mass))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());

    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            call(&app, with(open, None, None)).await.status,
            StatusCode::OK,
            "{open}"
        );
    }
    let r = call(&app, with("/webhooks/eng", None, Some("{}"))).await;
    assert_ne!(
        r.json()["error"]["code"],
        "missing_token",
        "webhooks carry their own signatures"
    );

    app.config.api.protect_metrics = true;
    assert_error(
        &call(&app, with("/metrics", None, None)).await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
        &[],
    );
    assert_eq!(
        call(&app, with("/metrics", Some("read-token-0123456789"), None))
            .await
            .status,
        StatusCode::OK
    );
}

/// `/openapi.json` is an OpenAPI 3.1 document generated from the handlers;
/// it holds exactly the API's routes (the README's table), each of which the
/// router answers (none falls through to "no route"), and every route is
/// registered through `utoipa_axum::routes!`, which takes only documented
/// handlers: no plain `.route(` in the API's router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_route() {
    let env = Env::start(Options::default()).await;
    let doc = get(&env.app, "/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.json();
    assert!(
        doc["openapi"].as_str().unwrap_or_default().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut routes: Vec<String> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            "GET /dashboard",
            "GET /dashboard/dashboard.css",
            "GET /dashboard/dashboard.js",
            "GET /healthz",
            "GET /metrics",
            "GET /openapi.json",
            "GET /readyz",
            "GET /v1/dead-letters",
            "GET /v1/sources",
            "GET /v1/sources/{source}",
            "GET /v1/sources/{source}/requests/{request_id}",
            "POST /v1/sources/{source}/syncs",
            "POST /webhooks/{source}",
        ]
    );
    assert!(
        doc["components"]["securitySchemes"]["bearer"].is_object(),
        "{}",
        doc["components"]
    );
    for route in &routes {
        let (method, path) = route.split_once(' ').expect("method and path");
        let uri = path
            .replace("{source}", "eng")
            .replace("{request_id}", "00000000-0000-4000-8000-000000000000");
        let request = Request::builder()
            .method(method)
            .uri(uri.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(if method == "POST" { "{}" } else { "" }))
            .expect("request");
        let reply = call(&env.app, request).await;
        let fell_through = reply.status == StatusCode::NOT_FOUND
            && serde_json::from_slice::<Value>(&reply.body).is_ok_and(|v| v["error"]["code"] == "not_found");
        assert!(!fell_through, "{route}: the router does not serve it");
    }
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).expect("api source");
    assert!(
        !source.contains(".route("),
        "a route registered outside routes! would be missing from the document"
    );
}

/// `GET /v1/dead-letters` lists the newest dead letters decoded, and names a
/// bad `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_a_bad_limit_is_named() {
    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.xadd_raw(&env.app.keys.requests(), &[("bogus", b"1")]);
    wait_until("the request is dead-lettered", Duration::from_secs(20), || async {
        let r = get(&env.app, "/v1/dead-letters?limit=5").await;
        r.status == StatusCode::OK && r.json()["dead_letters"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let r = get(&env.app, "/v1/dead-letters").await;
    let letter = &r.json()["dead_letters"][0];
    assert_eq!(letter["origin"], "tm:requests", "{letter}");
    assert!(
        letter["reason"].as_str().is_some_and(|s| s.contains("schema version")),
        "{letter}"
    );
    for bad in ["0", "101", "lots"] {
        let r = get(&env.app, &format!("/v1/dead-letters?limit={bad}")).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", &["limit"]);
    }
}
