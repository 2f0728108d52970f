-- Put tickets PostgreSQL holds as unassigned in their queues, at their places,
-- unless a fetch has them reserved.
--
-- KEYS[1]  reserved  zset  ticket id -> lease deadline
-- KEYS[2..] queues   zsets ticket id -> score (priority rank * 2^50 + id)
-- ARGV     groups of four: ticket id, index (in KEYS) of its queue, its score,
--          index of a queue it moved out of (0: none)
--
-- Returns the ids that were not queued before, joined by commas.
-- A reserved id is in flight (popped, not yet confirmed); queueing it too
-- would let a second agent pop it. A queued id takes the score given (its
-- priority may have changed); the one way ids enter a queue (creation,
-- release, a move, the relay, the reaper's and a fetch's returns, rebuild).
local added = {}
for i = 1, #ARGV, 4 do
  local id, k, score, left = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  if left > 0 then redis.call('ZREM', KEYS[left], id) end
  if not redis.call('ZSCORE', KEYS[1], id) then
    if redis.call('ZADD', KEYS[k], score, id) == 1 then added[#added + 1] = id end
  end
end
return table.concat(added, ',')
