-- Fenced: sets fields of a run record, and gives the record a TTL if it has
-- none (a late writer must not leave a record that never expires).
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: tm:{S}:run:{R}
-- ARGV[2]: retention in seconds; ARGV[3..]: field, value pairs
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i+1]) end
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return {1, 0}
