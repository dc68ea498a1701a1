-- Redlock step 1 on one node: take the lock if free, and report what the node
-- knows about tokens, whether that knowledge is trustworthy, and its clock.
-- KEYS[1]: tm:{S}:lock, the owner's random value with a TTL
-- KEYS[2]: tm:{S}:lock:tokens, the node's token counter (never deleted)
-- KEYS[3]: tm:{S}:lock:epoch, the run_id of the node process that last wrote the counter
-- ARGV[1]: owner value; ARGV[2]: TTL in ms
-- ARGV[3]: hold-off in ms: a node up for less than this is "young" (it may have
--          restarted empty and forgotten a lock it granted before; its grant is
--          not counted until every such lock has expired)
-- Returns {granted (1/0), counter (decimal string, "0" if none), trusted (1/0:
-- the counter was written by this very process, so no restart lost it),
-- young (1/0), clock seconds, clock microseconds}.
-- The lock is set even on a young node: that only strengthens exclusion.
local info = redis.call('INFO', 'server')
local run_id = string.match(info, 'run_id:(%x+)')
local uptime_ms = tonumber(string.match(info, 'uptime_in_seconds:(%d+)')) * 1000
local granted = 0
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then granted = 1 end
local counter = redis.call('GET', KEYS[2]) or '0'
local trusted = 0
if run_id and redis.call('GET', KEYS[3]) == run_id then trusted = 1 end
local young = 0
if uptime_ms < tonumber(ARGV[3]) then young = 1 end
local now = redis.call('TIME')
return {granted, counter, trusted, young, now[1], now[2]}
