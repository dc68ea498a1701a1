//! The HTTP API: trigger syncs, follow requests, read status, probes and metrics.
//!
//! | Route | Success | Failures |
//! |---|---|---|
//! | `POST /v1/sources/{source}/syncs` | 202 `{request_id, source, mode, status_url}` | 400 not JSON, 415 not `application/json`, 422 bad `mode` / unknown field, 404 unknown source, 503 Redis |
//! | `GET /v1/sources/{source}/requests/{request_id}` | 200 `RunRecord` once a run serves it; 202 `{request_id, status: "queued"}` before | 404 unknown source / non-UUID id, 410 run record expired, 503 |
//! | `GET /v1/sources[?runs=N]` | 200 `{sources, queues}`, as `tidemark status --json` | 422 bad `runs`, 503 |
//! | `GET /v1/sources/{source}[?runs=N]` | 200 `{sources: [one], queues}` | 404, 422, 503 |
//! | `GET /v1/dead-letters[?limit=N]` | 200 `{dead_letters}`, newest first, decoded (see [`dashboard`]) | 422 bad `limit`, 503 |
//! | `GET /dashboard` | 200 the live dashboard's page (static; its data comes from the `/v1` reads above) | |
//! | `GET /healthz` | 200 `ok` (no Redis call) | |
//! | `GET /readyz` | 200 `ready` if Redis answers PING within the response timeout | 503 `not ready: redis at <addr> unavailable: <reason>` |
//! | `GET /metrics` | 200 Prometheus text (see [`metrics`]) | 503 |
//! | `POST /webhooks/{source}` | 202 accepted (debounced), 200 for a Drive `sync` handshake (see [`webhooks`]) | 401 verification, 413, 404 unknown source or no webhook configured, 400 |
//!
//! Decisions:
//! - A source id in a path that is not configured is 404, and so is one that
//!   breaks the source-id syntax: either way no such resource exists. The GET
//!   routes also accept a source that is no longer configured but has runs in
//!   Redis, as `GET /v1/sources` lists it; triggering a sync needs it configured.
//! - A sync body is optional (empty means incremental). A non-empty body must be
//!   declared `application/json`: browsers can send cross-origin POSTs without a
//!   preflight only as forms or `text/plain`, so requiring JSON keeps a web page
//!   from triggering syncs through a user's browser (axum's `Json` does the same).
//! - A request id never issued looks like a queued one (202): telling them apart
//!   would mean scanning the requests stream. Ids that are not UUIDs are 404.
//! - The API holds no state of its own; any replica answers any request.
//!
//! Failures map to responses in [`error`]; 5xx details are logged there, once.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod webhooks;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::queue;
use crate::queue::jobs::SyncRequest;
use crate::report;
use crate::types::{SourceId, SyncMode};

pub use self::error::ApiError;

/// Largest request body accepted, in bytes; the only body is `{"mode": "..."}`.
pub const BODY_LIMIT: usize = 16 * 1024;
/// Runs per source in status responses when `?runs=` is not given (as `tidemark status`).
pub const DEFAULT_RUNS: usize = 5;
/// Most runs per source a status response may ask for: the number Redis keeps.
pub const MAX_RUNS: usize = 50;

/// The API's routes over `app`. A plain function so tests can drive it without a socket.
/// Each `/v1` route asks for its scope (`auth`); probes and webhooks need no token.
pub fn router(app: App) -> Router {
    let (routes, doc) = documented(&app).split_for_parts();
    routes
        .fallback(no_route)
        .layer(Extension(Arc::new(doc)))
        .layer(middleware::from_fn(error::log_server_errors))
        .with_state(app)
}

