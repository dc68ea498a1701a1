-- Fenced: writes a page's document states and deletions and the reverse-index
-- changes they imply, together, so the indexes never disagree with the documents;
-- every document written or deleted is settled (its unsettled mark and any
-- failure record removed).
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
-- KEYS[2]: tm:{S}:docs; KEYS[3]: tm:{S}:unsettled; KEYS[4]: tm:{S}:failed;
-- KEYS[5]: tm:{S}:owed:crumbs; KEYS[6]: tm:{S}:owed:links (what the writes owe, see state/owed.rs);
-- KEYS[7..]: the index sets (kids:, linkedfrom:) the ops name
-- ARGV[2]: n puts, then n (id, MessagePack DocState) pairs;
-- then m deletes, then m ids;
-- then (op, key index, member) triples: op is SADD or SREM on KEYS[key index] (5.. only),
-- or OWEIF<j>: SADD to KEYS[key index] (an owed set) only if the index set KEYS[j]
-- exists (a document owes its children or linkers only if it has some)
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 2
end
local m = tonumber(ARGV[i]); i = i + 1
for _ = 1, m do
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 1
end
while i <= #ARGV do
  local op = ARGV[i]
  if string.sub(op, 1, 5) == 'OWEIF' then
    if redis.call('EXISTS', KEYS[tonumber(string.sub(op, 6))]) == 1 then
      redis.call('SADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    end
  else
    redis.call(op, KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  end
  i = i + 3
end
return {1, 0}
