-- Write one key record if nobody changed it since it was read (compare and set), keep
-- names unique, retire a rotated-out hash for good, and tell every replica.
-- KEYS: 1 records (hash id -> JSON), 2 names (hash name -> id), 3 retired (set of hashes),
--       4 version (counter)
-- ARGV: 1 channel, 2 id, 3 JSON read before the change ('' = no such key yet), 4 new JSON,
--       5 name, 6 previous name ('' = none), 7 hash to retire ('' = none)
-- Returns the new version, -1 if the record changed meanwhile, -2 if the name is taken.
local current = redis.call('HGET', KEYS[1], ARGV[2]) or ''
if current ~= ARGV[3] then
  return -1
end
local owner = redis.call('HGET', KEYS[2], ARGV[5])
if owner and owner ~= ARGV[2] then
  return -2
end
if ARGV[6] ~= '' and ARGV[6] ~= ARGV[5] then
  redis.call('HDEL', KEYS[2], ARGV[6])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[5], ARGV[2])
if ARGV[7] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[7])
end
local version = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[1], version)
return version
