//! HTTP scaffolding both simulators share: assembling the app (gated API routes,
//! `/_sim/` controls, a fallback), serving it on a spawned task, naming each
//! request by its endpoint, the added latency, query-string decoding, the
//! truncated 200 of `corrupt_next`, the `/_sim/stats` endpoints (calls, and
//! the traffic figures: early requests per throttle, the busiest second) and
//! the JSON time format.
//!
//! Invariants: what is shared here is only what both services answer alike.
//! Each simulator keeps its service's own answers (error bodies, rate-limit
//! headers, the `Date` header) in its own `api` module. The `/_sim/` routes sit
//! outside the API gate, so they are never counted as API calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::traffic::TrafficStats;

/// A simulator's API call counters, read and reset by `/_sim/stats` and `/_sim/stats/reset`.
pub(crate) trait CallCounts: Clone + Send + Sync + 'static {
    /// API calls by endpoint label.
    fn calls(&self) -> BTreeMap<String, u64>;
    /// All API calls, whatever their answer.
    fn total_calls(&self) -> u64;
    /// Zeroes the counters (and whatever the simulator logs with them).
    fn reset_calls(&self);
    /// Early requests per throttle and the busiest second.
    fn traffic_stats(&self) -> TrafficStats;
}

/// The whole app: `api` (already behind the simulator's gate), `control` plus
/// the shared stats endpoints, and `fallback` for every other path.
pub(crate) fn app<S, H, T>(sim: S, api: Router<S>, control: Router<S>, fallback: H) -> Router
where
    S: CallCounts,
    H: Handler<T, S>,
    T: 'static,
{
    let control = control
        .route("/_sim/stats", get(stats::<S>))
        .route("/_sim/stats/reset", post(reset_stats::<S>));
    api.merge(control).fallback(fallback).with_state(sim)
}

/// Binds `addr` (port 0 picks one), serves `app` in a spawned task, returns the bound address.
pub(crate) async fn serve(
    app: Router,
    addr: SocketAddr,
    name: &'static str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("{name} simulator stopped: {e}");
        }
    });
    Ok((bound, handle))
}

/// `"{METHOD} {route}"`, e.g. `GET /drive/v3/files/{id}`: the matched route
/// template, or the raw path when none matched.
pub(crate) fn endpoint_label(req: &Request) -> String {
    let path = req.uri().path();
    format!(
        "{} {}",
        req.method(),
        req.extensions().get::<MatchedPath>().map_or(path, |m| m.as_str())
    )
}

/// Waits `latency` (nothing when zero).
pub(crate) async fn delay(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// A 200 `application/json` answer cut short, as a proxy or a half-failed server might send.
pub(crate) fn truncated_json(body: &'static str) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Query pairs in order; repeated keys kept.
pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Query parameters by name; the last value wins for repeated ones.
pub(crate) fn query_map(q: Option<&str>) -> BTreeMap<String, String> {
    query_pairs(q).into_iter().collect()
}

/// RFC 3339 UTC with milliseconds, as both services write times in JSON.
pub(crate) fn rfc3339_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn stats<S: CallCounts>(State(sim): State<S>) -> Json<Value> {
    let t = sim.traffic_stats();
    Json(json!({
        "total": sim.total_calls(),
        "by_endpoint": sim.calls(),
        "throttles": t.throttles,
        "early_requests": t.early_requests,
        "in_flight_requests": t.in_flight_requests,
        "max_per_second": t.max_per_second,
        "span_ms": t.span_ms,
        "per_throttle": t.per_throttle,
    }))
}

async fn reset_stats<S: CallCounts>(State(sim): State<S>) -> StatusCode {
    sim.reset_calls();
    StatusCode::NO_CONTENT
}
