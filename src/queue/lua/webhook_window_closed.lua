-- Forgets a source's closing time once its window was flushed, unless a new
-- window has set another meanwhile (its flush is still to come).
-- KEYS[1]: tm:{webhooks}:closing (sorted set: source -> window close, ms)
-- ARGV[1]: source; ARGV[2]: the closing time the flush was for
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
