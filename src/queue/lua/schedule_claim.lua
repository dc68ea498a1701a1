-- Claims the scheduled sources that are due, by Redis' clock (one clock for
-- every coordinator replica, whatever theirs say), and moves each to its next
-- due time: the next instant after now on its own grid (phase + k * period),
-- so runs stay spread over the period and a schedule that fell behind (every
-- coordinator down) skips what it missed instead of catching up in a burst.
-- A claimed source's run is the caller's to enqueue: each due time is
-- claimed by exactly one caller.
-- KEYS[1]: tm:{schedule}:due; KEYS[2]: tm:{schedule}:every; KEYS[3]: tm:{schedule}:phase
-- ARGV[1]: most sources to claim
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, source in ipairs(due) do
  local every = tonumber(redis.call('HGET', KEYS[2], source))
  if every and every > 0 then
    local phase = tonumber(redis.call('HGET', KEYS[3], source)) or 0
    local next = now - ((now - phase) % every) + every
    redis.call('ZADD', KEYS[1], next, source)
  else
    redis.call('ZREM', KEYS[1], source)
  end
end
return due
