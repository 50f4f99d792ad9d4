-- A replica's heartbeat. KEYS: scopes; ARGV: replica id, ttl ms, then per scope: how many
-- requests of this replica hold a slot there, their ids, how many slots to free (releases
-- that did not reach Redis), their ids. The slots held are written again (after a flush or a
-- restart of Redis they are back) and renewed for the ttl from Redis's clock; the others
-- are freed (idempotent: a release that did arrive is not freed twice).
local t = redis.call('TIME')
local lapse = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local rid = ARGV[1]
local a = 3
for i = 1, #KEYS do
  local n = tonumber(ARGV[a]); a = a + 1
  if n > 0 then
    local f = {'e:' .. rid, lapse}
    for j = 0, n - 1 do table.insert(f, 'm:' .. rid .. ':' .. ARGV[a + j]); table.insert(f, 1) end
    redis.call('HSET', KEYS[i], unpack(f))
    redis.call('PEXPIRE', KEYS[i], 172800000)
  end
  a = a + n
  local m = tonumber(ARGV[a]); a = a + 1
  for j = 0, m - 1 do redis.call('HDEL', KEYS[i], 'm:' .. rid .. ':' .. ARGV[a + j]) end
  a = a + m
end
return 1
