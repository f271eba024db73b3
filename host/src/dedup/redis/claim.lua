-- Claim a dedup key in one round trip.
--
-- KEYS[1]  the namespaced key
-- KEYS[2]  its fencing counter ("<key>:fence")
-- ARGV[1]  the claimant's owner token (a uuid, never equal to the done marker)
-- ARGV[2]  the lease in milliseconds
-- ARGV[3]  the dedup window in milliseconds
-- ARGV[4]  the done marker
-- ARGV[5]  '1' where the store is replicated (Sentinel, Cluster): the token
--          is then at least the server's clock in microseconds, so a
--          failover to a replica that never saw the counter's last value
--          still hands out a larger token than any holder had
--          (docs/semantics.md, "Failover"); '0' (one server) counts from 1
--
-- Returns {1, fencing token} when acquired, {2, 0} when the key is done and
-- {3, pttl} when another owner holds the lease (pttl is -1 if the key has no
-- expiry, which only a foreign writer can cause).
local current = redis.call('GET', KEYS[1])
if current == false then
  local lease = tonumber(ARGV[2])
  -- INCR first: it is the only call here that can fail (a wrong type), and a
  -- failure must leave nothing behind, since scripts do not roll back.
  local token = redis.call('INCR', KEYS[2])
  if ARGV[5] == '1' then
    local now = redis.call('TIME')
    local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
    if token < floor then
      token = floor
      -- As text with every digit: a Lua number would be written as 1.7e+15.
      redis.call('SET', KEYS[2], string.format('%.0f', token), 'KEEPTTL')
    end
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', lease)
  -- The counter outlives the lease by at least the window, so an owner that
  -- is paused past its lease still sees its successor get a larger token.
  local want = lease + tonumber(ARGV[3])
  if redis.call('PTTL', KEYS[2]) < want then
    redis.call('PEXPIRE', KEYS[2], want)
  end
  return {1, token}
end
if current == ARGV[4] then
  return {2, 0}
end
return {3, redis.call('PTTL', KEYS[1])}
