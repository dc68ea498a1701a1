//! Push notifications as Drive sends them: `changes.watch` opens a channel
//! (`POST /drive/v3/changes/watch`, a `Channel` resource in the body),
//! `channels.stop` closes one (`POST /drive/v3/channels/stop`, `{id,
//! resourceId}`, 204), and every change then POSTs an empty notification to
//! each open channel's address with Drive's headers: `X-Goog-Channel-ID`,
//! `X-Goog-Channel-Token`, `X-Goog-Channel-Expiration`, `X-Goog-Resource-ID`,
//! `X-Goog-Resource-URI`, `X-Goog-Resource-State` (`sync` once when the
//! channel opens, then `change`) and `X-Goog-Message-Number` (increasing per channel).
//!
//! Invariants:
//! - A channel lives until the expiration asked for, at most the cap (one
//!   week for the changes resource, [`MAX_CHANNEL_SECS`]; tests may lower it
//!   to see renewals), one hour if none was asked for; then it sends nothing.
//! - Deliveries go out in order from one task started by `serve`; a failed
//!   delivery is not retried (Drive does not promise retries either).
//!
//! Reference: Google's "Notifications for resource changes" guide
//! (developers.google.com/drive/api/guides/push): the watch body (`id`,
//! `type: web_hook`, `address`, `token`, `expiration` in ms), the `Channel`
//! answer, `channels.stop`, and the `X-Goog-*` headers of each notification.
//!
//! Unlike Drive, `http://` addresses are accepted: tests deliver to loopback.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::GdriveSim;
use super::api::{google_error, required_param};
use super::model::SimState;

/// Longest life Drive grants a channel on the changes resource.
pub const MAX_CHANNEL_SECS: i64 = 604_800;

/// An open channel.
#[derive(Debug, Clone)]
pub(super) struct SimChannel {
    pub(super) id: String,
    pub(super) resource_id: String,
    pub(super) address: String,
    pub(super) token: Option<String>,
    pub(super) expiration: DateTime<Utc>,
    pub(super) messages: u64,
}

/// One notification to deliver.
#[derive(Debug, Clone)]
pub(super) struct Push {
    pub(super) address: String,
    pub(super) headers: Vec<(&'static str, String)>,
}

impl SimChannel {
    fn push(&mut self, state: &str) -> Push {
        self.messages += 1;
        let mut headers = vec![
            ("X-Goog-Channel-ID", self.id.clone()),
            ("X-Goog-Channel-Expiration", self.expiration.to_rfc2822()),
            ("X-Goog-Resource-ID", self.resource_id.clone()),
            (
                "X-Goog-Resource-URI",
                "https://www.googleapis.com/drive/v3/changes?alt=json".to_owned(),
            ),
            ("X-Goog-Resource-State", state.to_owned()),
            ("X-Goog-Message-Number", self.messages.to_string()),
        ];
        if let Some(t) = &self.token {
            headers.push(("X-Goog-Channel-Token", t.clone()));
        }
        Push {
            address: self.address.clone(),
            headers,
        }
    }
}

impl SimState {
    /// Queues a `change` notification on every open channel (called for every change recorded).
    pub(super) fn notify_change(&mut self) {
        let now = Utc::now();
        self.channels.retain(|c| c.expiration > now);
        let pushes: Vec<Push> = self.channels.iter_mut().map(|c| c.push("change")).collect();
        for p in pushes {
            self.send_push(p);
        }
    }

    fn send_push(&mut self, push: Push) {
        if let Some(tx) = &self.outbox {
            let _ = tx.send(push);
        }
    }
}

/// `POST /drive/v3/changes/watch?pageToken=`: opens a channel.
pub(super) async fn api_watch(State(sim): State<GdriveSim>, RawQuery(q): RawQuery, body: String) -> Response {
    let p = crate::simulators::http::query_map(q.as_deref());
    if !p.contains_key("pageToken") {
        return required_param("pageToken");
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return google_error(400, "global", "parseError", "Parse Error", None);
    };
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(id), Some(address)) = (field("id"), field("address")) else {
        return google_error(400, "global", "required", "Required: id and address", None);
    };
    if !matches!(field("type").as_deref(), Some("web_hook" | "webhook")) {
        return google_error(400, "global", "invalid", "Invalid value for type", None);
    }
    let asked = match v.get("expiration") {
        Some(Value::String(ms)) => ms.parse::<i64>().ok(),
        Some(Value::Number(ms)) => ms.as_i64(),
        _ => None,
    };
    let mut st = sim.lock();
    if st.channels.iter().any(|c| c.id == id) {
        return google_error(
            400,
            "global",
            "channelIdNotUnique",
            &format!("Channel id {id} not unique"),
            None,
        );
    }
    let now = Utc::now();
    let cap = now + Duration::seconds(st.max_channel_secs);
    let expiration = asked
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(now + Duration::hours(1))
        .min(cap);
    let resource_id = format!("res-{}", st.next_change);
    let mut channel = SimChannel {
        id: id.clone(),
        resource_id: resource_id.clone(),
        address,
        token: field("token"),
        expiration,
        messages: 0,
    };
    let sync = channel.push("sync");
    st.channels.push(channel.clone());
    st.send_push(sync);
    let mut reply = json!({
        "kind": "api#channel",
        "id": id,
        "resourceId": resource_id,
        "resourceUri": "https://www.googleapis.com/drive/v3/changes?alt=json",
        "expiration": expiration.timestamp_millis().to_string(),
    });
    if let Some(t) = &channel.token {
        reply["token"] = json!(t);
    }
    Json(reply).into_response()
}

/// `POST /drive/v3/channels/stop`: closes a channel (204), 404 if unknown.
pub(super) async fn api_stop(State(sim): State<GdriveSim>, body: String) -> Response {
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    let resource = v.get("resourceId").and_then(Value::as_str).unwrap_or_default();
    let mut st = sim.lock();
    let before = st.channels.len();
    st.channels.retain(|c| !(c.id == id && c.resource_id == resource));
    if st.channels.len() == before {
        return google_error(
            404,
            "global",
            "notFound",
            &format!("Channel '{id}' not found for project"),
            None,
        );
    }
    st.stopped_channels += 1;
    StatusCode::NO_CONTENT.into_response()
}

/// Delivers queued notifications in order until the simulator is dropped.
pub(super) async fn deliver(mut rx: tokio::sync::mpsc::UnboundedReceiver<Push>) {
    let http = reqwest::Client::new();
    while let Some(push) = rx.recv().await {
        let mut req = http.post(&push.address);
        for (k, v) in &push.headers {
            req = req.header(*k, v);
        }
        if let Err(e) = req.send().await {
            tracing::debug!(address = %push.address, error = %e, "push notification not delivered");
        }
    }
}
