-- List a namespace's keys that start with a prefix, in byte order.
--
-- KEYS[1]  the namespace's index (a sorted set of its keys, all score 0)
-- ARGV[1]  the prefix as the handler names keys
-- ARGV[2]  the data-key prefix of the namespace ("{prefix}:kv/{NS}:")
-- ARGV[3]  the most keys to return
--
-- Keys that expired (a TTL) are still in the index: they are dropped from
-- it here and not returned. Each call looks at no more than 4 x ARGV[3]
-- index entries, so a namespace full of expired keys costs a bounded call.
local limit = tonumber(ARGV[3])
local start = '[' .. ARGV[1]
local out = {}
local scanned = 0
while #out < limit and scanned < 4 * limit do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, limit)
  if #batch == 0 then break end
  for _, member in ipairs(batch) do
    scanned = scanned + 1
    if string.sub(member, 1, #ARGV[1]) ~= ARGV[1] then
      return out
    end
    if redis.call('EXISTS', ARGV[2] .. member) == 1 then
      out[#out + 1] = member
      if #out >= limit then return out end
    else
      redis.call('ZREM', KEYS[1], member)
    end
    start = '(' .. member
  end
end
return out
