-- Fenced: records what a delivering sink delivered for one document.
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] the sink's fence, ARGV[1] token.)
-- KEYS[2]: the sink's delivered hash; ARGV[2]: document id;
-- ARGV[3]: "version\0content_hash", or empty for a deletion.
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return {1, 0}
