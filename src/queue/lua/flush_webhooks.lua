-- Takes a source's pending webhook targets once its debounce window has
-- closed, for one flusher at a time: they move to the flushing set, where
-- they stay until the request naming them is enqueued (flushed_webhooks.lua),
-- so a flush that fails or dies between the two loses nothing: once its
-- lease expires, the next flush takes them again.
-- KEYS[1]: tm:{S}:webhook:pending, the set of named document ids ('*' = whole source)
-- KEYS[2]: tm:{S}:webhook:window, exists while the debounce window is open
-- KEYS[3]: tm:{S}:webhook:flushing, targets taken and not yet enqueued
-- KEYS[4]: tm:{S}:webhook:flushing:lease, exists while a flush is under way
-- ARGV[1]: the lease, ms
-- Returns {0, {}} while the window is open or another flush is under way,
-- else {1, the targets to enqueue} (possibly none).
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, {}} end
if redis.call('EXISTS', KEYS[2]) == 1 and redis.call('EXISTS', KEYS[3]) == 0 then return {0, {}} end
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[1])
  redis.call('DEL', KEYS[1])
end
local m = redis.call('SMEMBERS', KEYS[3])
if #m > 0 then redis.call('SET', KEYS[4], 1, 'PX', ARGV[1]) end
return {1, m}
