-- Fenced: marks documents as unsettled before their sink writes, so a write
-- that reaches the sink but never the state (a crash, a takeover in between)
-- is redone by the next run instead of trusted away by the skip check.
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: tm:{S}:unsettled (hash id -> owner)
-- ARGV[2]: the owner ("run/page"), ARGV[3..]: document ids
for i = 3, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[2]) end
return {1, 0}
