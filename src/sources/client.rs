//! The retrying HTTP client every HTTP-based connector sends its requests through.
//!
//! What it owns: one request's life — wait for the source's rate gate, build,
//! count, send with a timeout, read the body, ask the connector what the
//! response means, report throttles to the gate, back off and retry, and turn
//! the outcome into a [`sources::Error`](super::Error) whose context names the
//! source, the method, the endpoint and the status.
//!
//! What it does not own: what a status *means*. The connector's classifier
//! decides per response whether it is accepted (returned to the connector, which
//! may still treat it as a refusal: Drive's 404 or expired page token, the HTTP
//! connector's 304/404/410), a throttle, retried, or refused. Authentication, headers and
//! URLs are the connector's too, through the request factory (only the
//! configured `User-Agent` is added here). How a client is configured from a
//! connector's settings is [`ClientSettings`](super::settings::ClientSettings).
//! The fleet-wide waiting is the [`Gate`]'s (`crate::gate`).
//!
//! Invariants:
//! - Every attempt passes the source's gate first (so no request leaves before
//!   a not-before any process recorded, and the budget is spent fleet-wide).
//! - Every attempt, retries included, is counted with `calls.add(1)` just before
//!   it is sent (a rate limit counts them all).
//! - A [`Verdict::Throttle`] raises the gate's not-before (to `Retry-After`, or
//!   the shared backoff); the retry then waits at the gate like everyone else.
//!   A [`Verdict::Retry`] (5xx, network) waits on its own: its `Retry-After`,
//!   or the same truncated exponential backoff by attempt.
//! - At most `max_retries` retries follow the first attempt; then the last
//!   failure is returned as `Error::Retryable` with the source's `Retry-After`.
//!   A wait longer than [`RETRY_AFTER_CAP`] is not waited here: the call ends
//!   `Retryable` at once, and the caller's own retry (a later job delivery) waits.
//! - Nothing here reads our clock for anything but the length of a wait.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{DATE, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use super::clock;
use super::{ApiCalls, Error};
use crate::gate::{self, Gate, Gates, Policy};
use crate::types::SourceId;

/// Longest we wait (a `Retry-After`, the gate) inside one call; beyond that the caller reschedules.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// Which response bodies are read before the classifier sees the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Every body: error bodies carry the API's reason. An error body that
    /// cannot be read is treated as empty.
    Always,
    /// Only 2xx bodies (pages we want the content of).
    OnSuccess,
    /// None (`HEAD`, or probes that only need the headers).
    Never,
    /// Only 2xx bodies, and of those at most this many bytes (after decoding
    /// `Content-Encoding`): a longer body is cut there and the reply says
    /// `truncated`, so one huge page cannot fill a worker's memory.
    OnSuccessUpTo(u64),
}

/// A response the client read: status, headers, the body (empty when not
/// read, see [`Body`]) and the source's clock from its `Date` header.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The final status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body bytes, as selected by [`Body`].
    pub body: Vec<u8>,
    /// The body was longer than [`Body::OnSuccessUpTo`] allowed and was cut.
    pub truncated: bool,
    /// The URL that answered, after redirects (what relative links resolve against).
    pub url: url::Url,
    /// The `Date` header: the source's clock when it answered.
    pub date: Option<DateTime<Utc>>,
}

