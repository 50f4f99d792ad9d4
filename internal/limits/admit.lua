-- Check every scope, then charge every scope, atomically.
-- KEYS[i]: one hash per scope. ARGV: now_ms, est, day, replica id, slot ttl ms, then per
-- scope rpm, tpm, conc, daily.
-- Hash fields: rt/rl (request bucket tokens, last ms), tt/tl (token bucket), day, dt (tokens
-- charged today), and per replica holding concurrency slots i:ID (its slots) and e:ID (when
-- they lapse, Redis's own clock in ms, unless its heartbeat renews them: a replica that died
-- holding slots gives them back within the ttl). Returns {0} or {scope index, what, retry ms
-- (-1: midnight)}.
local now = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local day = ARGV[3]
local rid = ARGV[4]
local ttl = tonumber(ARGV[5])
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function bucket(tokens, last, per_min)
  local t = tonumber(tokens) or per_min
  local l = tonumber(last) or now
  return math.min(per_min, t + (now - l) / 60000 * per_min)
end
-- held: the slots of the replicas whose slots have not lapsed; lapsed ones are removed.
local function held(key)
  local all = redis.call('HGETALL', key)
  local f = {}
  for j = 1, #all, 2 do f[all[j]] = all[j + 1] end
  local n = 0
  for name, v in pairs(f) do
    if string.sub(name, 1, 2) == 'i:' then
      local r = string.sub(name, 3)
      local e = tonumber(f['e:' .. r])
      if e and e >= clock then
        n = n + math.max(0, tonumber(v) or 0)
      else
        redis.call('HDEL', key, name, 'e:' .. r)
      end
    end
  end
  if f['inflight'] then redis.call('HDEL', key, 'inflight') end -- a shared counter's, before slots lapsed
  return n
end
local state = {}
for i = 1, #KEYS do
  local b = 5 + (i - 1) * 4
  local rpm, tpm, conc, daily = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local h = redis.call('HMGET', KEYS[i], 'rt', 'rl', 'tt', 'tl', 'day', 'dt')
  local dt = tonumber(h[6]) or 0
  if h[5] ~= day then dt = 0 end
  if conc > 0 and held(KEYS[i]) >= conc then return {i, 'concurrent', 1000} end
  if daily > 0 and dt + est > daily then return {i, 'daily_tokens', -1} end
  local rt, tt = 0, 0
  if rpm > 0 then
    rt = bucket(h[1], h[2], rpm)
    if rt < 1 then return {i, 'rpm', math.ceil((1 - rt) / rpm * 60000)} end
  end
  if tpm > 0 then
    tt = bucket(h[3], h[4], tpm)
    if tt < est then return {i, 'tpm', math.ceil((math.min(est, tpm) - tt) / tpm * 60000)} end
  end
  state[i] = {rpm, tpm, conc, dt, rt, tt}
end
for i = 1, #KEYS do
  local s = state[i]
  local f = {'day', day, 'dt', s[4] + est}
  if s[1] > 0 then table.insert(f, 'rt'); table.insert(f, s[5] - 1); table.insert(f, 'rl'); table.insert(f, now) end
  if s[2] > 0 then table.insert(f, 'tt'); table.insert(f, s[6] - est); table.insert(f, 'tl'); table.insert(f, now) end
  if s[3] > 0 then
    redis.call('HINCRBY', KEYS[i], 'i:' .. rid, 1)
    table.insert(f, 'e:' .. rid); table.insert(f, clock + ttl)
  end
  redis.call('HSET', KEYS[i], unpack(f))
  redis.call('PEXPIRE', KEYS[i], 172800000)
end
return {0}
