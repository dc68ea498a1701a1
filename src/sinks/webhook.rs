//! The webhook sink: every upsert and deletion POSTed as JSON to a receiver
//! (any indexer), signed, keyed for idempotency and carrying the run's token.
//!
//! What a receiver gets (README, "Webhook sink"):
//! - `POST <url>`, `Content-Type: application/json`, one event per request:
//!   `{"event": "upsert", "source", "token", "document": {..the document
//!   contract.., "chunks": [..] when configured}}`, `{"event": "delete",
//!   "source", "token", "id"}`, and `{"event": "fence", "source", "token"}`
//!   when a run starts.
//! - `X-Tidemark-Timestamp` and `X-Tidemark-Signature: sha256=<hex>` (HMAC-SHA256
//!   over `"{timestamp}.{body}"`, as inbound webhooks are checked: `crate::signing`);
//!   `Idempotency-Key` (SHA-256 of source, id, version, content hash and token:
//!   a retry of one delivery carries the same key, a new version or a new run a
//!   new one); `X-Tidemark-Fencing-Token` and `X-Tidemark-Source`.
//!
//! Invariants:
//! - Fencing: the sink's own fence lives in the state store (`state::deliveries`),
//!   raised by [`Sink::register_token`] (which also tells the receiver, with a
//!   `fence` event) and checked before every POST; a receiver that also
//!   refuses tokens below the highest it has seen per source closes the
//!   window between that check and its arrival.
//! - Order: a page's changes are sent one at a time, in order, each waiting
//!   for its answer; a document belongs to one page of a run, and runs of a
//!   source never overlap, so each document's events arrive in order.
//! - A delivery is recorded in the ledger only after a 2xx; the same version
//!   and hash again is not sent (`Unchanged`). Deletions are always sent (a lost
//!   ledger must not keep a deleted document at the receiver).
//! - 5xx, 408, 429, timeouts and connection errors are retried with capped,
//!   jittered backoff (`Retry-After` honoured, up to the cap), then the page is
//!   retried as a whole ([`Error::Unavailable`]); 409 means the receiver has
//!   seen a newer token for the source (the page is superseded); any other
//!   4xx refuses the page ([`Error::Refused`], dead-lettered with the
//!   receiver's answer).
//! - The sink keeps no copy: `get` has nothing to return, so documents whose
//!   breadcrumb or link titles change are fetched from the source again
//!   ([`Sink::reads_back`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::chunks::{ChunkConfig, split};
use super::{Error, Sink, SinkDocument, Written};
use crate::lock::fencing::StaleFence;
use crate::retry::Backoff;
use crate::state::{self, StateStore, deliveries::Delivered};
use crate::types::{DocumentId, FencingToken, SourceId};

/// Characters of a receiver's refusal kept in the error (and the dead letter).
const ANSWER_CHARS: usize = 500;
/// Longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// Where and how to deliver.
#[derive(Clone)]
pub struct WebhookSettings {
    /// The receiver.
    pub url: reqwest::Url,
    /// The HMAC key shared with the receiver.
    pub secret: Vec<u8>,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Tries per event before the page is handed back for a later retry.
    pub max_attempts: u32,
    /// Delays between tries.
    pub backoff: Backoff,
}

/// Delivers documents to a receiver over HTTP.
#[derive(Clone)]
pub struct WebhookSink {
    /// Names this sink's fence and ledger in the state store.
    name: String,
    settings: WebhookSettings,
    http: reqwest::Client,
    ledger: StateStore,
    chunking: Option<ChunkConfig>,
}

fn ledger_error(e: state::Error) -> Error {
    match e {
        state::Error::StaleFence(s) => Error::StaleFence(s),
        other => Error::Unavailable {
            context: format!("webhook sink ledger: {other}"),
        },
    }
}

/// The idempotency key of one event: equal for retries of one delivery, new
/// for a new version, new content (a refreshed breadcrumb) or a new run.
fn idempotency_key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP))
}

