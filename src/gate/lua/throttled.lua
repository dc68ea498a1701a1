-- Rate gate: the source throttled a request; raise the fleet's not-before (never lower it).
-- KEYS[1]: the source's gate hash (see acquire.lua)
-- ARGV[1]: when the throttled request was admitted (now_us from acquire.lua; 0 if unknown)
-- ARGV[2]: the source's Retry-After in microseconds, or -1 when it sent none
-- ARGV[3]: backoff start in microseconds
-- ARGV[4]: backoff cap in microseconds
-- ARGV[5]: jitter fraction in [0, 1), drawn by the caller
-- ARGV[6]: idle expiry in microseconds
-- Returns {wait_us, level}: how long from now until the not-before, and the throttle level.
-- A request admitted before the last level raise belongs to the same episode (it was in
-- flight when another worker's throttle was recorded): it does not raise the level again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f = redis.call('HMGET', KEYS[1], 'nb', 'level', 'at', 'tat')
local nb = tonumber(f[1]) or 0
local level = tonumber(f[2]) or 0
local at = tonumber(f[3]) or 0
local tat = tonumber(f[4]) or 0
local sent = tonumber(ARGV[1])
local retry_after = tonumber(ARGV[2])
local new_episode = sent >= at or level == 0
if new_episode then
  level = level + 1
  at = now
end
local wait = -1
if retry_after >= 0 then
  wait = retry_after
elseif new_episode then
  -- Truncated exponential backoff with jitter: start * 2^(level-1) + jitter * start, capped.
  local start = tonumber(ARGV[3])
  wait = math.min(tonumber(ARGV[4]), start * 2 ^ (level - 1) + tonumber(ARGV[5]) * start)
end
if wait >= 0 and now + wait > nb then
  nb = now + math.floor(wait)
end
redis.call('HSET', KEYS[1], 'nb', nb, 'level', level, 'at', at)
local keep = math.max(nb, tat, now) - now + tonumber(ARGV[6])
redis.call('PEXPIRE', KEYS[1], math.ceil(keep / 1000))
return {math.max(nb - now, 0), level}
