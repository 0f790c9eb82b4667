-- cancel.lua: cancel an armed schedule and tell the proxies.
--
-- KEYS[1] sched   KEYS[2] channel
-- ARGV[1] schedule id   ARGV[2] the version it must have ("": any)
--
-- Returns 1 cancelled (the message, marked "cancel", is published), 0 not
-- found (missing key included), -1 armed with another version. O(1).
local s = redis.call('HGET', KEYS[1], ARGV[1])
if not s then return 0 end
if ARGV[2] ~= '' and string.match(s, '"v":(%d+)') ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
local c = string.gsub(s, '"arm":{', '"arm":{"cancel":true,', 1)
redis.call('SPUBLISH', KEYS[2], c)
return 1
