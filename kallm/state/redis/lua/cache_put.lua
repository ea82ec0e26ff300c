-- Store one cache entry for the whole fleet, atomically.
-- KEYS: 1 entry (string), 2 lru (zset exact -> last use), 3 exp (zset exact -> expiry),
--       4 stream (capped log of puts other replicas tail), 5 stats (hash)
-- ARGV: 1 exact, 2 blob, 3 ttl ms, 4 max entries, 5 stream max length,
--       6 entry key prefix (same hash tag), 7 replica id
-- Returns the put's sequence number (a tailer that sees a gap rebuilds its index).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local exact = ARGV[1]

-- entries whose TTL ran out leave the indexes (their values are gone already)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('ZREM', KEYS[3], unpack(expired))
  redis.call('ZREM', KEYS[2], unpack(expired))
  redis.call('HINCRBY', KEYS[5], 'expirations', #expired)
end

redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, exact)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]) / 1000, exact)
local seq = redis.call('HINCRBY', KEYS[5], 'seq', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'q', seq, 'r', ARGV[7], 'b', ARGV[2])

-- fleet-wide max_entries: the least recently used go, whoever wrote them
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local victims = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREM', KEYS[2], unpack(victims))
  redis.call('ZREM', KEYS[3], unpack(victims))
  for _, victim in ipairs(victims) do
    redis.call('DEL', ARGV[6] .. victim)
  end
  redis.call('HINCRBY', KEYS[5], 'evictions', #victims)
end
return seq
