-- count.lua: add a proxy's sends and acks to a notification's report.
--
-- KEYS[1] rec  the notification's record hash (meta, sent, acked)
-- ARGV[1] sent   ARGV[2] acked (non-negative integers)
--
-- Missing key (the report expired or the note was never stored): returns 0
-- and creates nothing. Returns 1 otherwise. Concurrent callers add up. O(1).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'sent', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'acked', ARGV[2])
return 1
