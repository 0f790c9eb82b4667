-- mark_read.lua: move an inbox's read mark forward, never back.
--
-- KEYS[1] ix   the inbox index hash ("read" -> position)
-- ARGV[1] position (a stream id)
--
-- Missing key (the inbox expired or never existed): returns 0 and creates
-- nothing, so a late ack cannot resurrect an inbox without its ttl. Returns 1
-- otherwise. Concurrent callers: the highest position wins. O(1).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local r = redis.call('HGET', KEYS[1], 'read')
if not r or lt(r, ARGV[1]) then redis.call('HSET', KEYS[1], 'read', ARGV[1]) end
return 1
