-- Release a request: free its concurrency slots and charge (or refund) the difference
-- between actual and estimated tokens. ARGV: diff, the admission's day, replica id,
-- request id, then per scope tpm, conc.
local diff = tonumber(ARGV[1])
local day = ARGV[2]
local slot = 'm:' .. ARGV[3] .. ':' .. ARGV[4]
for i = 1, #KEYS do
  local b = 4 + (i - 1) * 2
  if tonumber(ARGV[b + 2]) > 0 then
    redis.call('HDEL', KEYS[i], slot)
  end
  if redis.call('HGET', KEYS[i], 'day') == day then
    redis.call('HINCRBYFLOAT', KEYS[i], 'dt', diff)
  end
  if tonumber(ARGV[b + 1]) > 0 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'tt', -diff)
  end
end
return 1
