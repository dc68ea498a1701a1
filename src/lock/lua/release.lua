-- Releases the lock if we still own it (compare-and-delete on the owner value).
-- KEYS[1]: tm:{S}:lock
-- ARGV[1]: owner value
-- Returns 1 if released, 0 if the lock is someone else's or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
