//! The dead-letter stream: entries that cannot be processed, kept with the reason.
//!
//! Moving is XADD to the dead-letter stream, then XACK on the origin: if we die
//! between the two, the entry is dead-lettered twice, never lost.

use deadpool_redis::Pool;

use super::Error;
use super::streams::{self, Entry};

/// Copies `entry` to `dead_letters` with `reason`, then acks it on `origin`.
pub async fn dead_letter(
    pool: &Pool,
    dead_letters: &str,
    origin: &str,
    group: &str,
    entry: &Entry,
    reason: &str,
    deliveries: u64,
) -> Result<(), Error> {
    let deliveries = deliveries.to_string();
    let mut fields: Vec<(&str, &[u8])> = vec![
        ("origin", origin.as_bytes()),
        ("origin_id", entry.id.as_bytes()),
        ("reason", reason.as_bytes()),
        ("deliveries", deliveries.as_bytes()),
    ];
    let mut original: Vec<(&String, &Vec<u8>)> = entry.fields.iter().collect();
    original.sort();
    let renamed: Vec<(String, &[u8])> = original
        .into_iter()
        .map(|(k, v)| (format!("orig.{k}"), v.as_slice()))
        .collect();
    fields.extend(renamed.iter().map(|(k, v)| (k.as_str(), *v)));
    streams::add(pool, dead_letters, &fields).await?;
    streams::ack(pool, origin, group, &[entry.id.as_str()]).await
}
