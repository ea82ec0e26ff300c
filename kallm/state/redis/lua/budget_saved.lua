-- What a cache hit saved a key (micro-dollars), added to its fleet-wide total.
-- KEYS: 1 account. ARGV: 1 saved, 2 seed spend, 3 seed period start
redis.call('HSETNX', KEYS[1], 'spend', ARGV[2])
redis.call('HSETNX', KEYS[1], 'ps', ARGV[3])
return redis.call('HINCRBY', KEYS[1], 'saved', ARGV[1])