impl Reply {
    /// The body as text; invalid UTF-8 is replaced (what `reqwest`'s `text()` does here).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as text, consuming the reply (no copy when it is valid UTF-8).
    pub fn into_text(self) -> String {
        String::from_utf8(self.body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// What the connector's classifier decided about one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Return the response to the connector (a success, or a refusal it interprets).
    Accept,
    /// The source is throttling us (429, 503, Google's rate-limit 403): the
    /// whole fleet waits `after` (the source's `Retry-After`) or, without it,
    /// the shared backoff; then retry. `detail` as for `Retry`.
    Throttle {
        /// What went wrong, after the call's context.
        detail: String,
        /// The source's `Retry-After`, when it sent one.
        after: Option<Duration>,
    },
    /// A transient failure of this request only (5xx, a body cut short): retry
    /// after its own backoff. `detail` follows the call's context in the
    /// error if retries run out (e.g. `HTTP 500: busy`); `after` is the source's hint.
    Retry {
        /// What went wrong, after the call's context.
        detail: String,
        /// The source's `Retry-After`, when it sent one.
        after: Option<Duration>,
    },
    /// Retrying cannot help: `Error::Permanent` with `detail` after the call's context.
    Refuse {
        /// What went wrong, after the call's context.
        detail: String,
    },
}

/// Sends requests for one source with a timeout, counting and retrying them.
#[derive(Debug, Clone)]
pub struct RetryingClient {
    http: reqwest::Client,
    source: SourceId,
    timeout: Duration,
    max_retries: u32,
    gate: Gate,
    detailed_errors: bool,
    user_agent: Option<HeaderValue>,
}

impl RetryingClient {
    /// A client for `source` with a per-request `timeout` and `max_retries`
    /// retries after the first attempt; plain error texts, and a gate of this
    /// process only with the default policy (see [`with_gate`](Self::with_gate)).
    pub fn new(http: reqwest::Client, source: SourceId, timeout: Duration, max_retries: u32) -> Self {
        let gate = Gates::local().gate(&source, Policy::default());
        Self {
            http,
            source,
            timeout,
            max_retries,
            gate,
            detailed_errors: false,
            user_agent: None,
        }
    }

    /// Sends every attempt through `gate` (normally the source's fleet-wide one).
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// Network and body errors list their causes (reqwest's own message, "error
    /// sending request", hides "Connection refused" in its source chain), and
    /// exhausted retries say how many attempts were made.
    pub fn with_detailed_errors(mut self) -> Self {
        self.detailed_errors = true;
        self
    }

    /// Sends `user_agent` as `User-Agent` with every request, in place of the
    /// `reqwest::Client`'s own.
    pub fn with_user_agent(mut self, user_agent: HeaderValue) -> Self {
        self.user_agent = Some(user_agent);
        self
    }

    /// The underlying `reqwest` client, for building requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The source this client speaks for.
    pub fn source(&self) -> &SourceId {
        &self.source
    }

    /// `source <id>: <label>`: the start of every error context for a call.
    pub fn context(&self, label: impl Display) -> String {
        // Labels may quote whole URLs (the HTTP connector's): no password in errors.
        crate::redact::text(&format!("source {}: {label}", self.source))
    }

    /// `Error::Permanent` with context `source <id>: <what>`.
    pub fn permanent(&self, what: impl Display) -> Error {
        Error::Permanent {
            context: self.context(what),
        }
    }

    /// Decodes a JSON body; a malformed one is `Permanent`
    /// (`source <id>: <label>: malformed response body: …`).
    pub fn decode_json<T: DeserializeOwned>(&self, label: impl Display, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body).map_err(|e| self.permanent(format_args!("{label}: malformed response body: {e}")))
    }

    /// Sends one logical request, retrying as the classifier says.
    ///
    /// `label` names the call in errors (`GET /wiki/api/v2/spaces`). `build`
    /// makes a fresh request for each attempt (so credentials can be re-read);
    /// its error ends the call before the attempt is counted. The client adds
    /// the timeout (and the user agent, if set), reads the body as `body` says (a 2xx body that cannot be
    /// read is a retryable failure), then asks `classify`.
    pub async fn send<B, F, C>(
        &self,
        label: &str,
        build: B,
        body: Body,
        classify: C,
        calls: &ApiCalls,
    ) -> Result<Reply, Error>
    where
        B: Fn() -> F,
        F: Future<Output = Result<RequestBuilder, Error>>,
        C: Fn(&Reply) -> Verdict,
    {
        let ctx = self.context(label);
        let policy = *self.gate.policy();
        let mut attempt: u32 = 0;
        loop {
            let pass = match self.gate.wait_turn(RETRY_AFTER_CAP).await {
                Ok(pass) => pass,
                Err(wait) => {
                    return Err(Error::Retryable {
                        context: format!("{ctx}: throttled, next request allowed in {}s", wait.as_secs()),
                        after: Some(wait),
                    });
                }
            };
            let mut request = build().await?.timeout(self.timeout);
            if let Some(ua) = &self.user_agent {
                request = request.header(USER_AGENT, ua.clone());
            }
            calls.add(1);
            let outcome = self.attempt(request, body).await;
            calls.answered(outcome.as_ref().ok().map(|r| r.status.as_u16()));
            // (what happened, the source's Retry-After, whether the gate already waits for it).
            let (failure, after, gated) = match outcome {
                Err(detail) => (format!("{ctx}: {detail}"), None, false),
                Ok(reply) => match classify(&reply) {
                    Verdict::Accept => {
                        self.gate.succeeded(&pass).await;
                        return Ok(reply);
                    }
                    Verdict::Throttle { detail, after } => {
                        calls.throttled();
                        self.gate.throttled(&pass, after).await;
                        (format!("{ctx}: {detail}"), after, true)
                    }
                    Verdict::Retry { detail, after } => (format!("{ctx}: {detail}"), after, false),
                    Verdict::Refuse { detail } => {
                        self.gate.succeeded(&pass).await;
                        return Err(Error::Permanent {
                            context: format!("{ctx}: {detail}"),
                        });
                    }
                },
            };
            if attempt >= self.max_retries {
                let context = if self.detailed_errors {
                    format!("{failure} (after {} attempts)", attempt + 1)
                } else {
                    failure
                };
                return Err(Error::Retryable { context, after });
            }
            attempt += 1;
            // A throttle's wait is the gate's, taken at the top of the loop by every process.
            let wait = match after {
                _ if gated => Duration::ZERO,
                Some(a) => a.min(RETRY_AFTER_CAP),
                None => gate::backoff(attempt, policy.backoff_start, policy.backoff_cap, rand::random::<f64>()),
            };
            tracing::debug!(source = %self.source, attempt, ?wait, "{failure}; retrying");
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One attempt: the reply, or what went wrong on the way (network, 2xx body).
    async fn attempt(&self, request: RequestBuilder, body: Body) -> Result<Reply, String> {
        let mut resp = request.send().await.map_err(|e| self.describe(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let url = resp.url().clone();
        let (read, limit) = match body {
            Body::Always => (true, None),
            Body::OnSuccess => (status.is_success(), None),
            Body::OnSuccessUpTo(limit) => (status.is_success(), Some(limit)),
            Body::Never => (false, None),
        };
        let mut truncated = false;
        let bytes = match limit {
            _ if !read => Vec::new(),
            Some(limit) => {
                let mut buf = Vec::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) if (buf.len() + chunk.len()) as u64 > limit => {
                            truncated = true;
                            break;
                        }
                        Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                        Ok(None) => break,
                        Err(e) => return Err(format!("reading body: {}", self.describe(&e))),
                    }
                }
                buf
            }
            None => match resp.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) if status.is_success() => return Err(format!("reading body: {}", self.describe(&e))),
                // An unreadable error body loses only the reason, not the status.
                Err(_) => Vec::new(),
            },
        };
        Ok(Reply {
            status,
            date: clock::header_date(&headers, DATE),
            headers,
            body: bytes,
            truncated,
            url,
        })
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        // reqwest quotes the request's URL, credentials included.
        crate::redact::text(&if self.detailed_errors {
            with_causes(e)
        } else {
            e.to_string()
        })
    }
}

