-- Put tickets PostgreSQL holds as unassigned in their queues, at their places,
-- unless a fetch has them reserved; tell waiting fetches what arrived.
--
-- KEYS[1]  reserved  zset  ticket id -> lease deadline
-- KEYS[2..] queues   zsets ticket id -> score (priority rank * 2^50 + id)
-- ARGV[1]  the arrivals channel ("" to publish nothing)
-- ARGV[2..] groups of four: ticket id, index (in KEYS) of its queue, its score,
--          index of a queue it moved out of (0: none)
--
-- Returns the ids that were not queued before, joined by commas.
-- A reserved id is in flight (popped, not yet confirmed); queueing it too
-- would let a second agent pop it. A queued id takes the score given (its
-- priority may have changed); the one way ids enter a queue (creation,
-- release, a move, the relay, the reaper's and a fetch's returns, rebuild).
-- What entered a queue is published ("general=2,billing=1") in the same
-- step, so a fetch woken by the message always finds the tickets queued.
local added = {}
for i = 2, #ARGV, 4 do
  local id, k, score, left = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  if left > 0 then redis.call('ZREM', KEYS[left], id) end
  if not redis.call('ZSCORE', KEYS[1], id) then
    if redis.call('ZADD', KEYS[k], score, id) == 1 then
      added[#added + 1] = id
      arrived(k)
    end
  end
end
publish_arrivals(ARGV[1])
return table.concat(added, ',')
