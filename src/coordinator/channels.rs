//! Push channels kept open by the fleet: for each source whose webhook has an
//! `address` and whose connector has push channels (Drive), one coordinator
//! at a time opens a channel, opens its successor when a quarter of its life
//! is left (or the address changed), stores it by compare-and-swap, and stops
//! the one it replaced. Notifications then arrive at `POST /webhooks/{source}`
//! like any delivery (token = the webhook secret) and start a debounced sync.
//!
//! Invariants:
//! - A channel is stopped only after its successor is stored, so there is no
//!   moment without an open channel; a successor that lost the swap is stopped.
//! - A failure (the source refuses, Redis is away) is logged and retried after
//!   [`RETRY_AFTER_FAILURE`]; it never touches runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::config::WebhookConfig;
use crate::sources::{ApiCalls, Source};
use crate::state::channels::OpenChannel;
use crate::types::SourceId;

/// How often each channel's renewal time is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a renewal claim lasts: longer than opening, storing and stopping take.
const RENEWAL_CLAIM: Duration = Duration::from_secs(60);
/// The wait after a failed attempt before the next.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What one check of one source did.
#[derive(Debug, PartialEq, Eq)]
enum Checked {
    /// The stored channel is good for now, or another coordinator is renewing it.
    Fine,
    /// A channel was opened and stored (the one it replaced, if any, stopped).
    Opened,
    /// The connector has no push channels: never ask again.
    Unsupported,
}

impl Coordinator {
    /// Keeps a push channel open for every source that asks for one, until `shutdown`.
    pub(super) async fn keep_channels(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry_at: HashMap<SourceId, tokio::time::Instant> = HashMap::new();
        let mut unsupported: Vec<SourceId> = Vec::new();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (source, hook) in &self.channels {
                let now = tokio::time::Instant::now();
                if unsupported.contains(source) || retry_at.get(source).is_some_and(|at| now < *at) {
                    continue;
                }
                match self.check_channel(source, hook).await {
                    Ok(Checked::Fine | Checked::Opened) => {
                        retry_at.remove(source);
                    }
                    Ok(Checked::Unsupported) => {
                        tracing::warn!(%source, "webhook.address is set but this connector has no push channels");
                        unsupported.push(source.clone());
                    }
                    Err(e) => {
                        tracing::warn!(%source, error = %e, "keeping the push channel open failed; retrying in 30 s");
                        retry_at.insert(source.clone(), now + RETRY_AFTER_FAILURE);
                    }
                }
            }
        }
    }

    /// Opens a channel for `source` if it has none, its channel is due for
    /// renewal, or it delivers to another address.
    async fn check_channel(&self, source: &SourceId, hook: &WebhookConfig) -> Result<Checked, String> {
        let Some(address) = &hook.address else {
            return Ok(Checked::Fine);
        };
        let Some(connector) = self.sources.get(source) else {
            return Ok(Checked::Unsupported);
        };
        let current = self.state.push_channel(source).await.map_err(|e| e.to_string())?;
        let now = Utc::now();
        let due = current
            .as_ref()
            .is_none_or(|c| now >= c.renew_at() || c.address != address.as_str());
        if !due {
            return Ok(Checked::Fine);
        }
        if !self
            .state
            .claim_channel_renewal(source, &self.consumer, RENEWAL_CLAIM)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Checked::Fine);
        }
        let outcome = self
            .open_channel(source, connector.as_ref(), hook, address, current)
            .await;
        if let Err(e) = self.state.release_channel_renewal(source).await {
            tracing::debug!(%source, error = %e, "releasing the renewal claim failed; it expires by itself");
        }
        outcome
    }

    async fn open_channel(
        &self,
        source: &SourceId,
        connector: &dyn Source,
        hook: &WebhookConfig,
        address: &url::Url,
        current: Option<OpenChannel>,
    ) -> Result<Checked, String> {
        let calls = ApiCalls::observed(self.telemetry.source_api(source));
        let token = String::from_utf8_lossy(&hook.secret.0).into_owned();
        let opened_at = Utc::now();
        let expires = opened_at + chrono::Duration::from_std(hook.channel_ttl).unwrap_or(chrono::Duration::days(7));
        let Some(channel) = connector
            .watch(address, &token, expires, &calls)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Checked::Unsupported);
        };
        let new = OpenChannel {
            channel,
            opened_at,
            address: address.as_str().to_owned(),
        };
        let stored = self
            .state
            .swap_push_channel(source, current.as_ref(), &new)
            .await
            .map_err(|e| e.to_string());
        // Stop whichever channel is not the one stored: the old one once the new
        // one is in, or our own if another coordinator got there first (or Redis failed).
        let superseded = match stored {
            Ok(true) => current.map(|c| c.channel),
            Ok(false) | Err(_) => Some(new.channel.clone()),
        };
        if let Some(old) = superseded
            && let Err(e) = connector.stop_channel(&old, &calls).await
        {
            tracing::warn!(%source, channel = %old.id, error = %e, "stopping a superseded push channel failed; it expires by itself");
        }
        match stored {
            Ok(true) => {
                tracing::info!(%source, channel = %new.channel.id, expires_at = %new.channel.expires_at, "push channel opened");
                Ok(Checked::Opened)
            }
            Ok(false) => Ok(Checked::Fine),
            Err(e) => Err(e),
        }
    }
}
