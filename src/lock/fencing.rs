//! Fencing: how storage refuses writes from a lock holder that is no longer current.
//!
//! Storage (the state store here, each sink on its own) remembers the highest
//! token it has seen per source. A write with a lower token is refused with
//! [`StaleFence`]; a write with a higher one raises the remembered value first.
//! In Redis this check-and-write is one Lua script, so no write can slip in
//! between the check and the write.

use deadpool_redis::redis::Script;

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

/// The fencing preamble (`lua/check_and_raise.lua`): KEYS[1] is the fence key,
/// ARGV[1] the token. It returns `{0, current}` from the script when the token
/// is stale; otherwise it raises the fence and falls through to the write that follows.
const LUA_CHECK_AND_RAISE: &str = include_str!("lua/check_and_raise.lua");

/// A fenced script: the preamble, then `write`, which sees the fence as `KEYS[1]`
/// and the token as `ARGV[1]` and must end with `return {1, value}`. The one place
/// where fenced scripts are composed, so no write can forget the check.
pub fn fenced_script(write: &str) -> Script {
    Script::new(&format!("{LUA_CHECK_AND_RAISE}\n{write}"))
}

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
