-- Check every scope, then charge every scope, atomically.
-- KEYS[i]: one hash per scope. ARGV: now_ms, est, day, then per scope rpm, tpm, conc, daily.
-- Hash fields: rt/rl (request bucket tokens, last ms), tt/tl (token bucket), inflight,
-- day, dt (tokens charged today). Returns {0} or {scope index, what, retry ms (-1: midnight)}.
local now = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local day = ARGV[3]
local function bucket(tokens, last, per_min)
  local t = tonumber(tokens) or per_min
  local l = tonumber(last) or now
  return math.min(per_min, t + (now - l) / 60000 * per_min)
end
local state = {}
for i = 1, #KEYS do
  local b = 3 + (i - 1) * 4
  local rpm, tpm, conc, daily = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local h = redis.call('HMGET', KEYS[i], 'rt', 'rl', 'tt', 'tl', 'inflight', 'day', 'dt')
  local inflight = tonumber(h[5]) or 0
  local dt = tonumber(h[7]) or 0
  if h[6] ~= day then dt = 0 end
  if conc > 0 and inflight >= conc then return {i, 'concurrent', 1000} end
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
  state[i] = {rpm, tpm, inflight, dt, rt, tt}
end
for i = 1, #KEYS do
  local s = state[i]
  local f = {'inflight', s[3] + 1, 'day', day, 'dt', s[4] + est}
  if s[1] > 0 then table.insert(f, 'rt'); table.insert(f, s[5] - 1); table.insert(f, 'rl'); table.insert(f, now) end
  if s[2] > 0 then table.insert(f, 'tt'); table.insert(f, s[6] - est); table.insert(f, 'tl'); table.insert(f, now) end
  redis.call('HSET', KEYS[i], unpack(f))
  redis.call('PEXPIRE', KEYS[i], 172800000)
end
return {0}
