-- Trims the dead-letter stream by policy: dead letters are for operators and
-- are never acked, so they go by count and by age, exactly (the stream is small
-- and written rarely, so exact trimming costs little and keeps the promise).
-- Age is measured on the Redis clock, the clock that stamped the entry ids.
-- KEYS[1]: tm:dlq
-- ARGV[1]: most entries kept; ARGV[2]: oldest kept, in ms of age
-- Returns the number of entries removed.
local removed = redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', ARGV[1])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local cutoff = now_ms - tonumber(ARGV[2])
if cutoff > 0 then
  removed = removed + redis.call('XTRIM', KEYS[1], 'MINID', '=', string.format('%d-0', cutoff))
end
return removed
