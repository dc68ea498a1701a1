-- Writes a batch of planned changes of one run (state/plan.rs). Not fenced:
-- the keys are the run's own, read by nobody else.
-- KEYS[1] plan hash (id -> entry, '' for an id planned and then dropped)
-- KEYS[2] order list (each id of the hash once, first planned first)
-- KEYS[3] planned titles hash (id -> title the run expects it to have)
-- KEYS[4] batches applied: "N:added" (N counts from 1)
-- ARGV[1] TTL in seconds; ARGV[2] this batch's number N; then groups of
-- four: op, id, entry, title
--   op 'P' puts the entry; 'C' puts it only where the id has no entry or a dropped one;
--   'S' drops the id's entry, if it has one. title: '' = no planned title, else 't' .. title.
-- Returns {1, added, listed} once applied, {2, added, listed} for a batch
-- applied before (a retry after an unknown outcome: nothing is written
-- again), {0, batches applied, 0} if batches before this one are missing
-- (Redis lost writes). added: how many 'C' puts took effect.
local n = tonumber(ARGV[2])
local done = redis.call('GET', KEYS[4])
local applied, before = 0, 0
if done then
  local sep = string.find(done, ':', 1, true)
  applied = tonumber(string.sub(done, 1, sep - 1))
  before = tonumber(string.sub(done, sep + 1))
end
if applied >= n then
  -- Applied before. Only the last batch's count is kept: an earlier one
  -- (a multi-batch call retried) answers 0, which only notes read.
  if applied > n then before = 0 end
  return {2, before, redis.call('LLEN', KEYS[2])}
end
if applied ~= n - 1 then
  return {0, applied, 0}
end
local added = 0
for i = 3, #ARGV, 4 do
  local op, id, entry, title = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local put = op == 'P'
  if op == 'C' then
    local current = redis.call('HGET', KEYS[1], id)
    put = (not current) or current == ''
    if put then added = added + 1 end
  elseif op == 'S' then
    if redis.call('HEXISTS', KEYS[1], id) == 1 then
      redis.call('HSET', KEYS[1], id, '')
    end
    redis.call('HDEL', KEYS[3], id)
  end
  if put then
    if redis.call('HSET', KEYS[1], id, entry) == 1 then
      redis.call('RPUSH', KEYS[2], id)
    end
    if title == '' then
      redis.call('HDEL', KEYS[3], id)
    else
      redis.call('HSET', KEYS[3], id, string.sub(title, 2))
    end
  end
end
redis.call('SET', KEYS[4], n .. ':' .. added)
for k = 1, 4 do
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return {1, added, redis.call('LLEN', KEYS[2])}
