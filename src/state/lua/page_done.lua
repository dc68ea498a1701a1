-- Fenced: marks a page of a run done and adds its figures, once.
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: tm:{S}:run:{R}:done (set of page numbers)
-- KEYS[3]: tm:{S}:run:{R} (run record)
-- KEYS[4]: tm:{S}:run:{R}:wake (list the coordinator BLPOPs)
-- ARGV[2]: page number; ARGV[3]: retention in seconds (for the done set);
-- ARGV[4..]: counter, increment pairs
-- Returns {1, 1} when the page was newly done, {1, 0} when it was already counted.
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return {1, 0} end
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
redis.call('HINCRBY', KEYS[3], 'pages_done', 1)
for i = 4, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i+1]) end
redis.call('RPUSH', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[4], 86400000)
return {1, 1}
