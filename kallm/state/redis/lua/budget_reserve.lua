-- Check a key's budget and hold a request's maximum cost, atomically. Money in integer
-- micro-dollars; time is the server's (TIME), never a pod's.
-- KEYS: 1 account (hash: spend, ps = period start, saved, last), 2 held (hash id -> amount),
--       3 expiry (zset id -> when the hold lapses), 4 settled (zset id -> when)
-- ARGV: 1 budget, 2 amount, 3 request id, 4 period seconds (0: never resets),
--       5 seed spend, 6 seed period start, 7 hold seconds
-- Returns {1, spend} held, {0, spend} over budget, {2, spend} this id is already held.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

-- seeded from the key record once; replicas starting later add nothing (no N-fold spend)
redis.call('HSETNX', KEYS[1], 'spend', ARGV[5])
redis.call('HSETNX', KEYS[1], 'ps', ARGV[6])
local spend = tonumber(redis.call('HGET', KEYS[1], 'spend'))
local ps = tonumber(redis.call('HGET', KEYS[1], 'ps'))
local period = tonumber(ARGV[4])
if period > 0 and now >= ps + period then
  ps = ps + math.floor((now - ps) / period) * period
  spend = 0
  redis.call('HSET', KEYS[1], 'spend', 0, 'ps', string.format('%.6f', ps))
end

-- holds of replicas that died mid-request lapse: the budget is whole again
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #lapsed > 0 then
  redis.call('HDEL', KEYS[2], unpack(lapsed))
  redis.call('ZREM', KEYS[3], unpack(lapsed))
end

local id = ARGV[3]
if redis.call('HEXISTS', KEYS[2], id) == 1 then
  return {2, spend}
end
redis.call('ZREM', KEYS[4], id) -- an id used again later is a new request

local budget = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local held = 0
local holds = redis.call('HVALS', KEYS[2])
for _, value in ipairs(holds) do
  held = held + tonumber(value)
end
local fits = spend + held + amount <= budget
-- one request may start when nothing else is in flight and money is left, so a request
-- dearer than what remains is not refused for ever: the overshoot is at most that one
local last_one = #holds == 0 and spend < budget
if not (fits or last_one) then
  return {0, spend}
end
redis.call('HSET', KEYS[2], id, amount)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), id)
return {1, spend}
