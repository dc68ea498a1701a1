//! Redis Streams primitives used by both streams (requests and jobs).
//!
//! Only Redis 7.0 commands: XADD, XGROUP CREATE MKSTREAM, XREADGROUP, XACK,
//! XPENDING with IDLE, XCLAIM, XINFO GROUPS, XTRIM MINID. Nothing here knows
//! what an entry means.
//!
//! Trimming ([`trim_acked`]) removes only entries that every consumer group has
//! acknowledged: never a pending entry (it may still be claimed from a dead
//! consumer) and never an undelivered one.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use crate::db::Pool;
use deadpool_redis::redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use deadpool_redis::redis::{self, Script, Value};

use super::{Error, RedisContext};

static TRIM_ACKED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/trim_acked.lua")));

/// One stream entry: its id and raw fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Stream entry id (`1700000000000-0`).
    pub id: String,
    /// Field name -> raw bytes.
    pub fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    /// A field as UTF-8 text, if present and valid.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn from_stream_id(s: StreamId) -> Self {
        let fields = s
            .map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::BulkString(b) => Some((k, b)),
                Value::SimpleString(s) => Some((k, s.into_bytes())),
                _ => None,
            })
            .collect();
        Entry { id: s.id, fields }
    }
}

/// How long ago the entry `id` was added: its id's milliseconds are Redis's
/// clock at XADD, compared with ours (a clock behind Redis's reads as 0).
/// `None` for an id that is not `<ms>-<seq>`.
pub fn age(id: &str) -> Option<Duration> {
    let ms: u64 = id.split_once('-')?.0.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(now.saturating_sub(Duration::from_millis(ms)))
}

/// Up to `count` entries of `stream`, newest first (XREVRANGE).
pub async fn newest(pool: &Pool, stream: &str, count: usize) -> Result<Vec<Entry>, Error> {
    let mut conn = pool.get().await?;
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await
        .context(|| format!("XREVRANGE {stream}"))?;
    Ok(reply.ids.into_iter().map(Entry::from_stream_id).collect())
}

/// The entry `id` of `stream`, if it is there (XRANGE id id).
pub async fn entry(pool: &Pool, stream: &str, id: &str) -> Result<Option<Entry>, Error> {
    let mut conn = pool.get().await?;
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(id)
        .arg(id)
        .query_async(&mut conn)
        .await
        .context(|| format!("XRANGE {stream} {id}"))?;
    Ok(reply.ids.into_iter().next().map(Entry::from_stream_id))
}

/// Deletes entries `ids` of `stream` (XDEL); returns how many there were.
pub async fn delete(pool: &Pool, stream: &str, ids: &[&str]) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut conn = pool.get().await?;
    redis::cmd("XDEL")
        .arg(stream)
        .arg(ids)
        .query_async(&mut conn)
        .await
        .context(|| format!("XDEL {stream}"))
}

/// Removes every entry of `stream` in one command (XTRIM MAXLEN 0), however
/// many there are, without reading them; returns how many went.
pub async fn clear(pool: &Pool, stream: &str) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .context(|| format!("XTRIM {stream} MAXLEN 0"))
}

/// An entry delivered but not yet acked, from XPENDING.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Entry id.
    pub id: String,
    /// Consumer holding it.
    pub consumer: String,
    /// Time since its last delivery.
    pub idle: Duration,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// Creates `group` on `stream` (and the stream), reading from the beginning; an existing group is fine.
pub async fn ensure_group(pool: &Pool, stream: &str, group: &str) -> Result<(), Error> {
    let mut conn = pool.get().await?;
    let r: Result<(), _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e).context(|| format!("XGROUP CREATE {stream} {group}")),
    }
}

/// Appends an entry; returns its id.
pub async fn add(pool: &Pool, stream: &str, fields: &[(&str, &[u8])]) -> Result<String, Error> {
    let mut conn = pool.get().await?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(&mut conn).await.context(|| format!("XADD {stream}"))
}

