-- Compare-and-set a batch of keys to the done marker for the dedup window.
--
-- KEYS     per key of the batch, in order: the namespaced key, then its
--          fencing counter
-- ARGV[1]  the dedup window in milliseconds
-- ARGV[2]  the done marker
-- ARGV[2+i] the owner token of key i
--
-- Returns one reply per key, in order: 1 if marked done, 0 if the caller no
-- longer owned the key (nothing is written then), or an error reply when
-- the key holds a value of another type (that key's alone).
local window = tonumber(ARGV[1])
local replies = {}
for i = 1, #KEYS / 2 do
  local key, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local current = redis.pcall('GET', key)
  if type(current) == 'table' then
    replies[i] = current
  elseif current ~= ARGV[2 + i] then
    replies[i] = 0
  else
    redis.call('SET', key, ARGV[2], 'PX', ARGV[1])
    -- The counter lives at least as long as the marker, so a claim made
    -- after the marker expires still gets a larger token than any earlier
    -- owner had.
    if redis.call('PTTL', fence) < window then
      redis.call('PEXPIRE', fence, ARGV[1])
    end
    replies[i] = 1
  end
end
return replies