/// The API and its OpenAPI document, from one list of annotated handlers.
pub fn documented(app: &App) -> OpenApiRouter<App> {
    // Each `/v1` route: its scope's gate, then the body limit.
    let reading = |(schemas, paths, route): UtoipaMethodRouter<App>| {
        let gate = middleware::from_fn_with_state(app.clone(), auth::read);
        (
            schemas,
            paths,
            route.route_layer(gate).layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
    };
    let syncing = |(schemas, paths, route): UtoipaMethodRouter<App>| {
        let gate = middleware::from_fn_with_state(app.clone(), auth::sync);
        (
            schemas,
            paths,
            route.route_layer(gate).layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
    };
    let (schemas, paths, webhook) = routes!(webhooks::receive);
    probe_routes(app)
        .routes(routes!(openapi_json))
        .routes(reading(routes!(list_sources)))
        .routes(reading(routes!(get_source)))
        .routes(syncing(routes!(create_sync)))
        .routes(reading(routes!(get_request)))
        .routes(reading(routes!(dashboard::dead_letters)))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
        .routes((
            schemas,
            paths,
            webhook.layer(DefaultBodyLimit::max(webhooks::WEBHOOK_BODY_LIMIT)),
        ))
}

/// What a worker serves: probes and metrics only. Workers take no requests
/// (only coordinators do), but Kubernetes must still see whether they are
/// alive and ready, and Prometheus must scrape them.
pub fn probes_router(app: App) -> Router {
    let (routes, _) = probe_routes(&app).split_for_parts();
    routes.fallback(no_route).with_state(app)
}

/// Liveness, readiness and metrics: what every process serves.
fn probe_routes(app: &App) -> OpenApiRouter<App> {
    let metrics_gate = middleware::from_fn_with_state(app.clone(), auth::metrics);
    let (schemas, paths, metrics) = routes!(metrics::metrics);
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes((schemas, paths, metrics.route_layer(metrics_gate)))
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}

/// Binds `addr` and serves the API until `shutdown`; requests in flight then finish.
pub async fn serve(app: App, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, app, shutdown).await
}

/// Binds `addr` and serves [`probes_router`] until `shutdown` (workers).
pub async fn serve_probes(app: App, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_router(listener, probes_router(app), shutdown).await
}

/// Serves the API on an already bound listener (tests bind port 0 and read the port).
pub async fn serve_on(listener: TcpListener, app: App, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_router(listener, router(app), shutdown).await
}

async fn serve_router(listener: TcpListener, routes: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!("HTTP API stopped");
    Ok(())
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Ready when Redis answers PING. The whole check, pool wait and reconnect
/// included, is bounded by the Redis response timeout, so a paused Redis gives
/// a prompt 503 instead of a probe that hangs until the kubelet gives up.
///
/// Readiness, not liveness: while Redis is out the process keeps running and
/// retrying with backoff (`/healthz` stays 200, so Kubernetes does not restart
/// it), it is only taken out of the Service. The 503 body says why, naming
/// Redis by its redacted address (probes and operators read it; no credentials).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Redis answers", body = String),
    (status = 503, description = "Redis does not answer; the body says why", body = String)))]
async fn readyz(State(app): State<App>) -> Response {
    let limit = app.config.redis.response_timeout;
    let problem = match tokio::time::timeout(limit, crate::db::ping(&app.pool)).await {
        Ok(Ok(_)) => return (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => e,
        Err(_) => format!("no PING reply within {limit:?}"),
    };
    let addr = app.redis_addr();
    let problem = problem.replace(&app.config.redis.url, &addr);
    tracing::warn!(redis = %addr, error = %problem, "not ready: redis unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: redis at {addr} unavailable: {problem}"),
    )
        .into_response()
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

/// `?runs=N` on status routes.
#[derive(Debug, Deserialize)]
struct StatusParams {
    runs: Option<usize>,
}

fn runs_param(q: Result<Query<StatusParams>, QueryRejection>) -> Result<usize, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::field("runs", format!("{} (expected a whole number)", e.body_text())))?;
    match p.runs {
        None => Ok(DEFAULT_RUNS),
        Some(n) if n <= MAX_RUNS => Ok(n),
        Some(n) => Err(ApiError::field(
            "runs",
            format!("{n} is more than {MAX_RUNS}, the runs kept"),
        )),
    }
}

/// A path the router matched but could not decode (e.g. invalid percent-encoding).
pub(crate) fn bad_path(e: PathRejection) -> ApiError {
    ApiError::NoRoute(e.body_text())
}

fn unknown_source(app: &App, raw: &str) -> ApiError {
    ApiError::UnknownSource {
        id: raw.to_owned(),
        configured: app.config.sources.iter().map(|s| s.id.to_string()).collect(),
    }
}

/// A configured source, or 404.
pub(crate) fn configured_source(app: &App, raw: &str) -> Result<SourceId, ApiError> {
    SourceId::new(raw)
        .ok()
        .filter(|id| app.config.source(id).is_some())
        .ok_or_else(|| unknown_source(app, raw))
}

/// A configured source or one that has runs in Redis, or 404.
async fn readable_source(app: &App, raw: &str) -> Result<SourceId, ApiError> {
    let id = SourceId::new(raw).map_err(|_| unknown_source(app, raw))?;
    if app.config.source(&id).is_some() || app.state().known_sources().await?.contains(&id) {
        Ok(id)
    } else {
        Err(unknown_source(app, raw))
    }
}

