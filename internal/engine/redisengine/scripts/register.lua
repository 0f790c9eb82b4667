-- register.lua: register (or refresh) a proxy as holding inboxes of a shard.
--
-- KEYS[1] at   the shard's registry hash: proxy -> expiry (ms, Redis's clock)
-- ARGV[1] proxy id   ARGV[2] ttl ms
--
-- The expiry comes from Redis's clock, the one notify.lua compares it with,
-- so proxy clocks do not matter. Missing key: created. Returns 1. O(1).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
