-- The request naming these targets is enqueued: they leave the flushing set
-- and the flush's lease ends.
-- KEYS[1]: tm:{S}:webhook:flushing; KEYS[2]: tm:{S}:webhook:flushing:lease
-- ARGV: the targets enqueued
-- In slices: unpack has a limit on how many values it spreads.
for i = 1, #ARGV, 1000 do
  redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('DEL', KEYS[2])
return 1
