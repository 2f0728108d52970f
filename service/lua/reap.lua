-- Take back reservations whose lease ended: put them back in their queues, or
-- just drop them.
--
-- KEYS[1]   reserved  zset  ticket id -> lease deadline (unix seconds)
-- KEYS[2..] held sets that still list these ids and should not, then the queues
-- ARGV[1]   cutoff    act only on a reservation whose deadline is at most this
-- ARGV[2]   h         how many of KEYS[2..] are held sets
-- ARGV[3]   the arrivals channel ("" to publish nothing)
-- ARGV[4..] groups of three: ticket id, index (in KEYS) of the queue it goes
--           back to (0: drop it: assigned, sold or deleted), its score
--
-- Returns the ids acted on.
-- The check and the move are one step: a reservation that settled, or was
-- taken again with a fresh lease, since the caller looked is left alone, so
-- an id is never queued while someone still holds its reservation. What went
-- back to a queue is published as enqueue.lua does.
local cutoff = tonumber(ARGV[1])
local held_last = 1 + tonumber(ARGV[2])
local done = {}
for i = 4, #ARGV, 3 do
  local id, k, score = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local deadline = redis.call('ZSCORE', KEYS[1], id)
  if deadline and tonumber(deadline) <= cutoff then
    redis.call('ZREM', KEYS[1], id)
    for h = 2, held_last do redis.call('SREM', KEYS[h], id) end
    if k > 0 and redis.call('ZADD', KEYS[k], score, id) == 1 then
      arrived(k)
    end
    done[#done + 1] = id
  end
end
publish_arrivals(ARGV[3])
return done
