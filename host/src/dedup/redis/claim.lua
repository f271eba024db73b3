-- Claim a batch of dedup keys in one call.
--
-- KEYS     per key of the batch, in order: the namespaced key, then its
--          fencing counter ("<key>:fence")
-- ARGV[1]  the lease in milliseconds
-- ARGV[2]  the dedup window in milliseconds
-- ARGV[3]  the done marker
-- ARGV[4]  '1' where the store is replicated (Sentinel, Cluster): a token
--          is then at least the server's clock in microseconds, so a
--          failover to a replica that never saw the counter's last value
--          still hands out a larger token than any holder had
--          (docs/semantics.md, "Failover"); '0' (one server) counts from 1
-- ARGV[4+i] the owner token of key i (a uuid, never equal to the done marker)
--
-- Returns one reply per key, in order: {1, fencing token} when acquired,
-- {2, 0} when the key is done, {3, pttl} when another owner holds the lease
-- (pttl is -1 if the key has no expiry, which only a foreign writer can
-- cause), or an error reply when the key or its counter holds a value of
-- another type: that key's alone, the others are claimed as if each had
-- its own call. The keys are claimed in order, so a key that appears twice
-- is acquired by the first and seen held by the second.
-- The counter outlives the lease by at least the window, so an owner that
-- is paused past its lease still sees its successor get a larger token.
-- Numbers go to Redis as the caller's text where they can, and as text made
-- once per batch otherwise: Lua writes a number argument with printf's
-- floating-point code, per call.
local want = tonumber(ARGV[1]) + tonumber(ARGV[2])
local want_text = string.format('%d', want)
local replies = {}
for i = 1, #KEYS / 2 do
  local key, fence = KEYS[2 * i - 1], KEYS[2 * i]
  local current = redis.pcall('GET', key)
  if type(current) == 'table' then
    replies[i] = current
  elseif current == false then
    -- INCR first: it is the only call for this key that can fail (a wrong
    -- type), and a failure must leave nothing behind, since scripts do not
    -- roll back.
    local counted = redis.pcall('INCR', fence)
    if type(counted) == 'table' then
      replies[i] = counted
    else
      local token = counted
      if ARGV[4] == '1' then
        local now = redis.call('TIME')
        local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
        if token < floor then
          token = floor
          -- As text with every digit: a Lua number would be written as 1.7e+15.
          redis.call('SET', fence, string.format('%.0f', token), 'KEEPTTL')
        end
      end
      redis.call('SET', key, ARGV[4 + i], 'PX', ARGV[1])
      -- A counter INCR created (1) has no expiry yet; any other may have
      -- less left than the lease and the window.
      if counted == 1 or redis.call('PTTL', fence) < want then
        redis.call('PEXPIRE', fence, want_text)
      end
      replies[i] = {1, token}
    end
  elseif current == ARGV[3] then
    replies[i] = {2, 0}
  else
    replies[i] = {3, redis.call('PTTL', key)}
  end
end
return replies
