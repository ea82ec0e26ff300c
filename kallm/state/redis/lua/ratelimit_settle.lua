-- Replace a request's estimated tokens by those it used: move the tokens TAT by the
-- difference (never before now: unused time is not banked).
-- KEYS: 1 state. ARGV: 1 used minus estimated tokens, 2 tpm
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = redis.call('HGET', KEYS[1], 't')
if not tat then
  return 0
end
local moved = tonumber(tat) + tonumber(ARGV[1]) * 60 / tonumber(ARGV[2])
if moved <= now then
  redis.call('HDEL', KEYS[1], 't')
else
  redis.call('HSET', KEYS[1], 't', string.format('%.6f', moved))
  local ttl = redis.call('PTTL', KEYS[1])
  local needed = math.ceil((moved - now) * 1000) + 1000
  if ttl < needed then
    redis.call('PEXPIRE', KEYS[1], needed)
  end
end
return 1
