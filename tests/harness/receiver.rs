//! A webhook receiver for the webhook sink's tests: a real HTTP server (axum,
//! its own thread and runtime) on a free port, doing what the README asks of
//! a receiver: verify the signature and timestamp, apply each idempotency
//! key once, refuse (409) an event whose token is below the highest seen for
//! its source. Faults are scripted: an answer's status, an answer that comes
//! after the sender gave up (the event applied all the same, so the retry is a
//! replay), a document it refuses, and the server stopped and started again
//! on its port (connection refused meanwhile).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

use tidemark::sinks::SinkDocument;

/// What the receiver does with the next request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status and body, applying nothing.
    Status(u16, &'static str),
    /// Apply the event, then answer 200 only after this long.
    Late(Duration),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `Idempotency-Key`.
    pub key: String,
    /// `event` of the body.
    pub event: String,
    /// The document's id (upserts and deletions).
    pub id: Option<String>,
    /// The document's version (upserts).
    pub version: Option<String>,
    /// Whether the signature matched the body under the shared secret.
    pub signed: bool,
    /// The status answered.
    pub status: u16,
}

/// What the receiver holds and saw.
#[derive(Default)]
pub struct Received {
    /// (source, id) -> the `document` object of its last upsert.
    pub docs: HashMap<(String, String), Value>,
    /// Highest token seen per source.
    pub fences: HashMap<String, u64>,
    /// Every request, in arrival order.
    pub deliveries: Vec<Delivery>,
    applied: std::collections::HashSet<String>,
    faults: VecDeque<Fault>,
    /// Upserts of this id are refused with this status and body.
    refuse: Option<(String, u16, String)>,
}

/// A running receiver.
pub struct Receiver {
    pub port: u16,
    secret: Vec<u8>,
    state: Arc<Mutex<Received>>,
    server: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Receiver {
    /// Starts a receiver checking signatures with `secret`.
    pub fn start(secret: &[u8]) -> Self {
        let mut r = Receiver {
            port: super::redis_server::free_port(),
            secret: secret.to_vec(),
            state: Arc::new(Mutex::new(Received::default())),
            server: None,
        };
        r.serve();
        r
    }

    /// `http://127.0.0.1:PORT/events`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    fn serve(&mut self) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("bind the receiver's port");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = (Arc::clone(&self.state), self.secret.clone());
        let thread = super::serve_on_own_thread(listener, move |listener| async move {
            let app = axum::Router::new()
                .route("/events", post(receive))
                .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
                .with_state(shared);
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, thread));
    }

    /// Stops listening (senders get connection refused) until [`Receiver::resume`].
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.server.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    /// Listens again on the same port, with what it held.
    pub fn resume(&mut self) {
        if self.server.is_none() {
            self.serve();
        }
    }

    /// Queues faults for the next requests, in order.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().expect("receiver state").faults.extend(faults);
    }

    /// Refuses every upsert of `id` with `status` and `body` (until [`Receiver::accept_all`]).
    pub fn refuse(&self, id: &str, status: u16, body: &str) {
        self.state.lock().expect("receiver state").refuse = Some((id.to_owned(), status, body.to_owned()));
    }

    /// Stops refusing.
    pub fn accept_all(&self) {
        self.state.lock().expect("receiver state").refuse = None;
    }

    /// Runs `f` over what the receiver holds and saw.
    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.state.lock().expect("receiver state"))
    }

    /// A document as the receiver holds it.
    pub fn document(&self, source: &str, id: &str) -> Option<SinkDocument> {
        self.with(|r| {
            r.docs
                .get(&(source.to_owned(), id.to_owned()))
                .map(|d| serde_json::from_value(d.clone()).expect("a document the contract describes"))
        })
    }

    /// id -> version of every document of `source` the receiver holds.
    pub fn versions(&self, source: &str) -> HashMap<String, String> {
        self.with(|r| {
            r.docs
                .iter()
                .filter(|((s, _), _)| s == source)
                .map(|((_, id), d)| (id.clone(), d["version"].as_str().unwrap_or_default().to_owned()))
                .collect()
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn receive(
    State((state, secret)): State<(Arc<Mutex<Received>>, Vec<u8>)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let timestamp: i64 = header(&headers, "x-tidemark-timestamp").parse().unwrap_or(0);
    let fresh = (chrono::Utc::now().timestamp() - timestamp).abs() <= 300;
    let signed =
        fresh && header(&headers, "x-tidemark-signature") == tidemark::signing::sign(&secret, timestamp, &body);
    let key = header(&headers, "idempotency-key").to_owned();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let kind = event["event"].as_str().unwrap_or_default().to_owned();
    let source = event["source"].as_str().unwrap_or_default().to_owned();
    let token = event["token"].as_u64().unwrap_or(0);
    let id = match kind.as_str() {
        "upsert" => event["document"]["id"].as_str().map(str::to_owned),
        "delete" => event["id"].as_str().map(str::to_owned),
        _ => None,
    };
    let (status, answer, late) = {
        let mut r = state.lock().expect("receiver state");
        let fault = r.faults.pop_front();
        let refused = r
            .refuse
            .clone()
            .filter(|(refused, _, _)| kind == "upsert" && id.as_deref() == Some(refused.as_str()));
        let (status, answer, late) = if !signed {
            (401, "bad signature".to_owned(), None)
        } else if let Some(Fault::Status(status, answer)) = fault {
            (status, answer.to_owned(), None)
        } else if let Some((_, status, answer)) = refused {
            (status, answer, None)
        } else if token < r.fences.get(&source).copied().unwrap_or(0) {
            (409, "stale token".to_owned(), None)
        } else {
            r.fences.insert(source.clone(), token);
            if r.applied.insert(key.clone()) {
                match (kind.as_str(), &id) {
                    ("upsert", Some(id)) => {
                        r.docs.insert((source.clone(), id.clone()), event["document"].clone());
                    }
                    ("delete", Some(id)) => {
                        r.docs.remove(&(source.clone(), id.clone()));
                    }
                    _ => {}
                }
            }
            let late = match fault {
                Some(Fault::Late(d)) => Some(d),
                _ => None,
            };
            (200, "ok".to_owned(), late)
        };
        r.deliveries.push(Delivery {
            key,
            event: kind,
            version: event["document"]["version"].as_str().map(str::to_owned),
            id,
            signed,
            status,
        });
        (status, answer, late)
    };
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer,
    )
}