/// Every source's status, as `tidemark status --json`.
#[utoipa::path(get, path = "/v1/sources", tag = "status", security(("bearer" = ["read"])),
    params(("runs" = Option<usize>, Query, description = "Recent runs per source (default 5, at most 50)")),
    responses((status = 200, description = "Sources and queues", body = Object),
        (status = 401, description = "No or unknown token"), (status = 403, description = "Scope too small"),
        (status = 422, description = "A bad `runs`")))]
async fn list_sources(
    State(app): State<App>,
    q: Result<Query<StatusParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let runs = runs_param(q)?;
    let (sources, queues) = report::collect_status(&app, None, runs).await?;
    Ok(Json(json!({"sources": sources, "queues": queues})))
}

/// One source's status.
#[utoipa::path(get, path = "/v1/sources/{source}", tag = "status", security(("bearer" = ["read"])),
    params(("source" = String, Path, description = "Source id"),
        ("runs" = Option<usize>, Query, description = "Recent runs (default 5, at most 50)")),
    responses((status = 200, description = "The source and the queues", body = Object),
        (status = 401, description = "No or unknown token"), (status = 403, description = "Scope too small"),
        (status = 404, description = "Unknown source (the configured ones are listed)")))]
async fn get_source(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<StatusParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let id = readable_source(&app, &raw).await?;
    let runs = runs_param(q)?;
    let (sources, queues) = report::collect_status(&app, Some(&id), runs).await?;
    Ok(Json(json!({"sources": sources, "queues": queues})))
}

/// Reads the optional sync body into the mode and whether the operator confirms
/// a mass deletion; nothing (or only whitespace) means incremental, unconfirmed.
fn parse_sync_body(headers: &HeaderMap, body: &[u8]) -> Result<(SyncMode, bool), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((SyncMode::Incremental, false));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let is_json = content_type.as_deref().is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType(
            content_type.unwrap_or_else(|| "(none)".into()),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::field(
            "body",
            format!("expected a JSON object like {{\"mode\": \"full\"}}, got {value}"),
        ));
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "mode" | "allow_mass_delete"))
    {
        return Err(ApiError::field(
            other.clone(),
            "unknown field; the body accepts only `mode` and `allow_mass_delete`",
        ));
    }
    let mode = match fields.get("mode") {
        None => SyncMode::Incremental,
        Some(Value::String(s)) => s.parse().map_err(|e: String| ApiError::field("mode", e))?,
        Some(other) => {
            return Err(ApiError::field(
                "mode",
                format!("expected \"incremental\" or \"full\", got {other}"),
            ));
        }
    };
    let allow_mass_delete = match fields.get("allow_mass_delete") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::field(
                "allow_mass_delete",
                format!("expected true or false, got {other}"),
            ));
        }
    };
    Ok((mode, allow_mass_delete))
}

/// Requests a sync; `allow_mass_delete` (confirming the deletion guard) needs the admin scope.
#[utoipa::path(post, path = "/v1/sources/{source}/syncs", tag = "sync", security(("bearer" = ["sync"])),
    params(("source" = String, Path, description = "Source id")),
    request_body(content = Object, description = r#"{"mode": "incremental" | "full", "allow_mass_delete": false}; empty means incremental"#, content_type = "application/json"),
    responses((status = 202, description = "Enqueued: request_id and status_url", body = Object),
        (status = 400, description = "Not JSON"), (status = 401, description = "No or unknown token"),
        (status = 403, description = "Scope too small"), (status = 404, description = "Unknown source"),
        (status = 413, description = "Body too large"), (status = 415, description = "Not application/json"),
        (status = 422, description = "A bad field, named"), (status = 503, description = "Redis unavailable")))]
async fn create_sync(
    State(app): State<App>,
    Extension(caller): Extension<auth::Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(bad_path)?;
    let id = configured_source(&app, &raw)?;
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }
        }
        other => ApiError::NotJson(other.body_text()),
    })?;
    let (mode, allow_mass_delete) = parse_sync_body(&headers, &body)?;
    // Confirming a mass deletion overrides the deletion guard: admins only.
    if allow_mass_delete {
        caller.require(crate::config::Scope::Admin)?;
    }
    let mut request = SyncRequest::new(id.clone(), mode, "api");
    request.allow_mass_delete = allow_mass_delete;
    let request_id = queue::enqueue(&app.pool, &app.keys, &request).await?;
    let status_url = format!("/v1/sources/{id}/requests/{request_id}");
    tracing::info!(source = %id, %mode, request = %request_id, caller = %caller.name, "sync requested over the API");
    let body = json!({
        "request_id": request_id,
        "source": id,
        "mode": mode,
        "status_url": status_url,
    });
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, status_url)], Json(body)).into_response())
}