/// Reads up to `count` never-delivered entries for `consumer`, blocking up to
/// `block`; a zero `block` does not block at all (Redis' `BLOCK 0` would wait
/// forever, which nothing here wants).
pub async fn read_new(
    pool: &Pool,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
) -> Result<Vec<Entry>, Error> {
    let mut conn = pool.get().await?;
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count);
    if !block.is_zero() {
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    let reply: Option<StreamReadReply> = cmd
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .context(|| format!("XREADGROUP {stream} {group}"))?;
    Ok(reply
        .map(|r| {
            r.keys
                .into_iter()
                .flat_map(|k| k.ids)
                .map(Entry::from_stream_id)
                .collect()
        })
        .unwrap_or_default())
}

/// Acknowledges entries.
pub async fn ack(pool: &Pool, stream: &str, group: &str, ids: &[&str]) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut conn = pool.get().await?;
    let _: i64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(&mut conn)
        .await
        .context(|| format!("XACK {stream} {group}"))?;
    Ok(())
}

/// Entries delivered at least `min_idle` ago and still unacked (oldest first).
pub async fn pending_idle(
    pool: &Pool,
    stream: &str,
    group: &str,
    min_idle: Duration,
    count: usize,
) -> Result<Vec<Pending>, Error> {
    let mut conn = pool.get().await?;
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("IDLE")
        .arg(min_idle.as_millis() as u64)
        .arg("-")
        .arg("+")
        .arg(count)
        .query_async(&mut conn)
        .await
        .context(|| format!("XPENDING {stream} {group}"))?;
    Ok(rows
        .into_iter()
        .map(|(id, consumer, idle_ms, deliveries)| Pending {
            id,
            consumer,
            idle: Duration::from_millis(idle_ms),
            deliveries,
        })
        .collect())
}

/// Takes over entries idle for at least `min_idle` (the condition is re-checked by
/// Redis, so two claimers never both get one). Returns those actually claimed;
/// entries trimmed from the stream meanwhile are not returned.
pub async fn claim(
    pool: &Pool,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    ids: &[&str],
) -> Result<Vec<Entry>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = pool.get().await?;
    let reply: StreamRangeReply = redis::cmd("XCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(ids)
        .query_async(&mut conn)
        .await
        .context(|| format!("XCLAIM {stream} {group}"))?;
    Ok(reply.ids.into_iter().map(Entry::from_stream_id).collect())
}

/// Resets an entry's idle time without taking it from its consumer: a
/// heartbeat for work that legitimately takes longer than the idle timeout.
pub async fn touch(pool: &Pool, stream: &str, group: &str, consumer: &str, id: &str) -> Result<(), Error> {
    let mut conn = pool.get().await?;
    let _: Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(id)
        .arg("JUSTID")
        .query_async(&mut conn)
        .await
        .context(|| format!("XCLAIM {stream} {id} JUSTID"))?;
    Ok(())
}

/// Removes entries every consumer group of `stream` has acknowledged (pending
/// and undelivered ones stay; see `lua/trim_acked.lua`); returns how many went.
/// Approximate (`MINID ~`): up to one macro node (100 entries) of acked
/// entries may stay until the next trim. A stream without a group is left alone.
pub async fn trim_acked(pool: &Pool, stream: &str) -> Result<u64, Error> {
    let mut conn = pool.get().await?;
    TRIM_ACKED
        .key(stream)
        .invoke_async(&mut conn)
        .await
        .context(|| format!("trimming acked entries of {stream}"))
}

/// Stream length and the group's pending count and lag (XINFO GROUPS, Redis 7.0).
pub async fn group_info(pool: &Pool, stream: &str, group: &str) -> Result<GroupInfo, Error> {
    let mut conn = pool.get().await?;
    let len: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .context(|| format!("XLEN {stream}"))?;
    let groups: Result<Vec<HashMap<String, Value>>, _> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await;
    let mut info = GroupInfo {
        length: len,
        ..GroupInfo::default()
    };
    // A missing stream is simply empty.
    for g in groups.unwrap_or_default() {
        if matches!(g.get("name"), Some(Value::BulkString(n)) if n.as_slice() == group.as_bytes()) {
            info.pending = int_of(g.get("pending"));
            info.lag = g.get("lag").and_then(|v| match v {
                Value::Int(i) => Some(*i as u64),
                _ => None,
            });
        }
    }
    Ok(info)
}

fn int_of(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(i)) => *i as u64,
        _ => 0,
    }
}

/// What `group_info` reports.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GroupInfo {
    /// Entries in the stream.
    pub length: u64,
    /// Delivered, not yet acked.
    pub pending: u64,
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: Option<u64>,
}
