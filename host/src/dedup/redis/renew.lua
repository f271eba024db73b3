-- Compare-and-pexpire a batch of leases: extend each only if the caller
-- still owns it.
--
-- KEYS     per key of the batch, in order: the namespaced key, then its
--          fencing counter
-- ARGV[1]  the new lease in milliseconds
-- ARGV[1+i] the owner token of key i
--
-- Returns one reply per key, in order: 1 if renewed, 0 if the lease was
-- lost (expired, taken or done), or an error reply when the key holds a
-- value of another type (that key's alone).
local ttl = tonumber(ARGV[1])
local replies = {}
for i = 1, #KEYS / 2 do
  local key, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local current = redis.pcall('GET', key)
  if type(current) == 'table' then
    replies[i] = current
  elseif current ~= ARGV[1 + i] then
    replies[i] = 0
  else
    local key_left = redis.call('PTTL', key)
    local fence_left = redis.call('PTTL', fence)
    redis.call('PEXPIRE', key, ARGV[1])
    -- Keep the margin the claim gave the counter over the lease (the
    -- window), so a long-running handler cannot outlive its own fencing
    -- counter.
    if key_left > 0 and fence_left > 0 then
      local want = ttl + (fence_left - key_left)
      if want > fence_left then
        redis.call('PEXPIRE', fence, want)
      end
    end
    replies[i] = 1
  end
end
return replies
