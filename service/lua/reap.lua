-- Take back reservations whose lease ended: requeue them or just drop them.
--
-- KEYS[1]  queue     zset  ticket id -> ticket id
-- KEYS[2]  reserved  zset  ticket id -> lease deadline (unix seconds)
-- KEYS[3..] held      sets  held sets that still list these ids and should not
-- ARGV[1]  mode      "requeue" (still unassigned) or "drop" (assigned, sold or deleted)
-- ARGV[2]  cutoff    act only on a reservation whose deadline is at most this
-- ARGV[3..] ticket ids
--
-- Returns the ids acted on.
-- The check and the move are one step: a reservation that settled, or was
-- taken again with a fresh lease, since the caller looked is left alone, so
-- an id is never queued while someone still holds its reservation.
local requeue = ARGV[1] == 'requeue'
local cutoff = tonumber(ARGV[2])
local done = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline and tonumber(deadline) <= cutoff then
    redis.call('ZREM', KEYS[2], id)
    for k = 3, #KEYS do redis.call('SREM', KEYS[k], id) end
    if requeue then redis.call('ZADD', KEYS[1], id, id) end
    done[#done + 1] = id
  end
end
return done
