-- The fencing preamble every fenced script starts with (composed in
-- lock::fencing::fenced_script; the write it guards follows it).
-- KEYS[1]: tm:{S}:fence, the highest token storage has seen for the source
-- ARGV[1]: the writer's fencing token
-- Returns {0, fence} when the token is stale (nothing is written); otherwise
-- raises the fence to the token and falls through to the write.
local fence = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < fence then return {0, fence} end
if token > fence then redis.call('SET', KEYS[1], ARGV[1]) end
