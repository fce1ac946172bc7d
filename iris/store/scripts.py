"""The Lua scripts iris runs on its streams: each one does, atomically, what a MULTI cannot
(read, decide, then write). Stream ids are compared as (ms, seq) numbers."""

from __future__ import annotations

_IDS = """
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  if not dash then return tonumber(id), 0 end
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function fields(flat)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
"""

# Reset the idle time of entries this consumer still holds, without taking any that another
# consumer has claimed meanwhile (a plain XCLAIM would steal them back). JUSTID: a heartbeat is
# not a delivery, so the delivery counter stays as it is.
TOUCH_OWNED = """
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then owned[#owned + 1] = ARGV[i] end
end
if #owned > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(owned) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return #owned
"""

# Take over entries that OTHER consumers left pending at least ARGV[3] ms (they died or hung):
# XAUTOCLAIM would take this consumer's own idle entries too, and count that as a delivery,
# though they are only waiting for its own re-read. XCLAIM re-checks the idle time, so an entry
# its owner touched meanwhile stays with it. An entry deleted from the stream is acknowledged
# and reported. ARGV: group, consumer, min idle ms, start (inclusive), count.
# Returns {next start or "", {{id, {field, value, ...}}, ...}, {deleted id, ...}}.
CLAIM_ABANDONED = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[4], '+', ARGV[5])
local claimed, deleted = {}, {}
for _, row in ipairs(rows) do
  if row[2] ~= ARGV[2] then
    if #redis.call('XRANGE', KEYS[1], row[1], row[1]) == 0 then
      redis.call('XACK', KEYS[1], ARGV[1], row[1])
      deleted[#deleted + 1] = row[1]
    else
      local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], row[1])
      if got[1] then claimed[#claimed + 1] = got[1] end
    end
  end
end
local next_start = ''
if #rows >= tonumber(ARGV[5]) then next_start = '(' .. rows[#rows][1] end
return {next_start, claimed, deleted}
"""

# Trim what every consumer group of the stream has acknowledged: XTRIM MINID at the oldest entry
# some group still needs, whether pending (read, not acknowledged) or not yet read. A stream with
# no group is left alone: nothing says what was read. Returns the number of entries trimmed.
TRIM_ACKNOWLEDGED = _IDS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local keep = nil
for _, flat in ipairs(groups) do
  local g = fields(flat)
  local last = g['last-delivered-id']
  local ms, seq = parse(last)
  local need = last  -- keeping the last read entry as well is always safe
  if seq < 1e14 then need = string.format('%d-%d', ms, seq + 1) end
  if g['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], g['name'])[2]
    if less(oldest, need) then need = oldest end
  end
  if keep == nil or less(need, keep) then keep = need end
end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
"""

# Remove consumers that hold nothing and have been idle at least ARGV[2] ms (gone replicas),
# except this worker's own (ARGV[3]). Returns how many were removed.
DROP_IDLE_CONSUMERS = _IDS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, flat in ipairs(consumers) do
  local c = fields(flat)
  if c['pending'] == 0 and c['idle'] >= tonumber(ARGV[2]) and c['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c['name'])
    removed = removed + 1
  end
end
return removed
"""

# A clean stop hands back what this consumer still holds: each entry's delivery count is
# lowered by one (the next holder's take-over raises it again: handing back is not a crash)
# and its idle time set to ARGV[3] ms, so that the other workers take it over at once.
# ARGV: group, consumer, idle ms. Returns how many entries were handed back.
HAND_BACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, rows = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 100000, ARGV[2])
if not ok then return 0 end
for _, row in ipairs(rows) do
  local times = math.max(0, row[4] - 1)
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, row[1], 'IDLE', ARGV[3],
             'RETRYCOUNT', times, 'JUSTID')
end
return #rows
"""

# Delete a stream that is empty and that no group holds anything of (``iris repartition``, once
# it moved a stray stream's entries away): XLEN and every group's pending count, then DEL, in
# one step, so an entry a producer adds meanwhile is never deleted. 1 if deleted.
DROP_EMPTY_STREAM = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('XLEN', KEYS[1]) ~= 0 then return 0 end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == 'pending' and group[i + 1] ~= 0 then return 0 end
  end
end
return redis.call('DEL', KEYS[1])
"""

# Remove this worker's consumer from the group when it holds nothing (a clean stop).
DROP_OWN_CONSUMER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, held = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or #held > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

# The consumer-name lease: KEYS[1] holds the token of the one live worker using the name.
# Renew it if it is still ours (or take it back if it lapsed); 1 ours, 0 another worker's.
RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A destination's request rate across every replica (GCRA): grants up to ARGV[3] request slots
# now, with at most ARGV[2] requests ahead of the steady schedule of one per ARGV[1] ms.
# Returns {slots granted, ms to wait when none}. The clock is Redis's own: replicas agree.
TAKE_RATE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((tolerance - (tat - now)) / interval) + 1
if room < 1 then return {0, math.ceil(tat - now - tolerance)} end
local granted = math.min(room, tonumber(ARGV[3]))
tat = tat + granted * interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + interval))
return {granted, 0}
"""
