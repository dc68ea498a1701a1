-- Unfenced: a dead-lettered page may not even have a readable token.
-- Marks a page of a run failed with its reason, once.
-- KEYS[1]: tm:{S}:run:{R}:done; KEYS[2]: tm:{S}:run:{R}; KEYS[3]: tm:{S}:run:{R}:wake
-- ARGV[1]: page number; ARGV[2]: reason; ARGV[3]: retention in seconds (for the done set)
-- Returns 1 when newly marked, 0 when already done or the run record is gone.
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'pages_failed', 1)
redis.call('HINCRBY', KEYS[2], 'errors', 1)
redis.call('HSET', KEYS[2], 'last_error', ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], 86400000)
return 1
