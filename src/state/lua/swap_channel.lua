-- Replaces the source's push channel if it is still the one the caller read.
-- KEYS[1]: the channel hash {id, json}
-- ARGV[1]: the id the caller read ("" when there was none)
-- ARGV[2]: the new channel's id; ARGV[3]: its JSON; ARGV[4]: TTL in ms
-- Returns 1 if replaced, 0 if another coordinator replaced it first.
local current = redis.call('HGET', KEYS[1], 'id') or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'json', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
