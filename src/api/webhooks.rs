//! Webhook deliveries: `POST /webhooks/{source}` turns verified events into
//! debounced sync requests, targeted at the documents they name.
//!
//! Verification, by what the delivery carries (the secret is `[sources.webhook]`'s):
//!
//! | headers | check |
//! |---|---|
//! | `X-Tidemark-Timestamp`, `X-Tidemark-Signature: sha256=<hex>` | HMAC-SHA256 over `"{timestamp}.{raw body}"`; timestamp within `tolerance_secs` |
//! | `X-Hub-Signature: sha256=<hex>` (Atlassian / GitHub style) | HMAC-SHA256 over the raw body; the payload's `timestamp` (ms) within tolerance |
//! | `X-Goog-Channel-ID`, `X-Goog-Channel-Token`, `X-Goog-Resource-State`, `X-Goog-Message-Number` (Drive push) | the channel token equals the secret; message numbers only increase per channel |
//!
//! Invariants:
//! - Nothing is enqueued for a delivery that fails verification (401), is too
//!   large (413), or names an unknown source (404).
//! - A delivery is accepted once: a signature seen within the tolerance window,
//!   or a Drive message number not above the last one, is a replay (401).
//! - Accepted events are not lost: their targets go into the source's pending
//!   set, and the coordinator turns the set into one request when the debounce
//!   window closes ([`crate::queue::webhooks::flush_due`]). Webhooks are a hint, not the source of
//!   truth: scheduled polling stays on as the fallback for lost deliveries.
//!
//! Payloads: Confluence-style page events (`{"eventType" | "event": "page_updated", "page": {"id": ..}}`)
//! and `{"documents": ["id", ..]}` name documents (a targeted run fetches only
//! those); anything else, and Drive pushes, ask for an incremental run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::ApiError;
use crate::app::App;
use crate::config::WebhookConfig;
use crate::queue::webhooks;
pub use crate::signing::{sign, sign_body};
use crate::types::{DocumentId, SourceId};

/// Largest webhook body accepted, in bytes.
pub const WEBHOOK_BODY_LIMIT: usize = 64 * 1024;

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Unauthorized {
        code,
        message: message.into(),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Verifies `sha256=<hex>` against HMAC-SHA256(secret, message), in constant time.
fn verify_hmac(secret: &[u8], message: &[&[u8]], signature: &str) -> Result<(), ApiError> {
    let hex_sig = signature
        .strip_prefix("sha256=")
        .ok_or_else(|| unauthorized("bad_signature", "signature must look like sha256=<hex>"))?;
    let expected = hex::decode(hex_sig).map_err(|_| unauthorized("bad_signature", "signature is not hex"))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|_| unauthorized("bad_signature", "unusable secret"))?;
    for part in message {
        mac.update(part);
    }
    mac.verify_slice(&expected)
        .map_err(|_| unauthorized("bad_signature", "signature does not match the body"))
}