/// A request's outcome: queued, the run that served it, or failed (dead-lettered unserved).
#[utoipa::path(get, path = "/v1/sources/{source}/requests/{request_id}", tag = "sync", security(("bearer" = ["read"])),
    params(("source" = String, Path, description = "Source id"),
        ("request_id" = String, Path, description = "The request_id a sync request returned")),
    responses((status = 200, description = "The run record, or {status: failed, error}", body = Object),
        (status = 202, description = "Queued: no run has served it yet"),
        (status = 401, description = "No or unknown token"), (status = 403, description = "Scope too small"),
        (status = 404, description = "Unknown source or request"), (status = 410, description = "The run's record expired")))]
async fn get_request(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((raw, raw_request)) = path.map_err(bad_path)?;
    let id = readable_source(&app, &raw).await?;
    // Request ids are issued as hyphenated lowercase UUIDs; normalising accepts
    // the other spellings of the same UUID instead of reporting them queued forever.
    let request_id = uuid::Uuid::parse_str(&raw_request)
        .map_err(|_| ApiError::UnknownRequest(raw_request.clone()))?
        .to_string();
    let state = app.state();
    let Some(run) = state.run_for_request(&id, &request_id).await? else {
        if let Some(reason) = state.request_refused(&id, &request_id).await? {
            let body = json!({"request_id": request_id, "status": "failed", "error": reason});
            return Ok(Json(body).into_response());
        }
        let body = json!({"request_id": request_id, "status": "queued"});
        return Ok((StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], Json(body)).into_response());
    };
    match state.request_outcome(&id, &request_id).await? {
        Some(record) => Ok(Json(record).into_response()),
        None => Err(ApiError::RunExpired {
            request_id,
            run_id: run.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    /// The sync body: each kind of bad input gets its own error, naming the field.
    #[test]
    fn sync_body_cases() {
        let h = json_headers();
        assert_eq!(
            parse_sync_body(&HeaderMap::new(), b"").ok(),
            Some((SyncMode::Incremental, false))
        );
        assert_eq!(parse_sync_body(&h, b" \n").ok(), Some((SyncMode::Incremental, false)));
        assert_eq!(parse_sync_body(&h, b"{}").ok(), Some((SyncMode::Incremental, false)));
        assert_eq!(
            parse_sync_body(&h, br#"{"mode":"full"}"#).ok(),
            Some((SyncMode::Full, false))
        );
        assert_eq!(
            parse_sync_body(&h, br#"{"mode":"full","allow_mass_delete":true}"#).ok(),
            Some((SyncMode::Full, true))
        );
        assert!(
            parse_sync_body(&h, br#"{"allow_mass_delete":"yes"}"#)
                .err()
                .is_some_and(|e| e.to_string().contains("allow_mass_delete"))
        );
        let mut charset = HeaderMap::new();
        charset.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(
            parse_sync_body(&charset, br#"{"mode":"full"}"#).ok(),
            Some((SyncMode::Full, false))
        );

        let code = |h: &HeaderMap, b: &[u8]| {
            parse_sync_body(h, b)
                .err()
                .map(|e| (e.status().as_u16(), e.to_string()))
        };
        assert!(matches!(code(&h, b"{mode:"), Some((400, _))));
        assert!(matches!(code(&HeaderMap::new(), br#"{"mode":"full"}"#), Some((415, _))));
        let mut text = HeaderMap::new();
        text.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(code(&text, br#"{"mode":"full"}"#), Some((415, _))));
        let (s, m) = code(&h, br#"{"mode":"sideways"}"#).unwrap_or_default();
        assert_eq!(s, 422);
        assert!(m.starts_with("mode:") && m.contains("sideways"), "{m}");
        let (s, m) = code(&h, br#"{"mode":7}"#).unwrap_or_default();
        assert!(s == 422 && m.starts_with("mode:"), "{m}");
        let (s, m) = code(&h, br#"{"mdoe":"full"}"#).unwrap_or_default();
        assert!(s == 422 && m.starts_with("mdoe:"), "{m}");
        let (s, m) = code(&h, br#"["full"]"#).unwrap_or_default();
        assert!(s == 422 && m.starts_with("body:"), "{m}");
    }
}
