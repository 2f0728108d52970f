-- Settle a reservation after PostgreSQL answered. A fetch calls it only when
-- PostgreSQL refused ids: confirmed ones keep their reservation until the
-- agent's next reserve.lua call clears it.
--
-- KEYS[1]  held      set   the agent's held ids
-- KEYS[2]  reserved  zset  ticket id -> lease deadline
-- KEYS[3..] queues   zsets ticket id -> score
-- ARGV[1]  the arrivals channel ("" to publish nothing)
-- then     n_confirmed, then that many confirmed ids (now assigned in PostgreSQL)
-- then     n_dropped,   then that many ids that vanished (deleted or taken)
-- then     groups of three: an id refused for capacity (still unassigned), the
--          index (in KEYS) of the queue it came from, its score
--
-- Returns the size of `held` afterwards.
-- A refused id goes back to its place only if its reservation was still ours:
-- if the reaper returned it first, it is already queued (or taken again).
-- `reserved` does not say whose a lease is, so "ours" also needs the id in this
-- agent's `held`: the reaper takes it out of there when it requeues it, and
-- another agent that pops it again afterwards holds a fresh lease we must keep.
-- What went back to a queue is published as enqueue.lua does.
local pos = 2
local function take()
  local n = tonumber(ARGV[pos])
  local out = {}
  for i = 1, n do out[i] = ARGV[pos + i] end
  pos = pos + n + 1
  return out
end
local confirmed = take()
local dropped = take()

for _, id in ipairs(confirmed) do redis.call('ZREM', KEYS[2], id) end
for _, id in ipairs(dropped) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('SREM', KEYS[1], id)
end
for i = pos, #ARGV, 3 do
  local id, k, score = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if redis.call('SREM', KEYS[1], id) == 1 and redis.call('ZREM', KEYS[2], id) == 1 then
    if redis.call('ZADD', KEYS[k], score, id) == 1 then
      arrived(k)
    end
  end
end
publish_arrivals(ARGV[1])
return redis.call('SCARD', KEYS[1])
