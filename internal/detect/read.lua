-- The records after a cursor, each entry's one field "o" only, and only as long as a record
-- can be: an entry someone else wrote with many fields or a huge value comes back as its id
-- and an empty record (refused as unsealed), not as what it holds — the reader's memory is
-- bounded by what records are, whatever Redis holds.
-- A read's records together stop at a budget (the first entry always comes: the cursor
-- moves), so that a reply stays within what the reader's connection takes (respguard).
-- KEYS[1]: the stream. ARGV: the cursor (exclusive), how many entries, a record's most bytes,
-- the records' most bytes together. Returns id1, record1, id2, record2, …
local es = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local most = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local out = {}
local total = 0
for i, e in ipairs(es) do
  local f = e[2]
  local v = ''
  if #f == 2 and f[1] == 'o' and #f[2] <= most then v = f[2] end
  if i > 1 and total + #v > budget then break end
  total = total + #v
  out[2 * i - 1] = e[1]
  out[2 * i] = v
end
return out
