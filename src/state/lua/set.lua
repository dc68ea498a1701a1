-- Fenced: SET one value (the checkpoint).
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: the key; ARGV[2]: the value
redis.call('SET', KEYS[2], ARGV[2])
return {1, 0}
