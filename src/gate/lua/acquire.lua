-- Rate gate: may a request to this source go now? (One script per request, fleet-wide.)
-- KEYS[1]: the source's gate hash (fields nb = not-before, level, at = last level raise,
--          tat = GCRA theoretical arrival time; all microseconds of Redis's clock)
-- ARGV[1]: GCRA emission interval in microseconds (1e6 / requests_per_second; 0 = no budget)
-- ARGV[2]: burst (requests that may go at once; at least 1)
-- ARGV[3]: idle expiry in microseconds (how long the hash outlives its last deadline)
-- Returns {wait_us, level, now_us}: wait_us = 0 means go (and the budget slot is spent);
-- otherwise ask again after wait_us. Redis's clock is the fleet's one clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f = redis.call('HMGET', KEYS[1], 'nb', 'level', 'tat')
local nb = tonumber(f[1]) or 0
local level = tonumber(f[2]) or 0
if nb > now then
  return {nb - now, level, now}
end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tat = tonumber(f[3]) or 0
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * tonumber(ARGV[2])
  if allow_at > now then
    return {allow_at - now, level, now}
  end
  redis.call('HSET', KEYS[1], 'tat', new_tat)
  local keep = math.max(new_tat, nb) - now + tonumber(ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(keep / 1000))
end
return {0, level, now}
