-- Fenced: registers a newly acquired token; nothing else is written.
-- (Preceded by lock/lua/check_and_raise.lua: KEYS[1] fence, ARGV[1] token.)
return {1, 0}
