-- Fenced: forgets dependents a run has refreshed (owed breadcrumbs and link titles).
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: tm:{S}:owed:crumbs; KEYS[3]: tm:{S}:owed:links
-- ARGV[2]: n, then n ids to remove from KEYS[2], then the ids to remove from KEYS[3]
local n = tonumber(ARGV[2])
for i = 3, 2 + n do
  redis.call('SREM', KEYS[2], ARGV[i])
end
for i = 3 + n, #ARGV do
  redis.call('SREM', KEYS[3], ARGV[i])
end
return {1, 0}
