-- Claim a batch of dedup keys in one call.
--
-- KEYS[1]  the fencing counter the batch's tokens come from: one per
--          prefix on one server or Sentinel, one per hash tag on a Cluster
--          (`RedisStore::counter`)
-- KEYS[1+i] the namespaced key i of the batch
-- ARGV[1]  the lease in milliseconds
-- ARGV[2]  the done marker
-- ARGV[2+i] the owner token of key i (a uuid, never equal to the done marker)
--
-- Returns one reply per key, in order: {1, fencing token} when acquired,
-- {2, 0} when the key is done, {3, pttl} when another owner holds the lease
-- (pttl is -1 if the key has no expiry, which only a foreign writer can
-- cause), or an error reply when the key holds a value of another type:
-- that key's alone, the others are claimed as if each had its own call.
-- The keys are claimed in order, so a key that appears twice is acquired
-- by the first and seen held by the second.
--
-- The tokens of the keys acquired come from one INCRBY of the counter,
-- in order, and are at least the server's clock in microseconds
-- (docs/semantics.md, "Fencing token"): a counter that was lost (a
-- restart without persistence, a failover to a replica that never saw its
-- last value) still hands out a larger token than any holder had, since
-- fewer than one claim per microsecond is ever made. For the same reason
-- the counter may expire: it lives a lease past the last call that moved
-- it to the clock, so a prefix or namespace no longer used leaves nothing
-- behind.
local replies = {}
local acquired = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  local current = redis.pcall('GET', key)
  if type(current) == 'table' then
    replies[i - 1] = current
  elseif current == false then
    redis.call('SET', key, ARGV[1 + i], 'PX', ARGV[1])
    acquired[#acquired + 1] = i - 1
  elseif current == ARGV[2] then
    replies[i - 1] = {2, 0}
  else
    replies[i - 1] = {3, redis.call('PTTL', key)}
  end
end
local n = #acquired
if n == 0 then
  return replies
end
local top = redis.pcall('INCRBY', KEYS[1], n)
if type(top) == 'table' then
  -- The counter cannot count (another type, or text that is not a
  -- number): give the keys back, since scripts do not roll back, and
  -- answer each with an error about the counter. Its code is not
  -- WRONGTYPE: the store is broken for every key, not this one.
  local why = {err = 'FENCE the fencing counter ' .. KEYS[1] .. ' cannot count: ' .. top.err}
  for _, j in ipairs(acquired) do
    redis.call('DEL', KEYS[j + 1])
    replies[j] = why
  end
  return replies
end
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
local first = top - n + 1
if first < floor then
  first = floor
  -- As text with every digit: a Lua number would be written as 1.7e+15.
  redis.call('SET', KEYS[1], string.format('%.0f', floor + n - 1), 'PX', ARGV[1])
end
for k, j in ipairs(acquired) do
  replies[j] = {1, first + k - 1}
end
return replies
