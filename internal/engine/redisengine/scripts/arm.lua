-- arm.lua: arm a stage change for a time (a schedule), giving it its version now.
--
-- KEYS[1] log   KEYS[2] sched (schedule id -> armed message)
-- KEYS[3] channel   KEYS[4] dig
-- ARGV[1] schedule id   ARGV[2] stage key   ARGV[3] at (ms)
-- ARGV[4] the armed message prefix (no d, no v, no closing brace)
-- ARGV[5] event ttl ms   ARGV[6] maxSchedules
--
-- Returns the armed message (the existing one for a known id with the same
-- body, rewritten unchanged for WAIT's sake), or an error reply SCHEDULE_LIMIT (the event holds maxSchedules) or
-- SCHEDULE_CONFLICT (the id was armed with another body). The version is
-- max(at in us, newest logged + 1), moved past any armed schedule of the
-- event that has it, so two arms at one time never share a version. The
-- patterns that read "v" match only the engine's own messages (ids and
-- numbers, no nested strings). Missing keys: created. Bounds: reads at most
-- the event's schedules (maxSchedules) and one log entry.
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then
  if string.sub(prev, 1, #ARGV[4]) ~= ARGV[4] then return redis.error_reply('SCHEDULE_CONFLICT the schedule id was armed with another body') end
  -- Rewritten as it is, so a WAIT after this replay proves the original arm
  -- is on the replicas (see set_stage.lua).
  redis.call('HSET', KEYS[2], ARGV[1], prev)
  return prev
end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then return redis.error_reply('SCHEDULE_LIMIT too many schedules for this event') end
local v = tonumber(ARGV[3]) * 1000
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  local last = tonumber(string.match(top[1][1], '^(%d+)'))
  if last and last + 1 > v then v = last + 1 end
end
local taken = {}
for _, o in ipairs(redis.call('HVALS', KEYS[2])) do
  local ov = string.match(o, '"v":(%d+)')
  if ov then taken[ov] = true end
end
while taken[string.format('%.0f', v)] do v = v + 1 end
local s = ARGV[4]
local d = redis.call('HGET', KEYS[4], ARGV[2])
if d then s = s .. ',"d":"' .. d .. '"' end
s = s .. ',"v":' .. string.format('%.0f', v) .. '}'
redis.call('HSET', KEYS[2], ARGV[1], s)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SPUBLISH', KEYS[3], s)
return s
