-- Claims the scheduled sources that are due, by Redis' clock (one clock for
-- every coordinator replica, whatever theirs say), and moves each to its next
-- due time: the next instant after now on its own grid (phase + k * period),
-- so runs stay spread over the period and a schedule that fell behind (every
-- coordinator down) skips what it missed instead of catching up in a burst.
-- A claimed source's run is the caller's to enqueue: each due time is
-- claimed by exactly one caller, under a lease (KEYS[4]) the caller ends once
-- the request is enqueued. A lease that ran out (its caller died or lost Redis
-- between claim and enqueue) is claimed again first, so no due time is lost.
-- KEYS[1]: tm:{schedule}:due; KEYS[2]: tm:{schedule}:every; KEYS[3]: tm:{schedule}:phase
-- KEYS[4]: tm:{schedule}:claimed (sorted set: source -> lease end, ms)
-- KEYS[5]: tm:{schedule}:registered (hash: source -> last registration, ms)
-- A due source no coordinator has registered for ARGV[3] ms has left every
-- configuration: it is forgotten (every key above) instead of claimed. One
-- with no registration time (kept by an earlier version) gets one now, so it
-- is forgotten only after ARGV[3] more without a registration.
-- ARGV[1]: most sources to claim; ARGV[2]: lease, ms; ARGV[3]: forget after, ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local lease_end = now + tonumber(ARGV[2])
local out = {}
for _, source in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZADD', KEYS[4], lease_end, source)
  out[#out + 1] = source
end
if #out < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit - #out)
  for _, source in ipairs(due) do
    local registered = tonumber(redis.call('HGET', KEYS[5], source))
    if not registered then
      redis.call('HSET', KEYS[5], source, now)
      registered = now
    end
    if now - registered > tonumber(ARGV[3]) then
      redis.call('ZREM', KEYS[1], source)
      redis.call('HDEL', KEYS[2], source)
      redis.call('HDEL', KEYS[3], source)
      redis.call('HDEL', KEYS[5], source)
    else
      local every = tonumber(redis.call('HGET', KEYS[2], source))
      if every and every > 0 then
        local phase = tonumber(redis.call('HGET', KEYS[3], source)) or 0
        local next = now - ((now - phase) % every) + every
        redis.call('ZADD', KEYS[1], next, source)
      else
        redis.call('ZREM', KEYS[1], source)
      end
      redis.call('ZADD', KEYS[4], lease_end, source)
      out[#out + 1] = source
    end
  end
end
return out
