-- set_stage.lua: assign a stage change its version, log it and publish it.
--
-- KEYS[1] log    the event's stream of stage messages (id "<v>-0")
-- KEYS[2] idem   the idempotency key's reply ("<stage key>\n<message>")
-- KEYS[3] channel  the event's sharded pub/sub channel
-- KEYS[4] dig    the digests hash (put_map.lua)
-- ARGV[1] the stage message without d, v and the closing brace
-- ARGV[2] logLen (MAXLEN)   ARGV[3] floor (the version at least)
-- ARGV[4] idempotency ttl s   ARGV[5] event ttl ms   ARGV[6] "1": use KEYS[2]
-- ARGV[7] the stage key (its digest is copied into the message)
--
-- Returns {1, previous reply} for a replayed idempotency key (rewritten
-- unchanged, for WAIT's sake), else {0, message}. The version is max(floor, newest logged + 1, Redis's clock in
-- us): strictly increasing per event whatever the callers' clocks.
-- Versions are below 2^53 (a microsecond clock reaches it in the year 2255),
-- so Lua's doubles hold them exactly; they are formatted with %.0f, never by
-- concatenation (which would print 1.7e+15). The message is JSON the engine
-- built from validated ids (no quote can occur in a key or a digest), so
-- appending fields by concatenation is safe. Missing keys: created.
-- Bounds: reads one log entry; the log keeps logLen entries.
local useIdem = ARGV[6] == '1'
if useIdem then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    -- Rewritten as it is: a write that replicates after the original, so a
    -- WAIT after a replay proves the original change is on the replicas
    -- (a replay writing nothing would let WAIT count a replica that never
    -- got it: a retry after a failed WAIT would then be acknowledged).
    redis.call('SET', KEYS[2], prev, 'KEEPTTL')
    return {1, prev}
  end
end
local v = tonumber(ARGV[3])
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  local last = tonumber(string.match(top[1][1], '^(%d+)'))
  if last and last + 1 > v then v = last + 1 end
end
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
if clock > v then v = clock end
local vs = string.format('%.0f', v)
local d = redis.call('HGET', KEYS[4], ARGV[7])
local s = ARGV[1]
if d then s = s .. ',"d":"' .. d .. '"' end
s = s .. ',"v":' .. vs .. '}'
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], vs .. '-0', 's', s)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if useIdem then
  redis.call('SET', KEYS[2], ARGV[7] .. '\n' .. s, 'EX', ARGV[4])
end
redis.call('SPUBLISH', KEYS[3], s)
return {0, s}
