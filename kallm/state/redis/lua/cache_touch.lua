-- Hits seen by one replica since its last flush move those entries to the LRU's young end.
-- KEYS: 1 lru (zset exact -> last use). ARGV: exacts. XX: an evicted entry stays evicted.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local args = {}
for _, exact in ipairs(ARGV) do
  args[#args + 1] = now
  args[#args + 1] = exact
end
if #args > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(args))
end
return #ARGV
