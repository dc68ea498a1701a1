-- Accepts a Google push-notification message number only if it is above the
-- last one accepted on its channel (raise-only), so a replay is refused.
-- KEYS[1]: tm:{S}:webhook:channel:{id}, the highest number accepted so far
-- ARGV[1]: the delivery's X-Goog-Message-Number
-- Returns 1 if accepted (and remembered for 30 days), 0 if a replay.
local c = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= c then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', 2592000)
return 1
