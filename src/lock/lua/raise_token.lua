-- Raise-only write of a node's token counter, so tokens never go backwards,
-- and (re-)seeding: the counter is marked as written by this node process
-- (its run_id), which is what makes it trusted by later acquisitions. A node
-- that restarted, with or without its data, has a new run_id and stays
-- untrusted until it is re-seeded. Only a live holder re-seeds: the mark is set
-- only while this node holds the caller's lock, so an acquirer that stalled
-- past its TTL (and whose token may since have been overtaken) raises the
-- counter but cannot vouch for it.
-- KEYS[1]: tm:{S}:lock:tokens
-- KEYS[2]: tm:{S}:lock:epoch
-- KEYS[3]: tm:{S}:lock
-- ARGV[1]: the new token (decimal); ARGV[2]: the caller's owner value
-- Returns 1 if the node was marked (seeded), 0 if only the counter was raised.
-- Compared as decimal strings (length first), never as Lua numbers.
local function below(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local c = redis.call('GET', KEYS[1]) or '0'
if below(c, ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if run_id then redis.call('SET', KEYS[2], run_id) end
return 1
