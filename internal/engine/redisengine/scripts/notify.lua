-- notify.lua: append a notification to one inbox and push it to the proxies
-- that hold the inbox. Atomic: the dedup replacement, the bounds, the append,
-- the index and the pushes are one step; a reader sees the inbox before or
-- after, never between.
--
-- KEYS[1] ib   the inbox stream: entries {b = body, e = expiry ms, n = note id, k = dedup key}
-- KEYS[2] ix   the inbox index hash: "i:<nid>" -> position, "k:<dedup>" -> position,
--              "read" -> the read mark, "gone" -> the ring of removed note ids
-- KEYS[3] at   the shard's registry hash: proxy -> registration expiry (ms)
-- ARGV[1] body (wire.AppendNoteBody)   ARGV[2] ttl ms   ARGV[3] dedup key ("": none)
-- ARGV[4] note id   ARGV[5] maxLen (entries kept)   ARGV[6] max age ms
-- ARGV[7] push header   ARGV[8] push channel prefix   ARGV[9] goneLen
--
-- Returns {position, pushes, prev}: prev is the entry before the note ("" when
-- none), which the push carries so a proxy can tell it missed one
-- (engine.NotePush.Prev). A retry of a note id that is stored returns its
-- position and pushes again (its index field rewritten unchanged, for WAIT); a retry of one that is gone (replaced by its
-- dedup key, or removed by a bound: the goneLen ids removed last) returns
-- {'', 0, ''} and stores nothing.
--
-- The index is exact: whatever removes an entry (a dedup replacement, the
-- count bound, the age bound) removes its index fields in the same step, so
-- the index holds at most 2 fields per kept note plus "read" and "gone".
-- Missing keys: a new inbox (both keys created, with the note's ttl); a
-- missing registry pushes to nobody. Bounds: one call reads at most the
-- stream (maxLen entries), its index (2 x maxLen + 8 fields, only when an
-- index written before it was exact is cleaned) and the registry; registry
-- entries past their expiry are deleted as they are met.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local maxLen = tonumber(ARGV[5])
local goneLen = tonumber(ARGV[9])
local nid = ARGV[4]
local function isGone(id)
  local ring = redis.call('HGET', KEYS[2], 'gone')
  return ring and string.find(' ' .. ring .. ' ', ' ' .. id .. ' ', 1, true) ~= nil
end
local function unindex(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'n' then
      redis.call('HDEL', KEYS[2], 'i:' .. f[i + 1])
      local ring = f[i + 1]
      local kept = 1
      local old = redis.call('HGET', KEYS[2], 'gone')
      if old then
        for id in string.gmatch(old, '%S+') do
          if kept >= goneLen then break end
          ring = ring .. ' ' .. id
          kept = kept + 1
        end
      end
      redis.call('HSET', KEYS[2], 'gone', ring)
    elseif f[i] == 'k' and redis.call('HGET', KEYS[2], 'k:' .. f[i + 1]) == entry[1] then
      redis.call('HDEL', KEYS[2], 'k:' .. f[i + 1])
    end
  end
end
local function last(before)
  local e = redis.call('XREVRANGE', KEYS[1], before, '-', 'COUNT', 1)
  if #e > 0 then return e[1][1] end
  return ''
end
local pos = redis.call('HGET', KEYS[2], 'i:' .. nid)
local prev
if pos then
  if #redis.call('XRANGE', KEYS[1], pos, pos) == 0 then
    return {'', 0, ''} -- a retry of a note that is gone: nothing to push
  end
  -- Rewritten as it is, so a WAIT after this retry proves the stored note
  -- is on the replicas (see set_stage.lua).
  redis.call('HSET', KEYS[2], 'i:' .. nid, pos)
  prev = last('(' .. pos)
elseif isGone(nid) then
  return {'', 0, ''}
else
  if ARGV[3] ~= '' then
    local old = redis.call('HGET', KEYS[2], 'k:' .. ARGV[3])
    if old then
      local e = redis.call('XRANGE', KEYS[1], old, old)
      if #e > 0 then unindex(e[1]) end
      redis.call('XDEL', KEYS[1], old)
      redis.call('HDEL', KEYS[2], 'k:' .. ARGV[3])
    end
  end
  -- the age bound, then the count bound (room for this note)
  local cut = string.format('%.0f', now - tonumber(ARGV[6]))
  local aged = redis.call('XRANGE', KEYS[1], '-', '(' .. cut .. '-0', 'COUNT', maxLen)
  for _, e in ipairs(aged) do unindex(e) end
  if #aged > 0 then redis.call('XTRIM', KEYS[1], 'MINID', cut) end
  local over = redis.call('XLEN', KEYS[1]) - maxLen + 1
  if over > 0 then
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
    for _, e in ipairs(oldest) do
      unindex(e)
      redis.call('XDEL', KEYS[1], e[1])
    end
  end
  prev = last('+')
  local exp = string.format('%.0f', now + ttl)
  if ARGV[3] ~= '' then
    pos = redis.call('XADD', KEYS[1], '*', 'b', ARGV[1], 'e', exp, 'n', nid, 'k', ARGV[3])
    redis.call('HSET', KEYS[2], 'k:' .. ARGV[3], pos)
  else
    pos = redis.call('XADD', KEYS[1], '*', 'b', ARGV[1], 'e', exp, 'n', nid)
  end
  redis.call('HSET', KEYS[2], 'i:' .. nid, pos)
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  if redis.call('HLEN', KEYS[2]) > 2 * maxLen + 8 then
    -- entries written before the index was exact (no n field): drop index
    -- fields that point at no kept note
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if all[i] ~= 'read' and all[i] ~= 'gone' and (#first == 0 or lt(all[i + 1], first[1][1])) then
        redis.call('HDEL', KEYS[2], all[i])
      end
    end
  end
end
local at = redis.call('HGETALL', KEYS[3])
local pushed = 0
local msg = ARGV[7] .. '\n' .. pos .. '\n' .. prev .. '\n' .. ARGV[1]
for i = 1, #at, 2 do
  if tonumber(at[i + 1]) < now then
    redis.call('HDEL', KEYS[3], at[i])
  else
    redis.call('SPUBLISH', ARGV[8] .. at[i], msg)
    pushed = pushed + 1
  end
end
return {pos, pushed, prev}
