-- put_map.lua: replace an event's stage map and its stage digests.
--
-- KEYS[1] map   the map string: "<mapv>\n<updated ms>\n<raw JSON>"
-- KEYS[2] mapv  the map version counter
-- KEYS[3] dig   the digests hash: stage key -> digest (copied into stage frames)
-- ARGV[1] raw JSON (validated and bounded by the broadcaster: wire.MaxMapSize)
-- ARGV[2] updated ms   ARGV[3] event ttl ms   ARGV[4..] stage key, digest pairs
--
-- Atomic: readers get the old map or the new one, never a mix, and the
-- digests change in the same step (stale digests of removed stages go).
-- Missing keys: created. Returns the new map version. O(stages).
local v = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], v .. '\n' .. ARGV[2] .. '\n' .. ARGV[1], 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return v
