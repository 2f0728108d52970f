-- Queue ids PostgreSQL holds as unassigned, unless a fetch has them reserved.
--
-- KEYS[1]  queue     zset  ticket id -> ticket id
-- KEYS[2]  reserved  zset  ticket id -> lease deadline
-- ARGV     ticket ids
--
-- Returns the ids that were added, joined by commas. NX: an id already queued keeps its score
-- (a wrong score is the rebuild's to report and fix).
-- A reserved id is in flight (popped, not yet confirmed); queueing it too
-- would let a second agent pop it. The score is the id, so order is kept.
local added = {}
for _, id in ipairs(ARGV) do
  if not redis.call('ZSCORE', KEYS[2], id) and redis.call('ZADD', KEYS[1], 'NX', id, id) == 1 then
    added[#added + 1] = id
  end
end
return table.concat(added, ',')
