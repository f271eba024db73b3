-- Compare-and-pexpire a batch of leases: extend each only if the caller
-- still owns it.
--
-- KEYS     the namespaced keys of the batch, in order
-- ARGV[1]  the new lease in milliseconds
-- ARGV[1+i] the owner token of key i
--
-- Returns one reply per key, in order: 1 if renewed, 0 if the lease was
-- lost (expired, taken or done), or an error reply when the key holds a
-- value of another type (that key's alone).
local replies = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local current = redis.pcall('GET', key)
  if type(current) == 'table' then
    replies[i] = current
  elseif current ~= ARGV[1 + i] then
    replies[i] = 0
  else
    redis.call('PEXPIRE', key, ARGV[1])
    replies[i] = 1
  end
end
return replies
