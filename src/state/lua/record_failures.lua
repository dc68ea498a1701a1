-- Fenced: records documents that failed on their own (the rest of their page
-- was applied), so every later run retries them until they succeed.
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: tm:{S}:failed (hash id -> MessagePack DocFailure)
-- ARGV[2..]: (id, MessagePack DocFailure) pairs
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return {1, 0}
