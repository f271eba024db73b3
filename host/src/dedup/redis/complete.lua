-- Compare-and-set a batch of keys to the done marker for the dedup window.
--
-- KEYS     the namespaced keys of the batch, in order
-- ARGV[1]  the dedup window in milliseconds
-- ARGV[2]  the done marker
-- ARGV[2+i] the owner token of key i
--
-- Returns one reply per key, in order: 1 if marked done, 0 if the caller no
-- longer owned the key (nothing is written then), or an error reply when
-- the key holds a value of another type (that key's alone). The fencing
-- counter is not touched (claim.lua).
local replies = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local current = redis.pcall('GET', key)
  if type(current) == 'table' then
    replies[i] = current
  elseif current ~= ARGV[2 + i] then
    replies[i] = 0
  else
    redis.call('SET', key, ARGV[2], 'PX', ARGV[1])
    replies[i] = 1
  end
end
return replies
