-- Rate gate: a request admitted after the last throttle succeeded; the backoff level resets.
-- KEYS[1]: the source's gate hash (see acquire.lua)
-- ARGV[1]: when the request was admitted (now_us from acquire.lua)
-- Returns 1 if the level was reset, 0 if the success predates the last throttle.
local at = tonumber(redis.call('HGET', KEYS[1], 'at')) or 0
if tonumber(ARGV[1]) < at then
  return 0
end
redis.call('HDEL', KEYS[1], 'level')
return 1
