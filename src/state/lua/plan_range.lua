-- Reads a stretch of a run's plan in the order it was planned (state/plan.rs).
-- KEYS[1] plan hash, KEYS[2] order list; ARGV[1] first index, ARGV[2] last index.
-- Returns id, entry, id, entry, ...; a dropped id's entry is ''.
local ids = redis.call('LRANGE', KEYS[2], ARGV[1], ARGV[2])
if #ids == 0 then
  return {}
end
local entries = redis.call('HMGET', KEYS[1], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = entries[i] or ''
end
return out
