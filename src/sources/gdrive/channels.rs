//! Drive push channels: `changes.watch` opens one, `channels.stop` closes it.
//!
//! A channel watches the change list from a start page token taken just
//! before (one `changes.getStartPageToken` call), so every change after it is
//! notified; tidemark never reads changes through the channel's token, only
//! syncs from its own checkpoint, so a notification is a wake-up call and
//! nothing more.
//!
//! Invariants:
//! - The requested expiration is capped at Drive's maximum for the changes
//!   resource ([`MAX_CHANNEL_SECS`], one week); the channel returned carries the
//!   expiration Drive granted, which is what renewal is scheduled from.
//! - Stopping a channel Drive no longer knows (404) is success: it is gone.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::api::Client;
use crate::sources::{ApiCalls, Channel, Error};

/// Longest life Drive grants a channel on the changes resource (604,800 s).
pub const MAX_CHANNEL_SECS: i64 = 604_800;

/// `changes.watch`'s answer (a `Channel` resource): expiration in ms since the epoch, as a string.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WatchReply {
    id: String,
    resource_id: String,
    expiration: Option<String>,
}

impl Client {
    /// Opens a channel notifying `address` (with `token`) of every change from now on, until `expires`.
    pub(super) async fn watch(
        &self,
        address: &Url,
        token: &str,
        expires: DateTime<Utc>,
        calls: &ApiCalls,
    ) -> Result<Channel, Error> {
        let page_token = self.start_page_token(calls).await?;
        let mut url = self.url("drive/v3/changes/watch")?;
        url.query_pairs_mut().append_pair("pageToken", &page_token);
        self.drive_params(&mut url, false);
        let latest = Utc::now() + chrono::Duration::seconds(MAX_CHANNEL_SECS);
        let expires = expires.min(latest);
        let body = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "web_hook",
            "address": address.as_str(),
            "token": token,
            "expiration": expires.timestamp_millis().to_string(),
        });
        let reply = self
            .send(Method::POST, &url, Some(&body), calls)
            .await?
            .map_err(|r| r.into_error())?;
        let w: WatchReply = self.decode(&url, &reply)?;
        let expires_at = w
            .expiration
            .as_deref()
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(expires);
        Ok(Channel {
            id: w.id,
            resource_id: w.resource_id,
            expires_at,
        })
    }

    /// Stops `channel` (`channels.stop`); a channel Drive does not know is already stopped.
    pub(super) async fn stop_channel(&self, channel: &Channel, calls: &ApiCalls) -> Result<(), Error> {
        let url = self.url("drive/v3/channels/stop")?;
        let body = serde_json::json!({"id": channel.id, "resourceId": channel.resource_id});
        match self.send(Method::POST, &url, Some(&body), calls).await? {
            Ok(_) => Ok(()),
            Err(r) if r.status == 404 => Ok(()),
            Err(r) => Err(r.into_error()),
        }
    }
}
