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
-- exists (a document owes its children or linkers only if it has some),
-- or OWEIFTITLE<title>: SADD the member (a link target) to KEYS[key index] if
-- the target is held with a title other than <title>, the one the page's
-- links to it were written with (another page of the run wrote it meanwhile)

-- The title of a stored DocState (a named MessagePack map whose fields before
-- the title are strings or binaries), or nil if it does not read so. Read by
-- hand: the Lua cmsgpack of Redis 7.0 refuses binaries (the hash is one).
local function stored_title(s)
  local pos = 1
  local function byte()
    local b = string.byte(s, pos)
    pos = pos + 1
    return b
  end
  -- A string, a binary or nil at `pos`: its value (nil for nil), and whether it was one.
  local function text()
    local b = byte()
    local len
    if not b then
      return nil, false
    elseif b >= 0xa0 and b <= 0xbf then
      len = b - 0xa0
    elseif b == 0xd9 or b == 0xc4 then
      len = byte()
    elseif b == 0xda or b == 0xc5 then
      len = byte() * 256 + byte()
    elseif b == 0xc0 then
      return nil, true
    else
      return nil, false
    end
    local v = string.sub(s, pos, pos + len - 1)
    pos = pos + len
    return v, true
  end
  local head = byte()
  if not head or head < 0x80 or head > 0x8f then
    return nil
  end
  for _ = 1, head - 0x80 do
    local key, is_key = text()
    if not is_key or not key then
      return nil
    end
    local value, is_text = text()
    if not is_text then
      return nil
    end
    if key == 't' or key == 'title' then
      return value
    end
  end
  return nil
end
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
  if string.sub(op, 1, 10) == 'OWEIFTITLE' then
    local held = redis.call('HGET', KEYS[2], ARGV[i + 2])
    if held then
      -- A state that does not read is taken as another title: a refresh too many.
      local read, title = pcall(stored_title, held)
      if not read or title ~= string.sub(op, 11) then
        redis.call('SADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
      end
    end
  elseif string.sub(op, 1, 5) == 'OWEIF' then
    if redis.call('EXISTS', KEYS[tonumber(string.sub(op, 6))]) == 1 then
      redis.call('SADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    end
  else
    redis.call(op, KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  end
  i = i + 3
end
return {1, 0}