impl WebhookSink {
    /// A sink named `name` (its ledger's key) delivering with `settings`,
    /// its fence and ledger in `ledger`.
    pub fn new(name: impl Into<String>, settings: WebhookSettings, ledger: StateStore) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("tidemark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unavailable {
                context: format!("webhook sink: building the HTTP client: {e}"),
            })?;
        Ok(Self {
            name: name.into(),
            settings,
            http,
            ledger,
            chunking: None,
        })
    }

    /// Also sends each document's chunks (`document.chunks`).
    pub fn with_chunks(mut self, config: ChunkConfig) -> Self {
        self.chunking = Some(config);
        self
    }

    /// POSTs one event until the receiver accepts it, refuses it, or the tries run out.
    async fn deliver(
        &self,
        source: &SourceId,
        token: FencingToken,
        key: &str,
        event: &serde_json::Value,
    ) -> Result<(), Error> {
        // Serializing an in-memory JSON value cannot fail.
        let body = serde_json::to_vec(event).expect("JSON encoding of a JSON value");
        let url = &self.settings.url;
        let mut delays = self.settings.backoff.delays();
        let mut last = String::new();
        for attempt in 1..=self.settings.max_attempts.max(1) {
            let timestamp = chrono::Utc::now().timestamp();
            let sent = self
                .http
                .post(url.clone())
                .header("content-type", "application/json")
                .header("x-tidemark-timestamp", timestamp.to_string())
                .header(
                    "x-tidemark-signature",
                    crate::signing::sign(&self.settings.secret, timestamp, &body),
                )
                .header("idempotency-key", key)
                .header("x-tidemark-fencing-token", token.0.to_string())
                .header("x-tidemark-source", source.as_str())
                .body(body.clone())
                .send()
                .await;
            let mut wait = None;
            match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                // The receiver has seen a newer run of this source (which token, it
                // need not say): the page is superseded, as with our own fence.
                Ok(response) if response.status().as_u16() == 409 => {
                    return Err(Error::StaleFence(StaleFence {
                        ours: token,
                        current: FencingToken(token.0 + 1),
                    }));
                }
                Ok(response) => {
                    let status = response.status();
                    let again = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                    wait = retry_after(&response);
                    let answer = response.text().await.unwrap_or_default();
                    let answer: String = answer.chars().take(ANSWER_CHARS).collect();
                    last = format!("{status}: {}", answer.trim());
                    if !again {
                        return Err(Error::Refused {
                            context: format!("webhook {url} answered {last}"),
                        });
                    }
                }
                Err(e) if e.is_timeout() => last = format!("no answer within {:?}", self.settings.timeout),
                Err(e) => last = format!("{e}"),
            }
            tracing::debug!(sink = %self.name, attempt, error = %last, "webhook delivery failed; retrying");
            if attempt < self.settings.max_attempts {
                tokio::time::sleep(wait.unwrap_or_else(|| delays.next_delay())).await;
            }
        }
        Err(Error::Unavailable {
            context: format!(
                "webhook {url}: {} tries failed, the last: {last}",
                self.settings.max_attempts
            ),
        })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        self.ledger
            .register_sink_token(source, &self.name, token)
            .await
            .map_err(ledger_error)?;
        let event = json!({"event": "fence", "source": source.as_str(), "token": token.0});
        let key = idempotency_key(&[source.as_str(), "fence", &token.0.to_string()]);
        self.deliver(source, token, &key, &event).await
    }

    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        let (source, token) = (&doc.source, doc.fencing_token);
        let now = Delivered {
            version: doc.version.clone(),
            content_hash: doc.content_hash.clone(),
        };
        let before = self
            .ledger
            .delivered_under(source, &self.name, token, &doc.id)
            .await
            .map_err(ledger_error)?;
        if before.as_ref() == Some(&now) {
            return Ok(Written::Unchanged);
        }
        let mut document = serde_json::to_value(doc).map_err(|e| Error::Rejected {
            id: doc.id.clone(),
            reason: format!("webhook: encoding: {e}"),
        })?;
        if let (Some(config), Some(fields)) = (self.chunking, document.as_object_mut()) {
            fields.insert("chunks".into(), json!(split(&doc.content, &config)));
        }
        let event = json!({"event": "upsert", "source": source.as_str(), "token": token.0, "document": document});
        let key = idempotency_key(&[
            source.as_str(),
            &doc.id.0,
            &doc.version,
            &doc.content_hash,
            &token.0.to_string(),
        ]);
        self.deliver(source, token, &key, &event).await?;
        self.ledger
            .record_delivery(source, &self.name, token, &doc.id, Some(&now))
            .await
            .map_err(ledger_error)?;
        Ok(Written::Changed)
    }

    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error> {
        let held = self
            .ledger
            .delivered_under(source, &self.name, token, id)
            .await
            .map_err(ledger_error)?;
        let event = json!({"event": "delete", "source": source.as_str(), "token": token.0, "id": id.0});
        let key = idempotency_key(&[source.as_str(), &id.0, "deleted", &token.0.to_string()]);
        self.deliver(source, token, &key, &event).await?;
        self.ledger
            .record_delivery(source, &self.name, token, id, None)
            .await
            .map_err(ledger_error)?;
        Ok(if held.is_some() {
            Written::Changed
        } else {
            Written::Unchanged
        })
    }

    /// Nothing is kept to read back.
    async fn get(&self, _source: &SourceId, _id: &DocumentId) -> Result<Option<SinkDocument>, Error> {
        Ok(None)
    }

    fn reads_back(&self) -> bool {
        false
    }

    /// What the ledger says was delivered.
    async fn versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error> {
        self.ledger
            .delivered_versions(source, &self.name)
            .await
            .map_err(ledger_error)
    }
}