fn check_timestamp(ts: i64, tolerance: Duration) -> Result<(), ApiError> {
    let skew = (now_secs() - ts).unsigned_abs();
    if skew > tolerance.as_secs() {
        return Err(unauthorized(
            "stale_timestamp",
            format!(
                "timestamp {ts} is {skew}s away from ours (tolerance {}s)",
                tolerance.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Constant-time equality, so a wrong token leaks nothing through timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a verified delivery asks for.
enum Event {
    /// A handshake (Drive's `sync` state): acknowledge, enqueue nothing.
    Handshake,
    /// Sync these documents, or the whole source if empty.
    Sync(Vec<DocumentId>),
}

/// The documents a JSON payload names: a page event's page id, or `documents`.
fn named_documents(payload: &Value) -> Vec<DocumentId> {
    let id_of = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(DocumentId(s.clone())),
        Value::Number(n) => Some(DocumentId(n.to_string())),
        _ => None,
    };
    if let Some(Value::Array(docs)) = payload.get("documents") {
        return docs.iter().filter_map(id_of).collect();
    }
    let is_page_event = ["eventType", "event"]
        .iter()
        .filter_map(|k| payload.get(*k).and_then(Value::as_str))
        .any(|e| e.starts_with("page_") || e.starts_with("blog_"));
    if is_page_event && let Some(id) = payload.get("page").and_then(|p| p.get("id")).and_then(id_of) {
        return vec![id];
    }
    Vec::new()
}

async fn verify(
    app: &App,
    source: &SourceId,
    hook: &WebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Event, ApiError> {
    let secret = hook.secret.0.as_slice();
    let replay_window = hook.tolerance * 2;

    if let Some(channel) = header(headers, "x-goog-channel-id") {
        let token = header(headers, "x-goog-channel-token").unwrap_or_default();
        if !same(token.as_bytes(), secret) {
            return Err(unauthorized("bad_channel_token", "X-Goog-Channel-Token does not match"));
        }
        let number: u64 = header(headers, "x-goog-message-number")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| unauthorized("bad_signature", "X-Goog-Message-Number missing or not a number"))?;
        // Raise-only: a message number at or below the last accepted one is a replay.
        let accepted = webhooks::accept_channel_message(&app.pool, &app.keys, source, channel, number).await?;
        if !accepted {
            return Err(unauthorized(
                "replayed",
                format!("message {number} of channel {channel} was already accepted"),
            ));
        }
        return Ok(match header(headers, "x-goog-resource-state") {
            Some("sync") => Event::Handshake,
            _ => Event::Sync(Vec::new()),
        });
    }

    let signature = if let Some(sig) = header(headers, "x-tidemark-signature") {
        let ts: i64 = header(headers, "x-tidemark-timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| unauthorized("bad_signature", "X-Tidemark-Timestamp missing or not a number"))?;
        check_timestamp(ts, hook.tolerance)?;
        verify_hmac(secret, &[ts.to_string().as_bytes(), b".", body], sig)?;
        sig
    } else if let Some(sig) = header(headers, "x-hub-signature-256").or_else(|| header(headers, "x-hub-signature")) {
        verify_hmac(secret, &[body], sig)?;
        let payload: Value = serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
        let ts_ms = payload
            .get("timestamp")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::field("timestamp", "signed body needs a numeric `timestamp` (ms since epoch)"))?;
        check_timestamp(ts_ms / 1000, hook.tolerance)?;
        sig
    } else {
        return Err(unauthorized(
            "missing_signature",
            "no X-Tidemark-Signature, X-Hub-Signature or X-Goog-Channel-Token header",
        ));
    };
    // Canonical (lower-case) hex: the HMAC check is case-blind, so the replay
    // key must be too, or an upper-cased copy of a delivery would pass as new.
    let canonical = signature.trim_start_matches("sha256=").to_ascii_lowercase();
    if !webhooks::first_delivery(&app.pool, &app.keys, source, &canonical, replay_window).await? {
        return Err(unauthorized("replayed", "this delivery was already accepted"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Event::Sync(Vec::new()));
    }
    let payload: Value = serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))?;
    Ok(Event::Sync(named_documents(&payload)))
}

/// `POST /webhooks/{source}`.
#[utoipa::path(post, path = "/webhooks/{source}", tag = "webhooks",
    params(("source" = String, Path, description = "Source id")),
    request_body(content = Object, description = "A source's change notification, signed (X-Tidemark-Signature, X-Hub-Signature or a Drive channel token)", content_type = "application/json"),
    responses((status = 202, description = "Accepted: a sync follows after the debounce window"),
        (status = 200, description = "A Drive sync handshake"),
        (status = 401, description = "Signature missing, bad, stale or replayed"),
        (status = 404, description = "Unknown source, or no webhook configured"),
        (status = 413, description = "Body too large")))]
pub async fn receive(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(super::bad_path)?;
    let source = super::configured_source(&app, &raw)?;
    let Some(hook) = app.config.source(&source).and_then(|s| s.webhook.clone()) else {
        return Err(ApiError::WebhooksNotConfigured(raw));
    };
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge {
                limit: WEBHOOK_BODY_LIMIT,
            }
        }
        other => ApiError::NotJson(other.body_text()),
    })?;
    let targets = match verify(&app, &source, &hook, &headers, &body).await? {
        Event::Handshake => {
            return Ok((StatusCode::OK, Json(json!({"status": "handshake acknowledged"}))).into_response());
        }
        Event::Sync(targets) => targets,
    };
    webhooks::accept(&app.pool, &app.keys, &source, &targets, hook.debounce).await?;
    tracing::info!(source = %source, documents = targets.len(), "webhook accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "accepted",
            "source": source,
            "documents": targets,
            "debounce_ms": hook.debounce.as_millis() as u64,
        })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page events and document lists name their documents; other payloads name none.
    #[test]
    fn payloads_name_documents() {
        let page = json!({"eventType": "page_updated", "page": {"id": 123, "title": "T"}});
        assert_eq!(named_documents(&page), vec![DocumentId("123".into())]);
        let docs = json!({"documents": ["a", "b"]});
        assert_eq!(named_documents(&docs).len(), 2);
        assert!(named_documents(&json!({"eventType": "space_updated"})).is_empty());
    }

    /// A signature made with the secret verifies; a changed body or secret does not.
    #[test]
    fn hmac_round_trip() {
        let sig = sign(b"s3cret", 1700000000, b"{}");
        assert!(verify_hmac(b"s3cret", &[b"1700000000", b".", b"{}"], &sig).is_ok());
        assert!(verify_hmac(b"s3cret", &[b"1700000000", b".", b"{ }"], &sig).is_err());
        assert!(verify_hmac(b"other", &[b"1700000000", b".", b"{}"], &sig).is_err());
        assert!(verify_hmac(b"s3cret", &[b"x"], "md5=abc").is_err());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
