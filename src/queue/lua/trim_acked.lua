-- Trims the entries every consumer group is done with, and nothing else.
-- An entry must stay while some group still has it pending (delivered, not
-- acked: a dead consumer's entry is claimed later) or has not been delivered it
-- yet. Per group the floor is min(oldest pending id, last-delivered-id): every
-- entry below it is delivered and acked. MINID trims entries below the lowest
-- floor of all groups; `~` lets Redis drop only whole macro nodes, which is
-- cheap and only ever keeps more, never less.
-- Atomic (one script), so no delivery or claim can slip in between reading the
-- floors and trimming.
-- KEYS[1]: the stream (tm:jobs, tm:requests)
-- ARGV: none
-- Returns the number of entries removed; 0 when the stream or its groups do
-- not exist (with no group, nobody's progress is known: keep everything).

-- true when stream id a is below stream id b; ids are compared exactly, as
-- decimal strings (length first), never as Lua numbers (doubles).
local function below(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  local function lt(x, y)
    if #x ~= #y then return #x < #y end
    return x < y
  end
  if am ~= bm then return lt(am, bm) end
  return lt(as, bs)
end

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local floor = nil
for _, g in ipairs(groups) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local keep = last
  local summary = redis.call('XPENDING', KEYS[1], name)
  if summary[1] > 0 and below(summary[2], keep) then keep = summary[2] end
  if floor == nil or below(keep, floor) then floor = keep end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
