-- Registers scheduled sources: their period and phase, and for those the
-- schedule does not hold yet, a due time on their grid (phase + k * period,
-- the next after now by Redis' clock); their first run is the caller's to
-- enqueue at once, under a lease (KEYS[4]) as a claimed due time is (see
-- schedule_claim.lua). A source whose due time lies more than one period ahead
-- (its period was shortened) is brought back onto its grid.
-- KEYS[1]: tm:{schedule}:due (sorted set: source -> due time, ms)
-- KEYS[2]: tm:{schedule}:every (hash: source -> period, ms)
-- KEYS[3]: tm:{schedule}:phase (hash: source -> phase, ms: its runs fall on
--          phase + k * period, so the sources spread over the period)
-- KEYS[4]: tm:{schedule}:claimed (sorted set: source -> lease end, ms)
-- KEYS[5]: tm:{schedule}:registered (hash: source -> last registration, ms)
-- ARGV[1]: lease, ms; then source, period ms, phase ms (in [0, period)), repeated
-- Returns the sources added (their first run is the caller's to enqueue).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_end = now + tonumber(ARGV[1])
local added = {}
for i = 2, #ARGV, 3 do
  local source, every = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[2], source, every)
  redis.call('HSET', KEYS[3], source, ARGV[i + 2])
  redis.call('HSET', KEYS[5], source, now)
  local phase = tonumber(ARGV[i + 2])
  local next = now - ((now - phase) % every) + every
  local due = redis.call('ZSCORE', KEYS[1], source)
  if not due then
    redis.call('ZADD', KEYS[1], next, source)
    redis.call('ZADD', KEYS[4], lease_end, source)
    added[#added + 1] = source
  elseif tonumber(due) > now + every then
    redis.call('ZADD', KEYS[1], next, source)
  end
end
return added
