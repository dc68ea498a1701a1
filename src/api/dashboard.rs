//! A small live dashboard, served by every process that serves the API:
//! sources with their documents, in-flight progress and last runs, the
//! queues' lag and pending entries, and the newest dead letters.
//!
//! Invariants:
//! - Read-only and behind the `read` scope: the page itself (`/dashboard`, its
//!   script and stylesheet) is static and holds no data; everything it shows
//!   comes from `GET /v1/sources` and `GET /v1/dead-letters`, which ask for a
//!   `read` token like every `/v1` read. The page sends the token as a bearer
//!   header, never in a URL the server sees (a `#token=` fragment stays in the
//!   browser).
//! - The page runs no inline script and renders API text as text only; its
//!   Content-Security-Policy allows scripts, styles and fetches from this
//!   origin alone and forbids framing.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::app::App;
use crate::queue::{dlq, streams};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Same-origin scripts, styles and fetches only; no framing, no forms posted anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Dead letters a request may ask for at most (the dashboard asks for 10).
pub const MAX_DEAD_LETTERS: usize = 100;

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The dashboard page (static; its data needs a `read` token).
#[utoipa::path(get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "The live dashboard's page (no data in it)", body = String, content_type = "text/html")))]
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/dashboard/dashboard.js", tag = "operations",
    responses((status = 200, description = "The dashboard's script", body = String, content_type = "text/javascript")))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's stylesheet.
#[utoipa::path(get, path = "/dashboard/dashboard.css", tag = "operations",
    responses((status = 200, description = "The dashboard's stylesheet", body = String, content_type = "text/css")))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// `?limit=N` of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterParams {
    limit: Option<usize>,
}

/// The newest dead letters, decoded as `tidemark dlq list --json` shows them.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "status", security(("bearer" = ["read"])),
    params(("limit" = Option<usize>, Query, description = "Newest N (default 20, at most 100)")),
    responses((status = 200, description = "{dead_letters: [...]}, newest first", body = Object),
        (status = 401, description = "No or unknown token"), (status = 403, description = "Scope too small"),
        (status = 422, description = "A bad `limit`")))]
pub async fn dead_letters(
    State(app): State<App>,
    q: Result<Query<DeadLetterParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::field("limit", format!("{} (expected a whole number)", e.body_text())))?;
    let limit = match p.limit {
        None => 20,
        Some(n) if (1..=MAX_DEAD_LETTERS).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::field(
                "limit",
                format!("{n} is not between 1 and {MAX_DEAD_LETTERS}"),
            ));
        }
    };
    let stream = app.keys.dead_letters();
    let entries = streams::newest(&app.pool, &stream, limit).await?;
    let letters: Vec<dlq::DeadLetter> = entries.iter().map(|e| dlq::describe(e, &app.keys)).collect();
    Ok(Json(json!({ "dead_letters": letters })))
}
