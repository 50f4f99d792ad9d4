-- The records after a cursor, each entry's one field "o" only, and only as long as a record
-- can be: an entry someone else wrote with many fields or a huge value comes back as its id
-- and an empty record (refused as unsealed), not as what it holds — the reader's memory is
-- bounded by what records are, whatever Redis holds.
-- KEYS[1]: the stream. ARGV: the cursor (exclusive), how many entries, a record's most bytes.
-- Returns id1, record1, id2, record2, …
local es = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local most = tonumber(ARGV[3])
local out = {}
for i, e in ipairs(es) do
  local f = e[2]
  local v = ''
  if #f == 2 and f[1] == 'o' and #f[2] <= most then v = f[2] end
  out[2 * i - 1] = e[1]
  out[2 * i] = v
end
return out
