-- Release a request: free its concurrency slot and charge (or refund) the difference
-- between actual and estimated tokens. ARGV: diff, day, then per scope tpm.
local diff = tonumber(ARGV[1])
local day = ARGV[2]
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'inflight', -1)
  if redis.call('HGET', KEYS[i], 'day') == day then
    redis.call('HINCRBYFLOAT', KEYS[i], 'dt', diff)
  end
  if tonumber(ARGV[2 + i]) > 0 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'tt', -diff)
  end
end
return 1
