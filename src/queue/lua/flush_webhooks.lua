-- Takes a source's pending webhook targets once its debounce window has closed.
-- Atomic, so with several coordinators exactly one takes them.
-- KEYS[1]: tm:{S}:webhook:pending, the set of named document ids ('*' = whole source)
-- KEYS[2]: tm:{S}:webhook:window, exists while the debounce window is open
-- Returns {0, {}} while the window is open, else {1, members taken (and deleted)}.
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, {}} end
local m = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return {1, m}
