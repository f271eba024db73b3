-- Compare-and-set the key to the done marker for the dedup window.
--
-- KEYS[1]  the namespaced key
-- KEYS[2]  its fencing counter
-- ARGV[1]  the owner token
-- ARGV[2]  the dedup window in milliseconds
-- ARGV[3]  the done marker
--
-- Returns 1 if marked done, 0 if the caller no longer owned the key (nothing
-- is written then).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local window = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', window)
-- The counter lives at least as long as the marker, so a claim made after
-- the marker expires still gets a larger token than any earlier owner had.
if redis.call('PTTL', KEYS[2]) < window then
  redis.call('PEXPIRE', KEYS[2], window)
end
return 1
