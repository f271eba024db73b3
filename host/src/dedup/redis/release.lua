-- Compare-and-delete a batch of keys: give each up so a retry can claim it
-- again.
--
-- KEYS     the namespaced keys of the batch, in order
-- ARGV[i]  the owner token of key i
--
-- Returns one reply per key, in order: 1 if deleted, 0 if the key was no
-- longer the caller's, or an error reply when the key holds a value of
-- another type (that key's alone). The fencing counters stay, so the next
-- owner gets a larger token.
local replies = {}
for i = 1, #KEYS do
  local current = redis.pcall('GET', KEYS[i])
  if type(current) == 'table' then
    replies[i] = current
  elseif current == ARGV[i] then
    redis.call('DEL', KEYS[i])
    replies[i] = 1
  else
    replies[i] = 0
  end
end
return replies
