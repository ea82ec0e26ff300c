-- Settle a request at its real cost, once: settling again is harmless, and a request
-- whose hold lapsed (it outlived the hold) is still charged.
-- KEYS: 1 account, 2 held, 3 expiry, 4 settled (as in budget_reserve.lua)
-- ARGV: 1 request id, 2 cost, 3 period seconds, 4 seed spend, 5 seed period start,
--       6 seconds a settlement is remembered
-- Returns {1, spend} charged, {0, spend} settled already.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

redis.call('HSETNX', KEYS[1], 'spend', ARGV[4])
redis.call('HSETNX', KEYS[1], 'ps', ARGV[5])
local ps = tonumber(redis.call('HGET', KEYS[1], 'ps'))
local period = tonumber(ARGV[3])
if period > 0 and now >= ps + period then
  ps = ps + math.floor((now - ps) / period) * period
  redis.call('HSET', KEYS[1], 'spend', 0, 'ps', string.format('%.6f', ps))
end

local id = ARGV[1]
if redis.call('ZSCORE', KEYS[4], id) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'spend'))}
end
redis.call('HDEL', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('ZADD', KEYS[4], now, id)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[6]))
local spend = redis.call('HINCRBY', KEYS[1], 'spend', ARGV[2])
redis.call('HSET', KEYS[1], 'last', string.format('%.6f', now))
return {1, spend}
