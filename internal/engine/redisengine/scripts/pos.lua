-- pos.lua: helpers for stream ids, prepended to the scripts that compare
-- positions (notify.lua, mark_read.lua); not a script of its own.
--
-- split(p) returns the two numbers of a stream id "<ms>-<seq>"; lt(a, b) is
-- a < b in stream order. Both take well-formed ids only (written by Redis or
-- by the engine after wire.ParsePos).
local function split(p)
  local ms, seq = string.match(p, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function lt(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
