-- fire.lua: fire a due schedule: log its stage change and publish it.
--
-- KEYS[1] log   KEYS[2] sched   KEYS[3] channel
-- ARGV[1] schedule id   ARGV[2] logLen   ARGV[3] event ttl ms
--
-- Returns {1, stage message, n} fired, {0, "", 0} not found (missing key
-- included: another broadcaster fired it), {2, "", n} superseded (a newer
-- version is logged: the schedule is dropped, never logged out of order). n
-- schedules of the event with a lower version and a fire time no later than
-- the id's were fired first, in version order (engine.Memory.FireSchedule
-- does the same). Bounds: reads at most the event's schedules.
local s = redis.call('HGET', KEYS[2], ARGV[1])
if not s then return {0, '', 0} end
local v = tonumber(string.match(s, '"v":(%d+)'))
local at = tonumber(string.match(s, '"at":(%d+)'))
local function fire(id, msg)
  redis.call('HDEL', KEYS[2], id)
  local vs = string.match(msg, '"v":(%d+)')
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top > 0 then
    local last = tonumber(string.match(top[1][1], '^(%d+)'))
    if last and last >= tonumber(vs) then return nil end
  end
  local st = string.gsub(msg, ',"arm":{[^}]*}', '', 1)
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], vs .. '-0', 's', st)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('SPUBLISH', KEYS[3], st)
  return st
end
local earlier = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local ov = tonumber(string.match(all[i + 1], '"v":(%d+)'))
    local oat = tonumber(string.match(all[i + 1], '"at":(%d+)'))
    if ov and oat and ov < v and oat <= at then table.insert(earlier, {ov, all[i], all[i + 1]}) end
  end
end
table.sort(earlier, function(a, b) return a[1] < b[1] end)
local n = 0
for _, e in ipairs(earlier) do
  if fire(e[2], e[3]) then n = n + 1 end
end
local st = fire(ARGV[1], s)
if not st then return {2, '', n} end
return {1, st, n}
