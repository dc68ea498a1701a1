-- Redlock step 1 on one node: take the lock if free, and report the node's token counter.
-- KEYS[1]: tm:{S}:lock, the owner's random value with a TTL
-- KEYS[2]: tm:{S}:lock:tokens, the node's token counter (never deleted)
-- ARGV[1]: owner value; ARGV[2]: TTL in ms
-- Returns the counter (0 if none yet) if granted, -1 if the lock is held.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return -1
