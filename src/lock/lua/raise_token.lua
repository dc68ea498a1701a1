-- Raise-only write of a node's token counter, so tokens never go backwards.
-- KEYS[1]: tm:{S}:lock:tokens
-- ARGV[1]: the new token
-- Returns the counter as it was before.
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end
return c
