//! Fencing: how storage refuses writes from a lock holder that is no longer current.
//!
//! Storage (the state store here, each sink on its own) remembers the highest
//! token it has seen per source. A write with a lower token is refused with
//! [`StaleFence`]; a write with a higher one raises the remembered value first.
//! In Redis this check-and-write is one Lua script, so no write can slip in
//! between the check and the write.

use crate::types::FencingToken;

/// A write was refused because a newer lock holder exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {ours}: storage has already seen {current}")]
pub struct StaleFence {
    /// The token the write carried.
    pub ours: FencingToken,
    /// The highest token storage has seen.
    pub current: FencingToken,
}

/// Lua prelude for fenced scripts: KEYS[1] is the fence key, ARGV[1] the token.
/// Returns `{0, current}` from the script when the token is stale; otherwise
/// raises the fence and falls through to the write that follows.
pub const LUA_CHECK_AND_RAISE: &str = r"
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < fence then return {0, fence} end
if token > fence then redis.call('SET', KEYS[1], ARGV[1]) end
";

/// Interprets a fenced script's `{ok, value}` reply.
pub fn check_reply(ours: FencingToken, reply: (i64, i64)) -> Result<i64, StaleFence> {
    match reply {
        (0, current) => Err(StaleFence {
            ours,
            current: FencingToken(current.max(0) as u64),
        }),
        (_, value) => Ok(value),
    }
}
