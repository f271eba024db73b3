-- Compare-and-delete: give the key up so a retry can claim it again.
--
-- KEYS[1]  the namespaced key
-- ARGV[1]  the owner token
--
-- Returns 1 if deleted, 0 if the key was no longer the caller's. The fencing
-- counter stays, so the next owner gets a larger token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
