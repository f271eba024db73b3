-- Compare-and-pexpire: extend the lease only if the caller still owns it.
--
-- KEYS[1]  the namespaced key
-- KEYS[2]  its fencing counter
-- ARGV[1]  the owner token
-- ARGV[2]  the new lease in milliseconds
--
-- Returns 1 if renewed, 0 if the lease was lost (expired, taken or done).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[2])
local key_left = redis.call('PTTL', KEYS[1])
local fence_left = redis.call('PTTL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ttl)
-- Keep the margin the claim gave the counter over the lease (the window), so
-- a long-running handler cannot outlive its own fencing counter.
if key_left > 0 and fence_left > 0 then
  local want = ttl + (fence_left - key_left)
  if want > fence_left then
    redis.call('PEXPIRE', KEYS[2], want)
  end
end
return 1
