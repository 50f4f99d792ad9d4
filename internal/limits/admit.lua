-- Check every scope, then charge every scope, atomically.
-- KEYS[i]: one hash per scope. ARGV: now_ms ("": Redis's own clock, as every replica's),
-- est, replica id, request id, slot ttl ms, then per scope rpm, tpm, conc, daily.
-- Hash fields: rt/rl (request bucket tokens, last ms), tt/tl (token bucket), day (UTC,
-- yyyy-mm-dd), dt (tokens charged that day), and for concurrency one field per request
-- holding a slot, m:REPLICA:REQUEST, and per replica e:REPLICA, when its slots lapse unless
-- its heartbeat renews them (Redis's clock): a replica that died holding slots gives them
-- back within the ttl. Returns {0, day} or {scope index, what, retry ms}.
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = tonumber(ARGV[1]) or clock
local est = tonumber(ARGV[2])
local rid, req, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
-- The UTC date of a time in ms (days from the civil calendar, proleptic Gregorian).
local function civil(ms)
  local z = math.floor(ms / 86400000) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end
local day = civil(now)
-- What a scope's hash holds is read as no replica could have written it otherwise: someone
-- with access to Redis must not leave a value that outlasts that access (a day far ahead,
-- a bucket or slot time in the future, a count out of range). ahead is how far a stored
-- time may be past now: a clock that went back (Redis failed over) by up to a minute.
local ahead = 60000
local function num(v, lo, hi, def)
  local n = tonumber(v)
  if n == nil or n ~= n or n < lo or n > hi then return def end
  return n
end
local tomorrow = civil(now + 86400000)
-- A bucket refilled up to now; a last time ahead of now (another clock) refills nothing,
-- but one more than ahead past now is no replica's.
local function bucket(tokens, last, per_min)
  local t = per_min -- a new scope's bucket is full; a value out of range, empty
  if tokens then t = num(tokens, -per_min, per_min, 0) end
  local l = now -- and one out of range refilled long ago (the refused leave it as it is)
  if last then l = num(last, 0, now + ahead, 0) end
  return math.min(per_min, t + math.max(0, now - l) / 60000 * per_min)
end
-- held: the slots of requests whose replica's slots have not lapsed; a lapsed replica's
-- fields are removed.
local function held(key)
  local all = redis.call('HGETALL', key)
  local lapse = {}
  for j = 1, #all, 2 do
    -- A lapse more than twice the ttl ahead was written by no heartbeat: lapsed.
    if string.sub(all[j], 1, 2) == 'e:' then lapse[string.sub(all[j], 3)] = num(all[j + 1], 0, clock + 2 * ttl, 0) end
  end
  local n, gone = 0, {}
  for j = 1, #all, 2 do
    local f = all[j]
    if string.sub(f, 1, 2) == 'm:' then
      local r = string.match(f, '^m:([^:]*):')
      local e = r and lapse[r]
      if e and e >= clock then n = n + 1 else table.insert(gone, f) end
    elseif f == 'inflight' or string.sub(f, 1, 2) == 'i:' then
      table.insert(gone, f) -- a shared counter's, before slots were per request
    end
  end
  for r, e in pairs(lapse) do
    if e < clock then table.insert(gone, 'e:' .. r) end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  return n
end
local state = {}
local last = day -- the latest day charged: the release's refund is for it
for i = 1, #KEYS do
  local b = 5 + (i - 1) * 4
  local rpm, tpm, conc, daily = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local h = redis.call('HMGET', KEYS[i], 'rt', 'rl', 'tt', 'tl', 'day', 'dt')
  -- A scope's day never goes back: a clock behind the one that charged it last (only a
  -- test's, or before Redis's clock was used) charges the later day's budget.
  -- Only a date, and no later than tomorrow.
  local sday = day
  if h[5] and h[5] > day and h[5] <= tomorrow and string.match(h[5], '^%d%d%d%d%-%d%d%-%d%d$') then sday = h[5] end
  local dt = num(h[6], 0, math.huge, 0)
  if h[5] ~= sday then dt = 0 end
  if conc > 0 and held(KEYS[i]) >= conc then return {i, 'concurrent', 1000} end
  if daily > 0 and dt + est > daily then return {i, 'daily_tokens', 86400000 - now % 86400000} end
  local rt, tt = 0, 0
  if rpm > 0 then
    rt = bucket(h[1], h[2], rpm)
    if rt < 1 then return {i, 'rpm', math.ceil((1 - rt) / rpm * 60000)} end
  end
  if tpm > 0 then
    tt = bucket(h[3], h[4], tpm)
    if tt < est then return {i, 'tpm', math.ceil((math.min(est, tpm) - tt) / tpm * 60000)} end
  end
  state[i] = {rpm, tpm, conc, dt, rt, tt, h[2], h[4], sday}
  if sday > last then last = sday end
end
for i = 1, #KEYS do
  local s = state[i]
  local f = {'day', s[9], 'dt', s[4] + est}
  local l1 = math.max(now, num(s[7], 0, now + ahead, now)) -- never back: a later clock's refill stays
  local l2 = math.max(now, num(s[8], 0, now + ahead, now))
  if s[1] > 0 then table.insert(f, 'rt'); table.insert(f, s[5] - 1); table.insert(f, 'rl'); table.insert(f, l1) end
  if s[2] > 0 then table.insert(f, 'tt'); table.insert(f, s[6] - est); table.insert(f, 'tl'); table.insert(f, l2) end
  if s[3] > 0 then
    table.insert(f, 'm:' .. rid .. ':' .. req); table.insert(f, 1)
    table.insert(f, 'e:' .. rid); table.insert(f, clock + ttl)
  end
  redis.call('HSET', KEYS[i], unpack(f))
  redis.call('PEXPIRE', KEYS[i], 172800000)
end
return {0, last}
