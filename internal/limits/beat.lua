-- A replica's heartbeat: for each scope (KEYS) the slots it really holds (ARGV[2 + i]),
-- renewed for the ttl (ARGV[2], ms) from Redis's own clock. ARGV[1]: the replica's id.
-- Writing the count, not adding to it, sets right a release lost on its way here.
local t = redis.call('TIME')
local lapse = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
for i = 1, #KEYS do
  local n = tonumber(ARGV[2 + i])
  if n > 0 then
    redis.call('HSET', KEYS[i], 'i:' .. ARGV[1], n, 'e:' .. ARGV[1], lapse)
    redis.call('PEXPIRE', KEYS[i], 172800000)
  else
    redis.call('HDEL', KEYS[i], 'i:' .. ARGV[1], 'e:' .. ARGV[1])
  end
end
return 1
