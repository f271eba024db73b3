-- Commit a message's key-value writes, and (with a lease) mark its dedup
-- key done, in one atomic step; `kv.rs` describes the semantics and
-- `kv::replay` is the same logic for the in-process store.
--
-- KEYS[1]  the dedup key (with a lease; else any key of the namespace)
-- KEYS[2]  the namespace's index (a sorted set of its keys)
-- KEYS[2+i] the data key of op i
-- ARGV[1]  '1' with a lease, '0' without (dedup off or bypassed); 'c1' and
--          'c0' the same, but only check: write nothing, whatever the
--          outcome (the check before a run's outputs are published); a
--          't' after it ('1t', '0t'): the caller keeps a read cache on this
--          connection (`read_cache.rs`): read each written key again after
--          the writes, so that Redis tracks it for this connection, and
--          return what it now holds
-- ARGV[2]  the owner token
-- ARGV[3]  the dedup window in milliseconds
-- ARGV[4]  the done marker
-- then each op, in order, from ARGV[5]: its kind ('s' set, 'd' delete,
-- 'i' increment, 'c' compare-and-swap), the key as the handler named it
-- (the index member), and what the kind takes:
--   s: value, ttl ms or ''
--   d: nothing
--   i: delta
--   c: '1' if a value is expected ('0': absent), expected, '1' if a new
--      value is written ('0': delete), new
--
-- Returns {1, ''} when written, {0, ''} when the lease is lost (nothing
-- written), {2, key} when a compare-and-swap does not hold and {3, key} when
-- an increment finds no counter or leaves the range (nothing written).
-- With 't', written is {1, '', k1, v1, t1, k2, v2, t2, ...} for each data
-- key whose value or TTL the caller cannot know from its own ops (an
-- increment made it, or it kept the TTL it had): the key, '=' followed by
-- its value (or '-' when it is absent), and its PTTL. The others the
-- caller keeps as its ops left them.
-- Every check comes before the first write: scripts do not roll back.
local with_lease = string.find(ARGV[1], '1', 1, true) ~= nil
local check_only = string.sub(ARGV[1], 1, 1) == 'c'
local track = string.find(ARGV[1], 't', 1, true) ~= nil
if with_lease then
  -- The owner token is new with every claim, so a key that still holds
  -- it was claimed by no one since: the fencing token this run was given
  -- is still the key's latest.
  if redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return {0, ''}
  end
end
local MAX = 9007199254740991
local view = {}
local order = {}
local n = #KEYS - 2
local o = 5
for i = 1, n do
  local k = KEYS[2 + i]
  local kind, member = ARGV[o], ARGV[o + 1]
  local a, b, c, d
  if kind == 's' then
    a, b = ARGV[o + 2], ARGV[o + 3]
    o = o + 4
  elseif kind == 'd' then
    o = o + 2
  elseif kind == 'i' then
    a = ARGV[o + 2]
    o = o + 3
  else
    a, b, c, d = ARGV[o + 2], ARGV[o + 3], ARGV[o + 4], ARGV[o + 5]
    o = o + 6
  end
  local e = view[k]
  if e == nil then
    e = {v = redis.call('GET', k), ttl = 'keep', member = member, inc = false}
    view[k] = e
    order[#order + 1] = k
  end
  if kind == 's' then
    e.v = a
    e.inc = false
    if b == '' then e.ttl = 'none' else e.ttl = b end
  elseif kind == 'd' then
    e.v = false
    e.inc = false
    e.ttl = 'none'
  elseif kind == 'i' then
    e.inc = true
    local now = 0
    if e.v then
      local digits = string.match(e.v, '^%-?(%d+)$')
      if digits == nil or #digits > 16 then
        return {3, member}
      end
      now = tonumber(e.v)
      if now > MAX or now < -MAX then
        return {3, member}
      end
    end
    local sum = now + tonumber(a)
    if sum > MAX or sum < -MAX then
      return {3, member}
    end
    e.v = string.format('%.0f', sum)
  elseif kind == 'c' then
    local holds
    if a == '1' then holds = (e.v == b) else holds = (e.v == false) end
    if not holds then
      return {2, member}
    end
    if c == '1' then e.v = d else e.v = false end
    e.inc = false
    e.ttl = 'none'
  end
end
if check_only then
  return {1, ''}
end
for _, k in ipairs(order) do
  local e = view[k]
  if e.v == false then
    redis.call('DEL', k)
    redis.call('ZREM', KEYS[2], e.member)
  else
    if e.ttl == 'keep' then
      redis.call('SET', k, e.v, 'KEEPTTL')
    elseif e.ttl == 'none' then
      redis.call('SET', k, e.v)
    else
      redis.call('SET', k, e.v, 'PX', e.ttl)
    end
    redis.call('ZADD', KEYS[2], 0, e.member)
  end
end
if with_lease then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
end
if track then
  local out = {1, ''}
  for _, k in ipairs(order) do
    -- Read every written key again, so that Redis tracks it for this
    -- connection.
    local v = redis.call('GET', k)
    local e = view[k]
    if e.inc or e.ttl == 'keep' then
      out[#out + 1] = k
      if v then out[#out + 1] = '=' .. v else out[#out + 1] = '-' end
      out[#out + 1] = redis.call('PTTL', k)
    end
  end
  return out
end
return {1, ''}
