//! HMAC-SHA256 signatures, the one scheme tidemark uses both ways: it checks
//! inbound webhooks with it (`api::webhooks`) and signs what the webhook sink
//! delivers (`sinks::webhook`), so a receiver verifies tidemark exactly as
//! tidemark verifies a sender.
//!
//! `X-Tidemark-Timestamp: <unix seconds>` and `X-Tidemark-Signature:
//! sha256=<hex>`, the HMAC-SHA256 of `"{timestamp}.{raw body}"` under the
//! shared secret; a receiver refuses a timestamp far from its clock (replays).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// `sha256=<hex>` of HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Signs the body alone, as Atlassian and GitHub webhooks do (`X-Hub-Signature`).
pub fn sign_body(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
