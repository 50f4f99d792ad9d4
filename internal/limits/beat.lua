-- A replica's heartbeat. KEYS: scopes; ARGV: replica id, ttl ms, then per scope: how many
-- requests of this replica hold a slot there, their ids, how many slots to free (releases
-- that did not reach Redis), their ids. The slots held are written again (after a flush or a
-- restart of Redis they are back) and renewed for the ttl from Redis's clock; the others
-- are freed (idempotent: a release that did arrive is not freed twice).
local t = redis.call('TIME')
local lapse = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local rid = ARGV[1]
-- A scope key that is not a hash (someone wrote it) is skipped, not the end of the beat:
-- the other scopes' slots are still renewed. Returns how many keys were skipped.
local a = 3
local bad = 0
for i = 1, #KEYS do
  local n = tonumber(ARGV[a]); a = a + 1
  local ok = true
  if n > 0 then
    local f = {'e:' .. rid, lapse}
    for j = 0, n - 1 do table.insert(f, 'm:' .. rid .. ':' .. ARGV[a + j]); table.insert(f, 1) end
    ok = type(redis.pcall('HSET', KEYS[i], unpack(f))) ~= 'table' or false
    if ok then redis.call('PEXPIRE', KEYS[i], 172800000) end
  end
  a = a + n
  local m = tonumber(ARGV[a]); a = a + 1
  for j = 0, m - 1 do
    if type(redis.pcall('HDEL', KEYS[i], 'm:' .. rid .. ':' .. ARGV[a + j])) == 'table' then ok = false end
  end
  a = a + m
  if not ok then bad = bad + 1 end
end
return bad
