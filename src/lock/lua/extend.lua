-- Extends the lock if we still own it (compare-and-set on the owner value).
-- KEYS[1]: tm:{S}:lock
-- ARGV[1]: owner value; ARGV[2]: new TTL in ms
-- Returns 1 if extended, 0 if the lock is someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
