-- Requests and tokens per minute by GCRA (one "theoretical arrival time" per limit):
-- a request is admitted if the limit's TAT, pushed on by its cost, stays within a minute
-- of now. Both limits are checked before either is charged; a refused request costs
-- nothing. Tokens are the request's estimate, corrected by ratelimit_settle.lua.
-- KEYS: 1 state (hash: r = requests TAT, t = tokens TAT)
-- ARGV: 1 rpm (0: none), 2 tpm (0: none), 3 tokens
-- Returns {1, remaining requests, remaining tokens} or {0, which, retry after seconds}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = 60
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slack = 0.000001

local rtat = math.max(tonumber(redis.call('HGET', KEYS[1], 'r') or 0), now)
local ttat = math.max(tonumber(redis.call('HGET', KEYS[1], 't') or 0), now)
local remaining_r, remaining_t = -1, -1
local rnew, tnew = rtat, ttat

if rpm > 0 then
  local step = window / rpm
  rnew = rtat + step
  if rnew - now > window + slack then
    return {0, 'r', tostring(rnew - now - window)}
  end
  remaining_r = math.floor((window - (rnew - now)) / step + slack)
end
if tpm > 0 then
  local step = window / tpm
  tnew = ttat + tokens * step
  -- one request may start when the key has nothing in the window, however large
  if tnew - now > window + slack and ttat > now then
    return {0, 't', tostring(tnew - now - window)}
  end
  remaining_t = math.floor((window - (tnew - now)) / step + slack)
end

if rpm > 0 then
  redis.call('HSET', KEYS[1], 'r', string.format('%.6f', rnew))
end
if tpm > 0 then
  redis.call('HSET', KEYS[1], 't', string.format('%.6f', tnew))
end
local horizon = math.max(rnew, tnew) - now
redis.call('PEXPIRE', KEYS[1], math.ceil(horizon * 1000) + 1000)
return {1, remaining_r, remaining_t}