/// The usual transient statuses: 429 and every 5xx.
pub fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Statuses that mean the source is shedding load, not that this request
/// failed: 429 Too Many Requests and 503 Service Unavailable.
pub fn is_throttle(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

/// The verdict for a transient status ([`is_transient`]): a [`Verdict::Throttle`]
/// for 429 and 503, a [`Verdict::Retry`] otherwise, each with the reply's `Retry-After`.
pub fn transient_verdict(reply: &Reply, detail: String) -> Verdict {
    let after = retry_after(&reply.headers);
    if is_throttle(reply.status) {
        Verdict::Throttle { detail, after }
    } else {
        Verdict::Retry { detail, after }
    }
}

/// `Retry-After` as delta-seconds, or as an HTTP-date (RFC 9110 §10.2.3)
/// measured against the response's own `Date` (the source's clock; ours only
/// when it sent none). A date in the past means "now"; anything else
/// (negative or fractional seconds, garbage) is no hint at all.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = clock::parse_http_date(text)?;
    let now = clock::header_date(headers, DATE).unwrap_or_else(Utc::now);
    (at - now).to_std().ok().or(Some(Duration::ZERO))
}

/// An error with its causes: reqwest's own message ("error sending request") hides
/// the useful part ("Connection refused") in its source chain.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Router;
    use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;

    /// Serves `/x`: the first `failures` requests get `status` (with
    /// `Retry-After: 0`), the rest 200 with a `Date` and body `ok`.
    async fn serve(failures: u64, status: u16) -> (String, Arc<AtomicU64>) {
        let hits = Arc::new(AtomicU64::new(0));
        let h = Arc::clone(&hits);
        let app = Router::new().route(
            "/x",
            get(move || {
                let h = Arc::clone(&h);
                async move {
                    let n = h.fetch_add(1, Ordering::SeqCst);
                    let mut headers = AxHeaders::new();
                    headers.insert("date", "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("hv"));
                    if n < failures {
                        headers.insert("retry-after", "0".parse().expect("hv"));
                        let code = AxStatus::from_u16(status).expect("status");
                        (code, headers, "{\"why\":\"busy\"}").into_response()
                    } else {
                        (AxStatus::OK, headers, "ok").into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/x"), hits)
    }

    fn client(max_retries: u32) -> RetryingClient {
        RetryingClient::new(
            reqwest::Client::new(),
            SourceId::new("src").expect("id"),
            Duration::from_secs(5),
            max_retries,
        )
    }

    /// A plain `GET url` through `c`, classified by [`standard`].
    async fn get_via(c: &RetryingClient, url: &str, body: Body, calls: &ApiCalls) -> Result<Reply, Error> {
        let http = c.http().clone();
        c.send(
            "GET /x",
            || std::future::ready(Ok(http.get(url))),
            body,
            standard,
            calls,
        )
        .await
    }

    fn standard(reply: &Reply) -> Verdict {
        if is_transient(reply.status) {
            transient_verdict(reply, format!("HTTP {}: {}", reply.status.as_u16(), reply.text()))
        } else if reply.status.is_success() {
            Verdict::Accept
        } else {
            Verdict::Refuse {
                detail: format!("HTTP {}", reply.status.as_u16()),
            }
        }
    }

    /// Transient failures are retried, every attempt counted, and the accepted
    /// reply carries its body and the parsed `Date`.
    #[tokio::test]
    async fn retries_until_accepted() {
        let (url, hits) = serve(2, 503).await;
        let calls = ApiCalls::default();
        let reply = get_via(&client(3), &url, Body::Always, &calls)
            .await
            .expect("retried to success");
        assert_eq!((calls.get(), hits.load(Ordering::SeqCst)), (3, 3));
        assert_eq!(reply.text(), "ok");
        assert_eq!(reply.date, clock::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"));
    }

    /// Exhausted retries are Retryable with the last failure and the Retry-After;
    /// detailed errors add the attempt count; a refusal is Permanent at once.
    #[tokio::test]
    async fn exhausted_and_refused() {
        let (url, _) = serve(10, 429).await;
        let calls = ApiCalls::default();
        let c = client(1);
        match get_via(&c, &url, Body::Always, &calls).await {
            Err(Error::Retryable { context, after }) => {
                assert_eq!(context, "source src: GET /x: HTTP 429: {\"why\":\"busy\"}");
                assert_eq!(after, Some(Duration::ZERO));
            }
            other => panic!("expected Retryable, got {other:?}"),
        }
        assert_eq!(calls.get(), 2);
        let detailed = client(0).with_detailed_errors();
        match get_via(&detailed, &url, Body::Never, &calls).await {
            Err(Error::Retryable { context, .. }) => {
                assert_eq!(context, "source src: GET /x: HTTP 429:  (after 1 attempts)");
            }
            other => panic!("expected Retryable, got {other:?}"),
        }

        let (url, hits) = serve(10, 401).await;
        match get_via(&c, &url, Body::Always, &calls).await {
            Err(Error::Permanent { context }) => assert_eq!(context, "source src: GET /x: HTTP 401"),
            other => panic!("expected Permanent, got {other:?}"),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "no retry after a refusal");
    }

    /// A factory error ends the call before anything is counted; a network
    /// failure is retryable and, with detailed errors, names its cause.
    #[tokio::test]
    async fn factory_and_network_errors() {
        let c = client(0).with_detailed_errors();
        let calls = ApiCalls::default();
        let err = c
            .send(
                "GET /x",
                || std::future::ready(Err(c.permanent("no token"))),
                Body::Always,
                standard,
                &calls,
            )
            .await
            .expect_err("factory error");
        assert_eq!(err.to_string(), "source src: no token");
        assert_eq!(calls.get(), 0);

        // A port nothing listens on: bind one, then drop the listener.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let err = get_via(&c, &format!("http://{addr}/x"), Body::Always, &calls)
            .await
            .expect_err("refused");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("(after 1 attempts)"), "{err}");
        assert_eq!(calls.get(), 1);
    }

    /// Retry-After in seconds or as an HTTP-date against the response's own Date.
    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, " 30 ".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:29:00 GMT".parse().expect("hv"));
        h.insert(DATE, "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
        h.insert(DATE, "Wed, 21 Oct 2015 08:00:00 GMT".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a past date means now");
        h.insert(RETRY_AFTER, "Wednesday, 21-Oct-15 07:28:30 GMT".parse().expect("hv"));
        h.insert(DATE, "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("hv"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)), "obsolete RFC 850 date");
        for garbage in ["soon", "-5", "1.5", "", "30s", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            h.insert(RETRY_AFTER, garbage.parse().expect("hv"));
            assert_eq!(retry_after(&h), None, "{garbage:?}");
        }
    }
}
